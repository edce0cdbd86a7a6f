//! The parsed dataset: built once at start-up by a loader or the sample generator, then shared
//! read-only by every core, each of which builds its [`Replica`](super::Replica) from it.
//!
//! Layout: keys sorted, values in one arena in key order, and the permutation back to file
//! order. Sorting (and finding duplicates) happens once here, so a core's replica build is three
//! sequential copies (about 0.2 s at 10,000,000 pairs) instead of a sort or a random gather.

/// Most value bytes a dataset may hold: offsets into the value arena are `u32` here and in
/// every replica (4 bytes a pair instead of 8).
pub const MAX_VALUE_BYTES: usize = u32::MAX as usize;

/// Parsed key/value pairs. `Send + Sync`; never mutated after it is built.
#[derive(Debug)]
pub struct Dataset {
    /// Keys in ascending order.
    pub(crate) keys: Box<[u128]>,
    /// `arena[bounds[i]..bounds[i + 1]]` is the value of `keys[i]`.
    pub(crate) bounds: Box<[u32]>,
    /// Every value, back to back, in key order.
    pub(crate) arena: Box<str>,
    /// `file_order[j]` is the index in `keys` of the `j`-th pair of the file.
    file_order: Box<[u32]>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// 16 bytes per key plus the value bytes: the size of the data itself, the yardstick for
    /// the per-replica memory report.
    pub fn raw_bytes(&self) -> usize {
        self.keys.len() * std::mem::size_of::<u128>() + self.arena.len()
    }

    /// Pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, &str)> + '_ {
        self.file_order.iter().map(|&i| {
            let i = i as usize;
            (self.keys[i], self.value(i))
        })
    }

    fn value(&self, i: usize) -> &str {
        &self.arena[self.bounds[i] as usize..self.bounds[i + 1] as usize]
    }
}

/// The value arena would pass [`MAX_VALUE_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Two pairs with the same key, as indices in file order: `first < second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DuplicateKey {
    pub(crate) first: usize,
    pub(crate) second: usize,
    pub(crate) key: u128,
}

/// Accumulates pairs in file order; [`DatasetBuilder::finish`] sorts and checks for duplicates.
#[derive(Debug, Default)]
pub(crate) struct DatasetBuilder {
    keys: Vec<u128>,
    ends: Vec<u32>,
    /// Loaders decode values straight into this arena, then call [`DatasetBuilder::push_key`].
    pub(crate) values: String,
}

impl DatasetBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a pair whose value is everything appended to `values` since the previous pair.
    pub(crate) fn push_key(&mut self, key: u128) -> Result<(), TooLarge> {
        let end = u32::try_from(self.values.len()).map_err(|_| TooLarge)?;
        if self.keys.len() >= u32::MAX as usize {
            return Err(TooLarge);
        }
        self.keys.push(key);
        self.ends.push(end);
        Ok(())
    }

    /// Drops a value appended to the arena without its key (a rejected record).
    pub(crate) fn discard_pending_value(&mut self) {
        let end = self.ends.last().map_or(0, |&e| e as usize);
        self.values.truncate(end);
    }

    #[cfg(test)]
    pub(crate) fn push(&mut self, key: u128, value: &str) -> Result<(), TooLarge> {
        self.values.push_str(value);
        self.push_key(key)
    }

    /// Sorts the pairs by key and returns the dataset, or the duplicate whose second
    /// occurrence comes first in file order.
    pub(crate) fn finish(self) -> Result<Dataset, DuplicateKey> {
        let (keys, file_index) = sort_keys(self.keys);
        let mut duplicate: Option<DuplicateKey> = None;
        for p in 1..keys.len() {
            // Equal keys are ordered by index, so the first pair of a group is (first, second).
            let (first, second) = (file_index[p - 1] as usize, file_index[p] as usize);
            if keys[p - 1] == keys[p] && duplicate.map_or(true, |d| second < d.second) {
                duplicate = Some(DuplicateKey {
                    first,
                    second,
                    key: keys[p],
                });
            }
        }
        if let Some(d) = duplicate {
            return Err(d);
        }
        // Values into key order: one random gather, done once rather than on every core.
        let mut arena = String::with_capacity(self.values.len());
        let mut bounds = Vec::with_capacity(keys.len() + 1);
        bounds.push(0_u32);
        for &i in &file_index {
            let i = i as usize;
            let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            arena.push_str(&self.values[start..self.ends[i] as usize]);
            // Fits: push_key checked the whole arena against u32::MAX.
            bounds.push(arena.len() as u32);
        }
        drop(self.values);
        let mut file_order = vec![0_u32; keys.len()];
        for (p, &i) in file_index.iter().enumerate() {
            file_order[i as usize] = p as u32;
        }
        Ok(Dataset {
            keys: keys.into_boxed_slice(),
            bounds: bounds.into_boxed_slice(),
            arena: arena.into_boxed_str(),
            file_order: file_order.into_boxed_slice(),
        })
    }
}

/// Number of top key bits that select a bucket, for `n` keys: about 2 to 4 keys a bucket.
/// Both the sort here and the replica's directory use it. At least 1, so shifts stay below 128.
pub(crate) fn bucket_bits(n: usize) -> u32 {
    (n / 2).max(2).ilog2()
}

/// The keys in ascending (key, file index) order, with the file index of each.
///
/// UUID v4 keys are uniformly random in their top 48 bits, so a counting sort on the top bits
/// leaves buckets of a few keys each, finished by a comparison sort: O(n) and sequential but
/// for the scatter. Skewed keys only make some buckets bigger; the result is the same.
fn sort_keys(keys: Vec<u128>) -> (Vec<u128>, Vec<u32>) {
    let bits = bucket_bits(keys.len());
    let shift = 128 - bits;
    let mut starts = vec![0_u32; (1_usize << bits) + 1];
    for &key in &keys {
        starts[(key >> shift) as usize + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![0_u128; keys.len()];
    let mut file_index = vec![0_u32; keys.len()];
    for (i, &key) in keys.iter().enumerate() {
        let slot = &mut next[(key >> shift) as usize];
        sorted[*slot as usize] = key;
        file_index[*slot as usize] = i as u32;
        *slot += 1;
    }
    drop(next);
    drop(keys);
    let mut bucket: Vec<(u128, u32)> = Vec::new();
    for range in starts.windows(2) {
        let range = range[0] as usize..range[1] as usize;
        if range.len() < 2 {
            continue;
        }
        bucket.clear();
        bucket.extend(
            sorted[range.clone()]
                .iter()
                .copied()
                .zip(file_index[range.clone()].iter().copied()),
        );
        bucket.sort_unstable();
        for (p, (key, i)) in range.zip(bucket.iter().copied()) {
            sorted[p] = key;
            file_index[p] = i;
        }
    }
    (sorted, file_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pairs: &[(u128, &str)]) -> Result<Dataset, DuplicateKey> {
        let mut builder = DatasetBuilder::new();
        for &(key, value) in pairs {
            builder.push(key, value).expect("small");
        }
        builder.finish()
    }

    #[test]
    fn iter_keeps_file_order_and_sorted_order_sorts() {
        let pairs = [(30, "c"), (u128::MAX, ""), (10, "a"), (1 << 127, "b")];
        let dataset = build(&pairs).expect("no duplicates");
        assert_eq!(dataset.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(&*dataset.keys, [10, 30, 1 << 127, u128::MAX]);
        assert_eq!(&*dataset.arena, "acb");
        assert_eq!(dataset.raw_bytes(), 4 * 16 + 3);
        assert_eq!(dataset.len(), 4);
    }

    #[test]
    fn empty_dataset_is_fine() {
        let dataset = build(&[]).expect("empty");
        assert!(dataset.is_empty());
        assert_eq!(dataset.iter().count(), 0);
    }

    #[test]
    fn duplicate_reports_the_earliest_second_occurrence() {
        let pairs = [(7, "a"), (9, "b"), (5, "c"), (9, "d"), (7, "e"), (7, "f")];
        assert_eq!(
            build(&pairs).expect_err("duplicates"),
            DuplicateKey {
                first: 1,
                second: 3,
                key: 9
            }
        );
    }

    #[test]
    fn discarded_value_does_not_leak_into_the_next_pair() {
        let mut builder = DatasetBuilder::new();
        builder.push(1, "one").expect("small");
        builder.values.push_str("rejected");
        builder.discard_pending_value();
        builder.push(2, "two").expect("small");
        let dataset = builder.finish().expect("no duplicates");
        assert_eq!(dataset.iter().collect::<Vec<_>>(), [(1, "one"), (2, "two")]);
    }

    #[test]
    fn sort_handles_skewed_keys() {
        // All keys in one bucket: the top bits are equal.
        let keys: Vec<u128> = (0..1000_u128).rev().map(|k| k * 7919 % 1000).collect();
        let (sorted, file_index) = sort_keys(keys.clone());
        assert!(sorted.windows(2).all(|w| w[0] < w[1]));
        for (key, i) in sorted.iter().zip(file_index) {
            assert_eq!(keys[i as usize], *key);
        }
    }
}
