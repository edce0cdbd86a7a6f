//! The parsed dataset: built once at start-up by a loader or the sample generator, then shared
//! read-only by every core, each of which builds its [`Replica`](super::Replica) from it.
//!
//! Layout: keys in file order, values in one arena, and the permutation that sorts the keys
//! (computed once here, where duplicates are found, so each core's replica build is one linear
//! gather instead of a sort).

/// Most value bytes a dataset may hold: offsets into the value arena are `u32` here and in
/// every replica (4 bytes a pair instead of 8).
pub const MAX_VALUE_BYTES: usize = u32::MAX as usize;

/// Parsed key/value pairs. `Send + Sync`; never mutated after it is built.
#[derive(Debug)]
pub struct Dataset {
    /// Keys in file order.
    keys: Vec<u128>,
    /// `values[ends[i - 1]..ends[i]]` is the value of `keys[i]` (with `ends[-1]` = 0).
    ends: Vec<u32>,
    /// Every value, back to back, in file order.
    values: String,
    /// Indices into `keys` in ascending key order.
    sorted: Vec<u32>,
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
        self.keys.len() * std::mem::size_of::<u128>() + self.values.len()
    }

    /// Pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, &str)> + '_ {
        (0..self.keys.len()).map(|i| (self.keys[i], self.value(i)))
    }

    /// Pairs in ascending key order, for building replicas.
    pub(crate) fn iter_sorted(&self) -> impl Iterator<Item = (u128, &str)> + '_ {
        self.sorted
            .iter()
            .map(|&i| (self.keys[i as usize], self.value(i as usize)))
    }

    pub(crate) fn value_bytes(&self) -> usize {
        self.values.len()
    }

    fn value(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.values[start..self.ends[i] as usize]
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

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
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

    /// Sorts the keys and returns the dataset, or the duplicate whose second occurrence comes
    /// first in file order.
    pub(crate) fn finish(self) -> Result<Dataset, DuplicateKey> {
        let sorted = sort_keys(&self.keys);
        let mut duplicate: Option<DuplicateKey> = None;
        for pair in sorted.windows(2) {
            let (a, b) = (pair[0] as usize, pair[1] as usize);
            // Equal keys are ordered by index, so the first pair of a group is (first, second).
            if self.keys[a] == self.keys[b] && duplicate.map_or(true, |d| b < d.second) {
                duplicate = Some(DuplicateKey {
                    first: a,
                    second: b,
                    key: self.keys[a],
                });
            }
        }
        if let Some(d) = duplicate {
            return Err(d);
        }
        let mut values = self.values;
        values.shrink_to_fit();
        let (mut keys, mut ends) = (self.keys, self.ends);
        keys.shrink_to_fit();
        ends.shrink_to_fit();
        Ok(Dataset {
            keys,
            ends,
            values,
            sorted,
        })
    }
}

/// Number of top key bits that select a bucket, for `n` keys: about 2 to 4 keys a bucket.
/// Both the sort here and the replica's directory use it. At least 1, so shifts stay below 128.
pub(crate) fn bucket_bits(n: usize) -> u32 {
    (n / 2).max(2).ilog2()
}

/// Indices of `keys` in ascending (key, index) order.
///
/// UUID v4 keys are uniformly random in their top 48 bits, so a counting sort on the top bits
/// leaves buckets of a few keys each, finished by a comparison sort: O(n), about 10x faster than
/// `sort_unstable` at 10,000,000 keys. Skewed keys only make some buckets bigger; the result is
/// the same.
fn sort_keys(keys: &[u128]) -> Vec<u32> {
    let bits = bucket_bits(keys.len());
    let shift = 128 - bits;
    let mut starts = vec![0_u32; (1_usize << bits) + 1];
    for &key in keys {
        starts[(key >> shift) as usize + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![0_u32; keys.len()];
    for (i, &key) in keys.iter().enumerate() {
        let slot = &mut next[(key >> shift) as usize];
        sorted[*slot as usize] = i as u32;
        *slot += 1;
    }
    for bucket in starts.windows(2) {
        sorted[bucket[0] as usize..bucket[1] as usize]
            .sort_unstable_by_key(|&i| (keys[i as usize], i));
    }
    sorted
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
        let keys: Vec<u128> = dataset.iter_sorted().map(|(k, _)| k).collect();
        assert_eq!(keys, [10, 30, 1 << 127, u128::MAX]);
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
        let sorted = sort_keys(&keys);
        let in_order: Vec<u128> = sorted.iter().map(|&i| keys[i as usize]).collect();
        assert!(in_order.windows(2).all(|w| w[0] < w[1]));
    }
}
