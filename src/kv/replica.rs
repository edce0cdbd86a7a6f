//! One core's lookup table, built on that core's thread at start-up so its memory is local to
//! the core (a reload builds it at idle priority instead, see `reload`).
//!
//! Layout: keys sorted as `u128`, a directory indexed by the top bits of a key giving the range
//! of sorted keys in that bucket (2 to 4 keys on average, UUID v4 bits being random), value end
//! offsets, and the values in one arena in the same order. A lookup reads the directory, one or
//! two cache lines of keys, the offsets and the value: no hashing, no allocation. Memory is
//! 16 + 4 + at most 2 bytes a pair plus the value bytes, under 2x the raw key + value bytes for
//! any dataset; a skewed set of keys only makes some buckets longer (binary search inside).

use super::dataset::{bucket_bits, Dataset};

/// A read-only lookup table; plain owned data (no `Rc`, `Arc` or locks). A clone copies it
/// (a reload copies one core's replica for the others: the directory is not rebuilt).
#[derive(Debug, Clone)]
pub struct Replica {
    /// Keys in ascending order.
    keys: Box<[u128]>,
    /// `dir[b]..dir[b + 1]` is the range of `keys` whose top bits are `b`.
    dir: Box<[u32]>,
    /// `128 - bits`: a key's bucket is `key >> shift`.
    shift: u32,
    /// `arena[bounds[i]..bounds[i + 1]]` is the value of `keys[i]`.
    bounds: Box<[u32]>,
    arena: Box<str>,
}

impl Replica {
    /// Copies the dataset's sorted arrays (sequential copies, first touched by this thread)
    /// and indexes them.
    pub fn build(dataset: &Dataset) -> Replica {
        Replica::index(
            dataset.keys.clone(),
            dataset.bounds.clone(),
            dataset.arena.clone(),
        )
    }

    /// Takes the dataset's sorted arrays without copying them and indexes them: at 10M pairs
    /// the directory alone (tens of ms) instead of 0.4 GB of copies and their page faults.
    pub fn from_dataset(dataset: Dataset) -> Replica {
        Replica::index(dataset.keys, dataset.bounds, dataset.arena)
    }

    fn index(keys: Box<[u128]>, bounds: Box<[u32]>, arena: Box<str>) -> Replica {
        let bits = bucket_bits(keys.len());
        let shift = 128 - bits;
        let mut dir = vec![0_u32; (1_usize << bits) + 1];
        for &key in keys.iter() {
            dir[(key >> shift) as usize + 1] += 1;
        }
        for b in 1..dir.len() {
            dir[b] += dir[b - 1];
        }
        Replica {
            keys,
            dir: dir.into_boxed_slice(),
            shift,
            bounds,
            arena,
        }
    }

    #[inline]
    pub fn get(&self, key: u128) -> Option<&str> {
        let bucket = (key >> self.shift) as usize;
        let (lo, hi) = (self.dir[bucket] as usize, self.dir[bucket + 1] as usize);
        let i = lo + self.keys[lo..hi].binary_search(&key).ok()?;
        let (start, end) = (self.bounds[i] as usize, self.bounds[i + 1] as usize);
        self.arena.get(start..end)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Heap bytes a replica of `dataset` will own, without building it.
    pub fn bytes_for(dataset: &Dataset) -> usize {
        let dir = (1_usize << bucket_bits(dataset.len())) + 1;
        std::mem::size_of_val(&*dataset.keys)
            + dir * std::mem::size_of::<u32>()
            + std::mem::size_of_val(&*dataset.bounds)
            + dataset.arena.len()
    }

    /// Heap bytes owned by this replica.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.keys)
            + std::mem::size_of_val(&*self.dir)
            + std::mem::size_of_val(&*self.bounds)
            + self.arena.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::dataset::DatasetBuilder;
    use super::*;
    use crate::kv::sample;

    #[test]
    fn every_sample_key_is_found_with_its_value() {
        let dataset = sample(10_000, 7);
        let replica = Replica::build(&dataset);
        assert_eq!(replica.len(), 10_000);
        for (key, value) in dataset.iter() {
            assert_eq!(replica.get(key), Some(value));
        }
    }

    #[test]
    fn unknown_keys_are_not_found() {
        let dataset = sample(1_000, 7);
        let replica = Replica::build(&dataset);
        for (key, _) in dataset.iter() {
            assert_eq!(replica.get(key ^ 1), None);
            assert_eq!(replica.get(key ^ (1 << 127)), None);
        }
        assert_eq!(replica.get(0), None);
        assert_eq!(replica.get(u128::MAX), None);
    }

    #[test]
    fn empty_and_tiny_datasets_work() {
        for n in [0, 1, 2, 3, 5] {
            let dataset = sample(n, 1);
            let replica = Replica::build(&dataset);
            assert_eq!(replica.is_empty(), n == 0);
            for (key, value) in dataset.iter() {
                assert_eq!(replica.get(key), Some(value));
            }
            assert_eq!(replica.get(0), None);
            assert_eq!(replica.get(u128::MAX), None);
        }
    }

    #[test]
    fn skewed_keys_still_match() {
        let mut builder = DatasetBuilder::new();
        for k in 0..500_u128 {
            builder.push(k * 3, &k.to_string()).expect("small");
        }
        let replica = Replica::build(&builder.finish().expect("distinct"));
        for k in 0..500_u128 {
            assert_eq!(replica.get(k * 3), Some(k.to_string().as_str()));
            assert_eq!(replica.get(k * 3 + 1), None);
        }
    }

    #[test]
    fn a_replica_taken_from_the_dataset_or_cloned_answers_like_a_built_one() {
        let dataset = sample(10_000, 9);
        let built = Replica::build(&dataset);
        let expected: Vec<(u128, String)> =
            dataset.iter().map(|(k, v)| (k, v.to_owned())).collect();
        let taken = Replica::from_dataset(dataset);
        let cloned = taken.clone();
        for replica in [&taken, &cloned] {
            assert_eq!(replica.len(), built.len());
            assert_eq!(replica.memory_bytes(), built.memory_bytes());
            for (key, value) in &expected {
                assert_eq!(replica.get(*key), Some(value.as_str()));
                assert_eq!(replica.get(key ^ 1), None);
            }
        }
    }

    #[test]
    fn bytes_for_a_dataset_is_what_its_replica_owns() {
        for n in [0, 1, 1_000] {
            let dataset = sample(n, 5);
            assert_eq!(
                Replica::bytes_for(&dataset),
                Replica::build(&dataset).memory_bytes()
            );
        }
    }

    #[test]
    fn memory_is_under_twice_the_raw_bytes() {
        let dataset = sample(100_000, 3);
        let replica = Replica::build(&dataset);
        assert!(replica.memory_bytes() < 2 * dataset.raw_bytes());
        // Worst case: empty values.
        let mut builder = DatasetBuilder::new();
        for (key, _) in dataset.iter() {
            builder.push(key, "").expect("small");
        }
        let empty_values = builder.finish().expect("distinct");
        let replica = Replica::build(&empty_values);
        assert!(replica.memory_bytes() < 2 * empty_values.raw_bytes());
    }
}
