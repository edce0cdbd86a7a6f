//! CSV records (RFC 4180): fields separated by `,`, records by CRLF or LF, a field in double
//! quotes may hold commas, line breaks and `""` for a quote. Blank lines are skipped.

/// A malformed record, at a line of the file (counting from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CsvError {
    pub(crate) line: u64,
    pub(crate) reason: &'static str,
}

/// Reads records one at a time from UTF-8 text.
pub(crate) struct Records<'t> {
    text: &'t str,
    pos: usize,
    /// Line of `pos`, counting from 1.
    line: u64,
    /// Receives the fields after the second (which make the record an error anyway).
    extra: String,
}

impl<'t> Records<'t> {
    pub(crate) fn new(text: &'t str, pos: usize) -> Self {
        Records {
            text,
            pos,
            line: 1,
            extra: String::new(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn error(&self, reason: &'static str) -> CsvError {
        CsvError {
            line: self.line,
            reason,
        }
    }

    /// Reads the next record: its first field is appended to `first`, its second to `second`.
    /// Returns the record's first line and its number of fields, or `None` at the end.
    pub(crate) fn next_record(
        &mut self,
        first: &mut String,
        second: &mut String,
    ) -> Result<Option<(u64, usize)>, CsvError> {
        loop {
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'\r') if self.text.as_bytes().get(self.pos + 1) == Some(&b'\n') => {
                    self.pos += 2;
                    self.line += 1;
                }
                Some(_) => break,
            }
        }
        let record_line = self.line;
        let mut fields = 0;
        loop {
            let out = match fields {
                0 => &mut *first,
                1 => &mut *second,
                _ => {
                    self.extra.clear();
                    &mut self.extra
                }
            };
            let (text, pos, line) = (self.text, &mut self.pos, &mut self.line);
            field(text, pos, line, out)?;
            fields += 1;
            match self.peek() {
                Some(b',') => self.pos += 1,
                None => break,
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                    break;
                }
                Some(b'\r') if self.text.as_bytes().get(self.pos + 1) == Some(&b'\n') => {
                    self.pos += 2;
                    self.line += 1;
                    break;
                }
                Some(b'"') => return Err(self.error(
                    "a quote inside an unquoted field (quote the whole field and double the quote)",
                )),
                Some(_) => return Err(self.error("unexpected character after a closing quote")),
            }
        }
        Ok(Some((record_line, fields)))
    }
}

/// Reads one field at `pos` into `out`, leaving `pos` at the byte after it.
fn field(text: &str, pos: &mut usize, line: &mut u64, out: &mut String) -> Result<(), CsvError> {
    let bytes = text.as_bytes();
    if bytes.get(*pos) != Some(&b'"') {
        let start = *pos;
        while let Some(&b) = bytes.get(*pos) {
            if matches!(b, b',' | b'\n' | b'\r' | b'"') {
                break;
            }
            *pos += 1;
        }
        out.push_str(&text[start..*pos]);
        // A lone CR (not CRLF) in an unquoted field is data the RFC does not allow.
        if bytes.get(*pos) == Some(&b'\r') && bytes.get(*pos + 1) != Some(&b'\n') {
            return Err(CsvError {
                line: *line,
                reason: "a carriage return inside an unquoted field",
            });
        }
        return Ok(());
    }
    let opened_on = *line;
    *pos += 1;
    loop {
        let start = *pos;
        while let Some(&b) = bytes.get(*pos) {
            if b == b'"' {
                break;
            }
            if b == b'\n' {
                *line += 1;
            }
            *pos += 1;
        }
        out.push_str(&text[start..*pos]);
        if *pos >= bytes.len() {
            return Err(CsvError {
                line: opened_on,
                reason: "a quoted field is never closed",
            });
        }
        // At a quote: `""` is an escaped quote, a single one closes the field.
        if bytes.get(*pos + 1) == Some(&b'"') {
            out.push('"');
            *pos += 2;
        } else {
            *pos += 1;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Result<Vec<(u64, usize, String, String)>, CsvError> {
        let mut reader = Records::new(text, 0);
        let mut out = Vec::new();
        loop {
            let (mut a, mut b) = (String::new(), String::new());
            match reader.next_record(&mut a, &mut b)? {
                None => return Ok(out),
                Some((line, fields)) => out.push((line, fields, a, b)),
            }
        }
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks() {
        let text = "key,value\r\na,\"x, \"\"y\"\"\nz\"\n\nb,plain";
        assert_eq!(
            records(text),
            Ok(vec![
                (1, 2, "key".into(), "value".into()),
                (2, 2, "a".into(), "x, \"y\"\nz".into()),
                (5, 2, "b".into(), "plain".into()),
            ])
        );
    }

    #[test]
    fn field_counts_are_reported() {
        assert_eq!(
            records("a\nb,c,d\n"),
            Ok(vec![
                (1, 1, "a".into(), String::new()),
                (2, 3, "b".into(), "c".into())
            ])
        );
        assert_eq!(records("a,\n"), Ok(vec![(1, 2, "a".into(), String::new())]));
    }

    #[test]
    fn malformed_quoting_is_an_error_with_its_line() {
        let err = |text| records(text).expect_err(text);
        assert_eq!(err("k,v\na,\"open\nstill").line, 2);
        assert_eq!(
            err("k,v\na,\"open\nstill").reason,
            "a quoted field is never closed"
        );
        assert_eq!(err("k,v\n\na,b\"c").line, 3);
        assert_eq!(
            err("k,v\na,\"x\"y").reason,
            "unexpected character after a closing quote"
        );
        assert_eq!(
            err("a,b\rc").reason,
            "a carriage return inside an unquoted field"
        );
    }
}
