//! One JSON Lines record, `{"key": "<uuid>", "value": "<value>"}`, to its key and value:
//! simd-json parses each line into buffers reused from line to line, then the tape is walked
//! for the two fields. Other fields may hold any JSON and are ignored.

use simd_json::{Buffers, ErrorType, Node, Tape, INPUT_PADDING};

/// Why a line is not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Not JSON. No column: simd-json's error offsets are not reliable enough to print (0
    /// for an unterminated string, 1 for a bad escape wherever it is), so the line places it.
    NotJson(&'static str),
    /// JSON, but not an object with one string `"key"` and one `"value"`.
    NotRecord(&'static str),
    /// The `"value"` field is not a string.
    ValueNotString,
}

/// Line length the buffers start with; the generated files have lines of about 90 bytes.
const INITIAL_LINE_BYTES: usize = 256;

/// simd-json's buffers, reused for every line of a file.
pub(crate) struct RecordParser {
    /// The line and [`INPUT_PADDING`] bytes after it: simd-json reads past the end in SIMD
    /// blocks and unescapes strings in place, so it gets a padded copy, not the file's text.
    input: Vec<u8>,
    buffers: Buffers,
    /// Kept empty between lines; `Tape::reset` rebinds its allocation to each new line.
    tape: Tape<'static>,
}

impl RecordParser {
    pub(crate) fn new() -> Self {
        RecordParser {
            input: Vec::with_capacity(INITIAL_LINE_BYTES + INPUT_PADDING),
            buffers: Buffers::new(INITIAL_LINE_BYTES),
            tape: Tape(Vec::with_capacity(16)),
        }
    }

    /// Parses `line`: the key text replaces the contents of `key` and the value is appended
    /// to `values`. On an error `values` may hold part of the record (the caller drops it) and
    /// `key` holds the key if the line had one.
    pub(crate) fn parse(
        &mut self,
        line: &str,
        key: &mut String,
        values: &mut String,
    ) -> Result<(), RecordError> {
        self.input.clear();
        self.input.extend_from_slice(line.as_bytes());
        self.input.resize(line.len() + INPUT_PADDING, b' ');
        let mut tape = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let result = match simd_json::fill_tape_padded(
            &mut self.input,
            line.len(),
            &mut self.buffers,
            &mut tape,
        ) {
            Ok(()) => record_fields(&tape.0, key, values),
            Err(e) => Err(RecordError::NotJson(syntax_reason(e.error()))),
        };
        self.tape = tape.reset();
        result
    }
}

/// Finds the `"key"` and `"value"` fields among the top-level fields of a parsed line.
fn record_fields(
    nodes: &[Node<'_>],
    key: &mut String,
    values: &mut String,
) -> Result<(), RecordError> {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return Err(RecordError::NotRecord(
            "each line must hold one JSON object",
        ));
    };
    key.clear();
    let (mut have_key, mut have_value, mut value_is_string) = (false, false, true);
    let mut i = 1;
    for _ in 0..len {
        let (Some(Node::String(name)), Some(value)) = (nodes.get(i), nodes.get(i + 1)) else {
            return Err(RecordError::NotRecord("malformed object"));
        };
        match *name {
            "key" if have_key => return Err(RecordError::NotRecord("\"key\" appears twice")),
            "value" if have_value => return Err(RecordError::NotRecord("\"value\" appears twice")),
            "key" => {
                let Node::String(text) = value else {
                    return Err(RecordError::NotRecord("\"key\" is not a string"));
                };
                key.push_str(text);
                have_key = true;
            }
            "value" => {
                match value {
                    Node::String(text) => values.push_str(text),
                    // Reported once the key is known, as it may come after the value.
                    _ => value_is_string = false,
                }
                have_value = true;
            }
            _ => {}
        }
        // Skip the field name and the whole value, nested nodes included.
        i += 2 + match value {
            Node::Object { count, .. } | Node::Array { count, .. } => *count,
            _ => 0,
        };
    }
    match (have_key, have_value) {
        (false, _) => Err(RecordError::NotRecord("the object has no \"key\" field")),
        (true, false) => Err(RecordError::NotRecord("the object has no \"value\" field")),
        (true, true) if !value_is_string => Err(RecordError::ValueNotString),
        (true, true) => Ok(()),
    }
}

/// simd-json's error kinds in words (its `Display` prints the variant's name). It reports
/// most malformed strings, truncated lines and trailing data only as `Syntax` or
/// `InternalError`, hence the general fallback.
fn syntax_reason(error: &ErrorType) -> &'static str {
    match error {
        ErrorType::InvalidEscape => "invalid escape sequence",
        ErrorType::InvalidUnicodeEscape | ErrorType::InvalidUnicodeCodepoint => {
            "invalid \\u escape"
        }
        ErrorType::ExpectedObjectColon => "expected ':' after an object key",
        ErrorType::ExpectedMapComma | ErrorType::ExpectedMapEnd => {
            "expected ',' or '}' in an object"
        }
        ErrorType::ExpectedArrayComma => "expected ',' or ']' in an array",
        ErrorType::ExpectedObjectKey | ErrorType::KeyMustBeAString | ErrorType::BadKeyType => {
            "expected a string as an object key"
        }
        ErrorType::InvalidNumber | ErrorType::InvalidExponent => "invalid number",
        ErrorType::ExpectedNull | ErrorType::ExpectedTrue | ErrorType::ExpectedFalse => {
            "invalid literal"
        }
        ErrorType::TrailingData => "unexpected data after the object",
        ErrorType::DepthLimitExceeded => "nested too deeply",
        _ => "not valid JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<(String, String), RecordError> {
        let mut parser = RecordParser::new();
        let (mut key, mut values) = (String::new(), String::new());
        parser.parse(line, &mut key, &mut values)?;
        Ok((key, values))
    }

    fn ok(key: &str, value: &str) -> Result<(String, String), RecordError> {
        Ok((key.to_owned(), value.to_owned()))
    }

    #[test]
    fn key_and_value_are_found_in_any_order_among_other_fields() {
        assert_eq!(parse(r#"{"key": "k", "value": "v"}"#), ok("k", "v"));
        assert_eq!(
            parse(r#"{"n": [1, {"x": null}], "value": "a\n\"b\" \ud83d\ude00", "key": "k"}"#),
            ok("k", "a\n\"b\" 😀")
        );
    }

    #[test]
    fn buffers_are_reused_from_line_to_line() {
        let mut parser = RecordParser::new();
        let (mut key, mut values) = (String::new(), String::new());
        let long = "x".repeat(10_000);
        for (line, expected_key) in [
            (r#"{"key": "a", "value": "1"}"#.to_owned(), "a"),
            (
                format!(r#"{{"key": "{long}", "value": "2"}}"#),
                long.as_str(),
            ),
            (r#"{"key": "c", "value": "3"}"#.to_owned(), "c"),
        ] {
            parser.parse(&line, &mut key, &mut values).expect("record");
            assert_eq!(key, expected_key);
        }
        assert_eq!(values, "123");
    }

    #[test]
    fn records_without_string_key_and_value_are_refused() {
        let not_record = |line| match parse(line) {
            Err(RecordError::NotRecord(reason)) => reason,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(not_record("[1]"), "each line must hold one JSON object");
        assert_eq!(
            not_record(r#""key""#),
            "each line must hold one JSON object"
        );
        assert_eq!(
            not_record(r#"{"value": "v"}"#),
            "the object has no \"key\" field"
        );
        assert_eq!(
            not_record(r#"{"key": "k"}"#),
            "the object has no \"value\" field"
        );
        assert_eq!(
            not_record(r#"{"key": 5, "value": "v"}"#),
            "\"key\" is not a string"
        );
        assert_eq!(
            not_record(r#"{"key": "k", "key": "k", "value": "v"}"#),
            "\"key\" appears twice"
        );
        assert_eq!(
            not_record(r#"{"key": "k", "value": "v", "value": "w"}"#),
            "\"value\" appears twice"
        );
        assert_eq!(
            parse(r#"{"value": null, "key": "k"}"#),
            Err(RecordError::ValueNotString)
        );
    }

    #[test]
    fn syntax_errors_give_a_reason() {
        let not_json = |line: &str| match parse(line) {
            Err(RecordError::NotJson(reason)) => reason,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            not_json(r#"{"key" "k"}"#),
            "expected ':' after an object key"
        );
        assert_eq!(
            not_json(r#"{"key": "k", }"#),
            "expected a string as an object key"
        );
        assert_eq!(not_json(r#"{"key": "a\x"}"#), "invalid escape sequence");
        assert_eq!(not_json(r#"{"key": "\ud800"}"#), "invalid \\u escape");
        assert_eq!(not_json(r#"{"key": tru}"#), "invalid literal");
        assert_eq!(not_json(r#"{"key": 01}"#), "invalid number");
        assert_eq!(not_json(&"[".repeat(2_000)), "nested too deeply");
        for line in [
            r#"{"key": "k""#,
            r#"{"key": "k"#,
            "{\"key\": \"a\tb\"}",
            r#"{"key": "k"} {}"#,
        ] {
            assert_eq!(not_json(line), "not valid JSON", "{line}");
        }
    }
}
