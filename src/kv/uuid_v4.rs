//! UUID version 4 keys: the hyphenated text form to and from `u128` (RFC 9562 section 5.4).
//!
//! Hand-written rather than `uuid::Uuid::parse_str` because that also accepts the simple,
//! braced and URN forms, which the lookup contract does not, and because this sits on the
//! request path (no branches per digit beyond a table load; `api::kv_bench` times it).

/// Length of the hyphenated form `8-4-4-4-12`.
const HYPHENATED_LEN: usize = 36;
/// Byte positions of the four hyphens in the hyphenated form.
const HYPHEN_AT: [usize; 4] = [8, 13, 18, 23];
/// The hex digit groups between the hyphens.
const HEX_GROUPS: [std::ops::Range<usize>; 5] = [0..8, 9..13, 14..18, 19..23, 24..36];
/// The version nibble is the first hex digit of the third group.
const VERSION_AT: usize = 14;
/// The variant bits are the top bits of the first hex digit of the fourth group.
const VARIANT_AT: usize = 19;

/// Bits of the version field within the `u128` (big-endian byte 6, high nibble).
pub(crate) const VERSION_MASK: u128 = 0xF << 76;
pub(crate) const VERSION_4: u128 = 0x4 << 76;
/// Bits of the variant field within the `u128` (big-endian byte 8, top two bits).
pub(crate) const VARIANT_MASK: u128 = 0x3 << 62;
/// RFC 9562 variant `10xx`.
pub(crate) const VARIANT_RFC: u128 = 0x2 << 62;

/// Hex digit value per byte, `0xFF` for a byte that is not a hex digit.
const HEX: [u8; 256] = {
    let mut table = [0xFF_u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Parses a hyphenated UUID (upper or lower case hex) and returns it only if it is version 4
/// with the RFC variant (`10xx`); `None` for any other text.
pub fn parse_uuid_v4(s: &str) -> Option<u128> {
    let bytes = s.as_bytes();
    if bytes.len() != HYPHENATED_LEN || HYPHEN_AT.iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    // Two u64 halves, 16 digits each: groups 8-4-4 and groups 4-12 (64-bit shifts are single
    // instructions; u128 ones are not).
    let mut invalid = 0_u8;
    let mut half = |groups: &[std::ops::Range<usize>]| {
        let mut half = 0_u64;
        for group in groups {
            for &b in &bytes[group.clone()] {
                let digit = HEX[b as usize];
                invalid |= digit;
                half = (half << 4) | u64::from(digit & 0xF);
            }
        }
        half
    };
    let high = half(&HEX_GROUPS[..3]);
    let low = half(&HEX_GROUPS[3..]);
    // Any non-hex byte sets the high bits of `invalid` (0xFF); hex digits are at most 0x0F.
    if invalid > 0xF {
        return None;
    }
    let value = (u128::from(high) << 64) | u128::from(low);
    debug_assert_eq!(HEX[bytes[VERSION_AT] as usize] as u128, (value >> 76) & 0xF);
    debug_assert_eq!(
        HEX[bytes[VARIANT_AT] as usize] as u128 >> 2,
        (value >> 62) & 0x3
    );
    if value & VERSION_MASK != VERSION_4 || value & VARIANT_MASK != VARIANT_RFC {
        return None;
    }
    Some(value)
}

/// Length of [`format_uuid`]'s output.
pub(crate) const FORMATTED_LEN: usize = HYPHENATED_LEN;

/// Formats a key as a lower-case hyphenated UUID.
pub(crate) fn format_uuid(key: u128) -> [u8; FORMATTED_LEN] {
    let mut out = [0_u8; FORMATTED_LEN];
    uuid::Uuid::from_u128(key)
        .hyphenated()
        .encode_lower(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "8a35eb59-62b3-481c-8875-1f248df4c952";

    #[test]
    fn lower_case_v4_is_accepted() {
        assert_eq!(
            parse_uuid_v4(V4),
            Some(0x8a35eb59_62b3_481c_8875_1f248df4c952)
        );
    }

    #[test]
    fn upper_and_mixed_case_match_the_same_key() {
        let key = parse_uuid_v4(V4);
        assert_eq!(parse_uuid_v4(&V4.to_uppercase()), key);
        assert_eq!(parse_uuid_v4("8A35eb59-62B3-481c-8875-1f248DF4c952"), key);
    }

    #[test]
    fn other_versions_are_rejected() {
        // version 1, 3, 5 and 7 with a valid variant
        for v in ['1', '3', '5', '7'] {
            let mut s = V4.to_string();
            s.replace_range(VERSION_AT..VERSION_AT + 1, &v.to_string());
            assert_eq!(parse_uuid_v4(&s), None, "{s}");
        }
        // real v1 and v5 UUIDs
        assert_eq!(parse_uuid_v4("c232ab00-9414-11ec-b3c8-9f6bdeced846"), None);
        assert_eq!(parse_uuid_v4("2ed6657d-e927-568b-95e1-2665a8aea6a2"), None);
    }

    #[test]
    fn bad_variant_is_rejected() {
        for variant in ['0', '7', 'c', 'C', 'f'] {
            let mut s = V4.to_string();
            s.replace_range(VARIANT_AT..VARIANT_AT + 1, &variant.to_string());
            assert_eq!(parse_uuid_v4(&s), None, "{s}");
        }
        for variant in ['8', '9', 'a', 'b', 'A', 'B'] {
            let mut s = V4.to_string();
            s.replace_range(VARIANT_AT..VARIANT_AT + 1, &variant.to_string());
            assert!(parse_uuid_v4(&s).is_some(), "{s}");
        }
    }

    #[test]
    fn forms_without_hyphens_are_rejected() {
        assert_eq!(parse_uuid_v4("8a35eb5962b3481c88751f248df4c952"), None);
        assert_eq!(
            parse_uuid_v4("{8a35eb59-62b3-481c-8875-1f248df4c952}"),
            None
        );
        assert_eq!(
            parse_uuid_v4("urn:uuid:8a35eb59-62b3-481c-8875-1f248df4c952"),
            None
        );
        // hyphens in the wrong places, right length
        assert_eq!(parse_uuid_v4("8a35eb5-962b3-481c-8875-1f248df4c952"), None);
    }

    #[test]
    fn wrong_length_is_rejected() {
        assert_eq!(parse_uuid_v4(""), None);
        assert_eq!(parse_uuid_v4(&V4[..35]), None);
        assert_eq!(parse_uuid_v4(&format!("{V4}0")), None);
        assert_eq!(parse_uuid_v4(&format!(" {V4}")), None);
    }

    #[test]
    fn non_hex_digits_are_rejected() {
        assert_eq!(parse_uuid_v4("8a35eb59-62b3-481c-8875-1f248df4c95g"), None);
        assert_eq!(parse_uuid_v4("8a35eb59-62b3-481c-8875-1f248df4c9 2"), None);
        // multi-byte UTF-8 of the right byte length
        assert_eq!(parse_uuid_v4("8a35eb59-62b3-481c-8875-1f248df4c9é"), None);
    }

    #[test]
    fn format_round_trips() {
        let key = parse_uuid_v4(V4).expect("valid");
        assert_eq!(&format_uuid(key), V4.as_bytes());
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_uuid_crate(bytes in proptest::array::uniform16(0_u8..), upper: bool) {
            let id = uuid::Uuid::from_bytes(bytes);
            let mut text = id.hyphenated().to_string();
            if upper {
                text = text.to_uppercase();
            }
            let expected = (id.get_version_num() == 4 && id.get_variant() == uuid::Variant::RFC4122)
                .then_some(id.as_u128());
            proptest::prop_assert_eq!(parse_uuid_v4(&text), expected);
        }
    }
}
