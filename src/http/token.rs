//! The small pieces of RFC 9110's grammar the head and the chunked decoder both read.

/// `field-name = token` (RFC 9110 §5.1, §5.6.2): one or more `tchar`.
pub(super) fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Strips optional whitespace (`OWS`, RFC 9110 §5.6.3: spaces and tabs) from both ends.
pub(super) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}
