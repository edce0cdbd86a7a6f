//! The `.csv` reader: RFC 4180 records after a `key,value` header, read by the `csv` crate,
//! with the checks it leaves to us (quoting, field count, lines it skipped). Touches only the
//! [`Loader`].

use super::error::LoadError;
use super::loader::Loader;
use super::position::{PairAt, Position};

impl Loader<'_> {
    /// RFC 4180 records after a `key,value` header, read by the `csv` crate.
    pub(super) fn csv(&mut self, start: usize) -> Result<(), LoadError> {
        let text = self.text;
        // The BOM is skipped here: the csv crate would read it as part of the first field.
        let input = &text.as_bytes()[start..];
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            // Records of any length come back, so a wrong one gets our message and its line.
            .flexible(true)
            .from_reader(input);
        let mut record = csv::StringRecord::new();
        let bad_csv = |loader: &Self, line: u64, reason: String| LoadError::BadCsv {
            path: loader.path.to_owned(),
            at: Position::Line(line),
            reason,
        };
        let mut header_seen = false;
        loop {
            let before = reader.position().clone();
            let more = reader.read_record(&mut record).map_err(|e| {
                let line = e.position().map_or(before.line(), csv::Position::line);
                bad_csv(self, line, e.to_string())
            })?;
            if !more {
                break;
            }
            let end = reader.position().byte() as usize;
            let raw = &input[before.byte() as usize..end];
            let line = before.line() + blank_lines_before(raw);
            if let Some(reason) = unpaired_quote(raw, end == input.len()) {
                return Err(bad_csv(self, line, reason.to_owned()));
            }
            if !header_seen {
                header_seen = true;
                if record.len() != 2 || &record[0] != "key" || &record[1] != "value" {
                    return Err(bad_csv(
                        self,
                        line,
                        "the first line must be the header `key,value`".to_owned(),
                    ));
                }
                continue;
            }
            if record.len() != 2 {
                return Err(bad_csv(
                    self,
                    line,
                    format!("expected 2 fields (key,value), found {}", record.len()),
                ));
            }
            self.builder.values.push_str(&record[1]);
            self.add_pair(&record[0], PairAt::Line(line))?;
        }
        if !header_seen {
            return Err(bad_csv(
                self,
                1,
                "the file is empty: expected the header `key,value`".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Why the record `raw` (the file's last if `last`) is malformed, if its quotes do not pair.
/// The csv crate reads malformed quoting leniently: a quote that is never closed would swallow
/// every later record into one value. A well-formed record holds an even number of quotes
/// (pairs around fields, `""` inside them).
fn unpaired_quote(raw: &[u8], last: bool) -> Option<&'static str> {
    if raw.iter().filter(|&&b| b == b'"').count() % 2 == 0 {
        return None;
    }
    Some(if last {
        "a quoted field is never closed"
    } else {
        "a quote inside an unquoted field (quote the whole field and double the quote)"
    })
}

/// Blank lines the csv crate skipped before the record in `raw`: its reader's position is
/// where it stood before them.
fn blank_lines_before(raw: &[u8]) -> u64 {
    raw.iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .filter(|&&b| b == b'\n')
        .count() as u64
}
