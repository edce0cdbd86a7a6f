//! What a counter name may be, and which core owns it.

/// Longest name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// What a client is told when a name is refused.
pub const NAME_RULE: &str = "counter names are 1 to 200 characters from A-Z a-z 0-9 - . _ ~";

/// `bytes` as a counter name, if it is one: 1 to [`MAX_NAME_BYTES`] URL-unreserved characters
/// (RFC 3986 §2.3), taken as they are (a percent sign is not one of them, so nothing needs
/// decoding and a name has one spelling).
pub fn counter_name(bytes: &[u8]) -> Option<&str> {
    let unreserved = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if bytes.is_empty() || bytes.len() > MAX_NAME_BYTES || !bytes.iter().all(unreserved) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// The core that owns `name` among `cores`: FNV-1a over its bytes, so the owner of a name does
/// not change between runs or instances with the same number of cores.
pub fn owner_of(name: &str, cores: usize) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = name
        .bytes()
        .fold(OFFSET, |hash, b| (hash ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % cores.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_to_two_hundred_unreserved_characters() {
        let longest = "a".repeat(MAX_NAME_BYTES);
        for good in ["a", "Page-1.views_total~", "0", &longest] {
            assert_eq!(counter_name(good.as_bytes()), Some(good), "{good}");
        }
        let too_long = "a".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            "", &too_long, "%41", "a/b", "a b", "a+b", "a:b", "é", "a\0", "a?b",
        ] {
            assert_eq!(counter_name(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn owners_spread_over_the_cores_and_stay_put() {
        assert_eq!(owner_of("anything", 1), 0);
        let mut per_core = [0usize; 2];
        for i in 0..1000 {
            per_core[owner_of(&format!("c{i}"), 2)] += 1;
        }
        assert!(per_core.iter().all(|&n| n > 400), "{per_core:?}");
        // Fixed: FNV-1a of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(owner_of("a", 7), (0xaf63_dc4c_8601_ec8c_u64 % 7) as usize);
    }
}
