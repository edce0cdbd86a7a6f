//! The built-in deterministic sample dataset: what the server answers from when no dataset is
//! given, and what `tally sample` writes. The same `(n, seed)` gives the same pairs forever, so
//! the generator is written here (splitmix64) instead of depending on a crate's algorithm.

use super::dataset::{Dataset, DatasetBuilder, MAX_VALUE_BYTES};
use super::uuid_v4::{VARIANT_MASK, VARIANT_RFC, VERSION_4, VERSION_MASK};

/// Seed of the sample the server uses when no dataset is given.
pub const DEFAULT_SEED: u64 = 0x7a11_5eed;
/// Number of pairs in the default sample, as in the seed server's dataset.
pub const DEFAULT_SAMPLE_PAIRS: usize = 10_000;

const MIN_WORDS: u64 = 1;
const MAX_WORDS: u64 = 5;
const MIN_WORD_LETTERS: u64 = 3;
const MAX_WORD_LETTERS: u64 = 9;
/// The longest value: the most words of the most letters, with the spaces between them.
const MAX_SAMPLE_VALUE_BYTES: usize = (MAX_WORDS * MAX_WORD_LETTERS + MAX_WORDS - 1) as usize;

/// Most pairs [`sample`] makes: with every value as long as it can be, they still fit
/// [`MAX_VALUE_BYTES`] (87,652,393 pairs).
pub const MAX_SAMPLE_PAIRS: usize = MAX_VALUE_BYTES / MAX_SAMPLE_VALUE_BYTES;

/// splitmix64 (Steele, Lea, Flood 2014; the reference constants from Vigna's `splitmix64.c`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi` (modulo bias is irrelevant for sample text).
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `n` pairs: random UUID v4 keys and values of 1 to 5 lowercase words of 3 to 9 letters.
///
/// # Panics
/// If `n` is above [`MAX_SAMPLE_PAIRS`] (`tally sample --pairs` refuses such numbers first).
pub fn sample(n: usize, seed: u64) -> Dataset {
    assert!(
        n <= MAX_SAMPLE_PAIRS,
        "sample: {n} pairs is more than MAX_SAMPLE_PAIRS ({MAX_SAMPLE_PAIRS})"
    );
    let mut rng = SplitMix64(seed);
    let mut builder = DatasetBuilder::new();
    builder.values.reserve(n.saturating_mul(24));
    for _ in 0..n {
        let raw = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let key = (raw & !VERSION_MASK & !VARIANT_MASK) | VERSION_4 | VARIANT_RFC;
        for word in 0..rng.between(MIN_WORDS, MAX_WORDS) {
            if word > 0 {
                builder.values.push(' ');
            }
            for _ in 0..rng.between(MIN_WORD_LETTERS, MAX_WORD_LETTERS) {
                builder
                    .values
                    .push(char::from(b'a' + (rng.next() % 26) as u8));
            }
        }
        builder
            .push_key(key)
            .expect("n <= MAX_SAMPLE_PAIRS keeps the values within MAX_VALUE_BYTES");
    }
    // 122 random bits per key: a collision among even 10^9 keys has probability below 10^-18.
    builder.finish().expect("random UUID v4 keys are distinct")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::parse_uuid_v4;

    #[test]
    fn default_sample_is_pinned_forever() {
        let dataset = sample(DEFAULT_SAMPLE_PAIRS, DEFAULT_SEED);
        assert_eq!(dataset.len(), DEFAULT_SAMPLE_PAIRS);
        let (key, value) = dataset.iter().next().expect("non-empty");
        let text =
            String::from_utf8(super::super::uuid_v4::format_uuid(key).to_vec()).expect("ASCII");
        assert_eq!((text.as_str(), value), PINNED_FIRST_PAIR);
    }

    /// Changing this breaks every benchmark key list and user file made from the default sample.
    const PINNED_FIRST_PAIR: (&str, &str) = (
        "6b557cb0-b031-4682-bfe9-4da422e35329",
        "kbcko xkayvlwnq twwqbgvr qsy uauoxjcnp",
    );

    #[test]
    fn same_seed_same_dataset_other_seed_other_dataset() {
        let a: Vec<(u128, String)> = sample(500, 42)
            .iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        let b: Vec<(u128, String)> = sample(500, 42)
            .iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        assert_eq!(a, b);
        let c = sample(500, 43);
        assert_ne!(a[0].0, c.iter().next().expect("non-empty").0);
        // A prefix of a bigger sample is the smaller sample.
        let big: Vec<u128> = sample(1_000, 42).iter().map(|(k, _)| k).take(500).collect();
        assert_eq!(big, a.iter().map(|(k, _)| *k).collect::<Vec<_>>());
    }

    #[test]
    fn the_largest_sample_still_fits_the_value_arena() {
        assert_eq!(MAX_SAMPLE_VALUE_BYTES, 5 * 9 + 4);
        assert_eq!(MAX_SAMPLE_PAIRS, 87_652_393);
    }

    #[test]
    #[should_panic(expected = "more than MAX_SAMPLE_PAIRS")]
    fn a_larger_sample_is_refused_before_any_work() {
        sample(MAX_SAMPLE_PAIRS + 1, 1);
    }

    #[test]
    fn keys_are_uuid_v4_and_values_are_words() {
        for (key, value) in sample(2_000, 9).iter() {
            let text =
                String::from_utf8(super::super::uuid_v4::format_uuid(key).to_vec()).expect("ASCII");
            assert_eq!(parse_uuid_v4(&text), Some(key));
            let words: Vec<&str> = value.split(' ').collect();
            assert!((1..=5).contains(&words.len()), "{value:?}");
            for word in words {
                assert!((3..=9).contains(&word.len()), "{value:?}");
                assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{value:?}");
            }
        }
    }
}
