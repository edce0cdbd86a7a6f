//! JSON text without simd-json: the escaping writer used by responses and dataset files, and
//! the small strict reader (RFC 8259) the `.json` and `.jsonl` loaders use.
//!
//! The loaders keep this reader because simd-json measured worse on them (`kv::bench` on
//! 10,000,000 pairs; the figures are in commits "keep the hand-written JSON Lines reader" and
//! "keep the hand-written .json reader"): on the `.json` object its whole-document tape costs
//! far more peak memory with no gain in time; on JSON Lines, one tiny document a line was
//! slower and its error offsets cannot place a column. This reader decodes each value straight
//! into the dataset's arena in one pass.

/// Bytes that must be escaped inside a JSON string (RFC 8259 section 7): `"`, `\` and the
/// control characters U+0000 to U+001F.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal, quotes included. `"`, `\` and control characters are
/// escaped (`\n`, `\r`, `\t`, `\b`, `\f` by name, the others as `\u00XX`); everything else,
/// non-ASCII included, is copied as UTF-8 in runs.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        run_start = i + 1;
        let named = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0C => b'f',
            _ => {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX_DIGITS[(b >> 4) as usize],
                    HEX_DIGITS[(b & 0xF) as usize],
                ]);
                continue;
            }
        };
        out.extend_from_slice(&[b'\\', named]);
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// A syntax error at a byte offset of the text being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) at: usize,
    pub(crate) reason: &'static str,
}

/// Nesting limit for values skipped in JSON Lines records (extra fields), so a hostile file
/// cannot overflow the stack.
const MAX_SKIP_DEPTH: usize = 128;

/// A reading position in UTF-8 text. Offsets are byte offsets into `text`.
pub(crate) struct Reader<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Reader<'t> {
    pub(crate) fn new(text: &'t str, pos: usize) -> Self {
        Reader { text, pos }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    pub(crate) fn error(&self, reason: &'static str) -> SyntaxError {
        SyntaxError {
            at: self.pos,
            reason,
        }
    }

    pub(crate) fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Consumes `byte` or fails with `reason`.
    pub(crate) fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), SyntaxError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    /// Reads a string starting at its opening quote. Returns a slice of the text when the string
    /// has no escapes (the common case), else decodes it into `scratch` and returns that.
    pub(crate) fn string<'s>(
        &'s mut self,
        scratch: &'s mut String,
    ) -> Result<&'s str, SyntaxError> {
        let start = self.pos + 1;
        self.expect(b'"', "expected a string")?;
        let end = self.scan_plain();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            return Ok(&self.text[start..end]);
        }
        scratch.clear();
        scratch.push_str(&self.text[start..end]);
        self.finish_escaped(scratch)?;
        Ok(scratch.as_str())
    }

    /// Reads a string starting at its opening quote and appends its decoded content to `out`.
    pub(crate) fn string_into(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        let start = self.pos + 1;
        self.expect(b'"', "expected a string")?;
        let end = self.scan_plain();
        out.push_str(&self.text[start..end]);
        if self.peek() == Some(b'"') {
            self.pos += 1;
            return Ok(());
        }
        self.finish_escaped(out)
    }

    /// Advances over bytes that need no decoding; returns where they end.
    fn scan_plain(&mut self) -> usize {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            if NEEDS_ESCAPE[b as usize] {
                break;
            }
            self.pos += 1;
        }
        self.pos
    }

    /// Continues a string at a byte that needs decoding (`\`, a control character, the closing
    /// quote or the end of the text), appending to `out`, through the closing quote.
    fn finish_escaped(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.escape(out)?;
                }
                Some(_) => {
                    return Err(self.error("control character in a string must be escaped"));
                }
            }
            let start = self.pos;
            let end = self.scan_plain();
            out.push_str(&self.text[start..end]);
        }
    }

    /// Decodes one escape sequence starting at its backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        let at = self.pos;
        let bytes = self.text.as_bytes();
        let decoded = match bytes.get(self.pos + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 2;
                let high = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&high) {
                    // RFC 8259 section 7: a character outside the BMP is a surrogate pair.
                    if bytes.get(self.pos) != Some(&b'\\') || bytes.get(self.pos + 1) != Some(&b'u')
                    {
                        return Err(SyntaxError {
                            at,
                            reason: "unpaired surrogate in \\u escape",
                        });
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(SyntaxError {
                            at,
                            reason: "unpaired surrogate in \\u escape",
                        });
                    }
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    high
                };
                let c = char::from_u32(code).ok_or(SyntaxError {
                    at,
                    reason: "unpaired surrogate in \\u escape",
                })?;
                out.push(c);
                return Ok(());
            }
            _ => {
                return Err(SyntaxError {
                    at,
                    reason: "invalid escape sequence",
                })
            }
        };
        self.pos += 2;
        out.push(decoded);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self
            .text
            .as_bytes()
            .get(self.pos..self.pos + 4)
            .ok_or(self.error("truncated \\u escape"))?;
        let mut code = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or(self.error("invalid hex digit in \\u escape"))?;
            code = code * 16 + v;
        }
        self.pos += 4;
        Ok(code)
    }

    /// Whether the next byte can start a JSON value.
    pub(crate) fn at_value_start(&self) -> bool {
        matches!(
            self.peek(),
            Some(b'"' | b'{' | b'[' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9')
        )
    }

    /// Skips any one JSON value, checking its syntax.
    pub(crate) fn skip_value(&mut self, scratch: &mut String) -> Result<(), SyntaxError> {
        self.skip_value_at_depth(scratch, 0)
    }

    /// After an item of an object or array: `true` at the container's `close` (consumed),
    /// `false` after a `,` (and the whitespace after it).
    fn end_of_items(&mut self, close: u8, error: &'static str) -> Result<bool, SyntaxError> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_whitespace();
                Ok(false)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(self.error(error)),
        }
    }

    fn skip_value_at_depth(
        &mut self,
        scratch: &mut String,
        depth: usize,
    ) -> Result<(), SyntaxError> {
        if depth > MAX_SKIP_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => self.string(scratch).map(|_| ()),
            Some(b'{') => {
                self.pos += 1;
                self.skip_whitespace();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.string(scratch)?;
                    self.skip_whitespace();
                    self.expect(b':', "expected ':' after an object key")?;
                    self.skip_whitespace();
                    self.skip_value_at_depth(scratch, depth + 1)?;
                    self.skip_whitespace();
                    if self.end_of_items(b'}', "expected ',' or '}' in an object")? {
                        return Ok(());
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_whitespace();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value_at_depth(scratch, depth + 1)?;
                    self.skip_whitespace();
                    if self.end_of_items(b']', "expected ',' or ']' in an array")? {
                        return Ok(());
                    }
                }
            }
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), SyntaxError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` (RFC 8259 section 6).
    fn number(&mut self) -> Result<(), SyntaxError> {
        let bytes = self.text.as_bytes();
        let digits = |pos: &mut usize| {
            let start = *pos;
            while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos > start
        };
        let mut pos = self.pos;
        if bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
        if bytes.get(pos) == Some(&b'0') {
            pos += 1;
        } else if !digits(&mut pos) {
            return Err(self.error("invalid number"));
        }
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            if !digits(&mut pos) {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = bytes.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = bytes.get(pos) {
                pos += 1;
            }
            if !digits(&mut pos) {
                return Err(self.error("invalid number"));
            }
        }
        self.pos = pos;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    /// Parses the escaped literal back with simd-json, an independent decoder.
    fn parsed_back(s: &str) -> String {
        let mut bytes = escaped(s).into_bytes();
        simd_json::serde::from_slice::<String>(&mut bytes).expect("valid JSON string")
    }

    #[test]
    fn plain_text_is_copied_between_quotes() {
        assert_eq!(
            escaped("lunmtp ftxemjfob pmo hwoya"),
            "\"lunmtp ftxemjfob pmo hwoya\""
        );
        assert_eq!(escaped(""), "\"\"");
    }

    #[test]
    fn quotes_backslashes_and_controls_are_escaped() {
        assert_eq!(escaped("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(escaped("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(escaped("\u{1}\u{1f}\u{0}"), r#""\u0001\u001f\u0000""#);
    }

    #[test]
    fn non_ascii_passes_through_as_utf8() {
        assert_eq!(escaped("héllo 😀 \u{2028}"), "\"héllo 😀 \u{2028}\"");
    }

    #[test]
    fn awkward_values_round_trip_through_simd_json() {
        let long: String = "ab\"c\\d\ne😀".chars().cycle().take(5_000).collect();
        assert_eq!(long.chars().count(), 5_000);
        for value in [
            "say \"hi\"",
            "back\\slash",
            "line\nbreak",
            "\u{1}",
            "emoji 😀 and 中文",
            "\u{7f}\u{0}\t\r\u{8}\u{c}",
            long.as_str(),
        ] {
            assert_eq!(parsed_back(value), value);
        }
    }

    fn read_string(text: &str) -> Result<String, SyntaxError> {
        let mut reader = Reader::new(text, 0);
        let mut out = String::new();
        reader.string_into(&mut out)?;
        Ok(out)
    }

    #[test]
    fn reader_decodes_every_escape() {
        assert_eq!(
            read_string(r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00z""#),
            Ok("a\"\\/\u{8}\u{c}\n\r\té😀z".to_string())
        );
    }

    #[test]
    fn reader_borrows_strings_without_escapes() {
        let mut reader = Reader::new(r#""plain" "esc\n""#, 0);
        let mut scratch = String::new();
        assert_eq!(reader.string(&mut scratch), Ok("plain"));
        assert!(scratch.is_empty());
        reader.skip_whitespace();
        assert_eq!(reader.string(&mut scratch), Ok("esc\n"));
    }

    #[test]
    fn reader_rejects_bad_strings_with_their_offset() {
        let err = |text| read_string(text).expect_err(text);
        assert_eq!(err(r#""abc"#).reason, "unterminated string");
        assert_eq!(err("\"a\nb\"").at, 2);
        assert_eq!(err(r#""a\x""#).reason, "invalid escape sequence");
        assert_eq!(
            err(r#""\ud83d""#).reason,
            "unpaired surrogate in \\u escape"
        );
        assert_eq!(
            err(r#""\ude00""#).reason,
            "unpaired surrogate in \\u escape"
        );
        assert_eq!(err(r#""\u12""#).reason, "truncated \\u escape");
        assert_eq!(err(r#""\u12zz""#).reason, "invalid hex digit in \\u escape");
    }

    #[test]
    fn skip_value_accepts_json_and_rejects_the_rest() {
        let skip = |text: &str| {
            let mut reader = Reader::new(text, 0);
            reader
                .skip_value(&mut String::new())
                .map(|()| reader.pos() == text.len())
        };
        for ok in [
            "0",
            "-1.5e+10",
            "true",
            "null",
            r#"{"a": [1, {"b": "c"}], "d": false}"#,
            "[]",
            "{}",
        ] {
            assert_eq!(skip(ok), Ok(true), "{ok}");
        }
        for bad in ["01x", "-", "1.", "tru", "[1,]", r#"{"a" 1}"#, "{1: 2}", "]"] {
            let ok_and_whole = skip(bad) == Ok(true);
            assert!(!ok_and_whole, "{bad}");
        }
        let deep = "[".repeat(1000);
        assert_eq!(
            skip(&deep).expect_err("too deep").reason,
            "nested too deeply"
        );
    }
}
