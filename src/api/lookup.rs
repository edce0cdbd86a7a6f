//! A `/get_value` body to a lookup outcome, with no I/O: parse with simd-json into per-core
//! reused buffers (no allocation once they have grown to the body size), check the key is a
//! UUID v4, look it up in a replica.

use simd_json::{Buffers, Node, Tape};

use crate::kv::{parse_uuid_v4, Replica};

/// What a `/get_value` body asks for, before it becomes a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// 200: the value of the key.
    Found(&'a str),
    /// 404: a UUID v4 that is not in the dataset.
    NotFound,
    /// 422: `key` is a string but not a hyphenated UUID v4.
    NotUuidV4,
    /// 400: the body is not valid UTF-8, not JSON, not an object, or has no string `key`.
    BadRequest(&'static str),
}

/// Body size the scratch buffers start with; a `{"key": "<uuid>"}` body is about 50 bytes.
const INITIAL_BODY_BYTES: usize = 256;

/// Per-core parsing buffers reused by every lookup on that core.
pub struct LookupScratch {
    buffers: Buffers,
    /// Kept empty between lookups; `Tape::reset` rebinds its allocation to each new body.
    tape: Tape<'static>,
}

impl LookupScratch {
    pub fn new() -> Self {
        LookupScratch {
            buffers: Buffers::new(INITIAL_BODY_BYTES),
            tape: Tape(Vec::with_capacity(16)),
        }
    }

    /// The key field of the body: `Ok(None)` when it is a string but not a UUID v4.
    pub(crate) fn key(&mut self, body: &mut [u8]) -> Result<Option<u128>, &'static str> {
        let mut tape = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let key = match simd_json::fill_tape(body, &mut self.buffers, &mut tape) {
            Ok(()) => key_of(&tape.0),
            Err(e) if matches!(e.error(), simd_json::ErrorType::InvalidUtf8) => {
                Err("the body is not valid UTF-8")
            }
            Err(_) => Err("the body is not valid JSON"),
        };
        self.tape = tape.reset();
        key
    }
}

impl Default for LookupScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Finds `"key"` among the top-level fields of a parsed document (the first one if repeated).
fn key_of(nodes: &[Node<'_>]) -> Result<Option<u128>, &'static str> {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return Err("the body is not a JSON object");
    };
    let mut i = 1;
    for _ in 0..len {
        let (Some(Node::String(name)), Some(value)) = (nodes.get(i), nodes.get(i + 1)) else {
            return Err("the body is not valid JSON");
        };
        if *name == "key" {
            return match value {
                Node::String(key) => Ok(parse_uuid_v4(key)),
                _ => Err("\"key\" is not a string"),
            };
        }
        // Skip the field name and the whole value, nested nodes included.
        i += 2 + match value {
            Node::Object { count, .. } | Node::Array { count, .. } => *count,
            _ => 0,
        };
    }
    Err("the body has no \"key\" field")
}

/// Parses a `/get_value` body (in place: simd-json unescapes into it) and looks the key up.
pub fn lookup<'a>(
    replica: &'a Replica,
    scratch: &mut LookupScratch,
    body: &mut [u8],
) -> Lookup<'a> {
    match scratch.key(body) {
        Err(reason) => Lookup::BadRequest(reason),
        Ok(None) => Lookup::NotUuidV4,
        Ok(Some(key)) => replica.get(key).map_or(Lookup::NotFound, Lookup::Found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::sample;

    struct Fixture {
        replica: Replica,
        key: String,
        value: String,
    }

    fn fixture() -> Fixture {
        let dataset = sample(100, 3);
        let (key, value) = dataset.iter().next().expect("non-empty");
        Fixture {
            replica: Replica::build(&dataset),
            key: uuid::Uuid::from_u128(key).hyphenated().to_string(),
            value: value.to_owned(),
        }
    }

    fn ask<'a>(f: &'a Fixture, scratch: &mut LookupScratch, body: &[u8]) -> Lookup<'a> {
        let mut body = body.to_vec();
        lookup(&f.replica, scratch, &mut body)
    }

    #[test]
    fn known_key_is_found_in_either_case() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        let body = format!("{{\"key\": \"{}\"}}", f.key);
        assert_eq!(
            ask(&f, &mut scratch, body.as_bytes()),
            Lookup::Found(&f.value)
        );
        let body = format!("{{\"key\":\"{}\"}}", f.key.to_uppercase());
        assert_eq!(
            ask(&f, &mut scratch, body.as_bytes()),
            Lookup::Found(&f.value)
        );
    }

    #[test]
    fn extra_fields_are_ignored() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        let body = format!(
            "{{\"a\": [1, {{\"key\": 2}}], \"b\": {{\"key\": \"x\"}}, \"key\": \"{}\", \"z\": null}}",
            f.key
        );
        assert_eq!(
            ask(&f, &mut scratch, body.as_bytes()),
            Lookup::Found(&f.value)
        );
    }

    #[test]
    fn escaped_key_is_unescaped_before_the_check() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        let escaped = f.key.replacen('-', "\\u002d", 1);
        let body = format!("{{\"key\": \"{escaped}\"}}");
        assert_eq!(
            ask(&f, &mut scratch, body.as_bytes()),
            Lookup::Found(&f.value)
        );
    }

    #[test]
    fn unknown_uuid_v4_is_not_found() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        let body = br#"{"key": "8a35eb59-62b3-481c-8875-1f248df4c952"}"#;
        assert_eq!(ask(&f, &mut scratch, body), Lookup::NotFound);
    }

    #[test]
    fn key_that_is_not_a_uuid_v4_is_reported() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        for key in [
            "c232ab00-9414-11ec-b3c8-9f6bdeced846",
            "8a35eb59-62b3-481c-c875-1f248df4c952",
            "8a35eb5962b3481c88751f248df4c952",
            "hello",
            "",
        ] {
            let body = format!("{{\"key\": \"{key}\"}}");
            assert_eq!(
                ask(&f, &mut scratch, body.as_bytes()),
                Lookup::NotUuidV4,
                "{key}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        let cases: [(&[u8], &str); 10] = [
            (b"{\"key\": \"\xff\"}", "the body is not valid UTF-8"),
            (b"", "the body is not valid JSON"),
            (b"{\"key\": ", "the body is not valid JSON"),
            (b"{\"key\": \"a\"} x", "the body is not valid JSON"),
            (b"[\"key\"]", "the body is not a JSON object"),
            (
                b"\"8a35eb59-62b3-481c-8875-1f248df4c952\"",
                "the body is not a JSON object",
            ),
            (b"{}", "the body has no \"key\" field"),
            (
                b"{\"Key\": \"x\", \"value\": {\"key\": \"y\"}}",
                "the body has no \"key\" field",
            ),
            (b"{\"key\": 12345}", "\"key\" is not a string"),
            (b"{\"key\": null}", "\"key\" is not a string"),
        ];
        for (body, reason) in cases {
            assert_eq!(
                ask(&f, &mut scratch, body),
                Lookup::BadRequest(reason),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn scratch_is_reusable_after_errors_and_big_bodies() {
        let f = fixture();
        let mut scratch = LookupScratch::new();
        let good = format!("{{\"key\": \"{}\"}}", f.key);
        let big = format!(
            "{{\"pad\": \"{}\", \"key\": \"{}\"}}",
            "x".repeat(100_000),
            f.key
        );
        for body in [
            good.as_bytes(),
            b"{",
            big.as_bytes(),
            b"[1,2",
            good.as_bytes(),
        ] {
            let _ = ask(&f, &mut scratch, body);
        }
        assert_eq!(
            ask(&f, &mut scratch, good.as_bytes()),
            Lookup::Found(&f.value)
        );
        assert_eq!(
            ask(&f, &mut scratch, big.as_bytes()),
            Lookup::Found(&f.value)
        );
    }
}
