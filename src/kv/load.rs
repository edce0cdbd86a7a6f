//! Dataset files to a [`Dataset`]: the format by extension (`.json`, `.jsonl`/`.ndjson`, `.csv`),
//! and every failure as a [`LoadError`] naming the file, the position and the reason.
//!
//! The whole file is read and checked as UTF-8 at once (std's validator runs at several GB/s),
//! then parsed in one pass that decodes each value straight into the dataset's arena.

use std::fmt;
use std::path::{Path, PathBuf};

use super::dataset::{Dataset, DatasetBuilder, DuplicateKey, MAX_VALUE_BYTES};
use super::json::{Reader, SyntaxError};
use super::parse_uuid_v4;
use super::uuid_v4::format_uuid;

/// Where in a file something went wrong. Lines and columns count from 1; columns count
/// characters; `byte` is the offset from the start of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A whole line: a JSON Lines or CSV record.
    Line(u64),
    /// A point in the text.
    Offset { line: u64, column: u64, byte: u64 },
    /// A byte offset alone (when the text could not be read again to count lines).
    Byte(u64),
}

impl Position {
    /// Line, column and byte offset of `offset` in `text` (scans the text: error paths only).
    fn of_offset(text: &str, offset: usize) -> Self {
        let before = &text.as_bytes()[..offset];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count() as u64
            + 1;
        Position::Offset {
            line,
            column,
            byte: offset as u64,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(line) => write!(f, "line {line}"),
            Position::Byte(byte) => write!(f, "byte offset {byte}"),
            Position::Offset { line, column, byte } => {
                write!(f, "line {line}, column {column} (byte offset {byte})")
            }
        }
    }
}

/// Why a dataset file could not be loaded. Display: `<file>: <position>: <reason>`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read the dataset file: {reason}", path.display())]
    Read {
        path: PathBuf,
        /// Not a `#[source]`: the message already says it, and error reports that walk the
        /// source chain would say it twice.
        reason: std::io::Error,
    },
    #[error(
        "{}: unknown dataset format: the file name must end in .json, .jsonl, .ndjson or .csv",
        path.display()
    )]
    UnknownExtension { path: PathBuf },
    #[error("{}: {at}: the file is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf, at: Position },
    #[error("{}: {at}: bad JSON: {reason}", path.display())]
    BadJson {
        path: PathBuf,
        at: Position,
        reason: &'static str,
    },
    #[error("{}: {at}: bad CSV: {reason}", path.display())]
    BadCsv {
        path: PathBuf,
        at: Position,
        reason: String,
    },
    #[error("{}: {at}: key {key:?} is not a UUID version 4", path.display())]
    KeyNotUuidV4 {
        path: PathBuf,
        at: Position,
        key: String,
    },
    #[error("{}: {at}: duplicate key {key}, first seen at {first}", path.display())]
    DuplicateKey {
        path: PathBuf,
        at: Position,
        first: Position,
        key: String,
    },
    #[error("{}: {at}: the value of key {key:?} is not a string", path.display())]
    ValueNotString {
        path: PathBuf,
        at: Position,
        key: String,
    },
    #[error(
        "{}: {at}: dataset too large: values may total at most {MAX_VALUE_BYTES} bytes",
        path.display()
    )]
    TooLarge { path: PathBuf, at: Position },
}

/// The dataset file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One object `{"<uuid>": "<value>", ...}`.
    Json,
    /// One `{"key": "<uuid>", "value": "<value>"}` a line; blank lines ignored.
    JsonLines,
    /// RFC 4180 with a `key,value` header.
    Csv,
}

impl Format {
    pub(crate) fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// Bytes a single `read` system call may copy in [`read_in_slices`].
const READ_SLICE_BYTES: usize = 1 << 20;

/// The whole file, read [`READ_SLICE_BYTES`] at a time. `std::fs::read` asks for it in one
/// `read`, and the kernel copies large page-cache folios in batches of tens of MB between two
/// reschedule points: on a kernel without forced preemption (PREEMPT_NONE) a serving core
/// that wakes meanwhile waits for the copy, even behind a SCHED_IDLE reload thread. 1 MiB is
/// ~0.1 ms of copying.
fn read_in_slices(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata().map_or(0, |m| m.len() as usize);
    let mut bytes = Vec::with_capacity(size);
    // `take` caps each `read` at the slice; `read_to_end` fills the spare capacity without
    // zeroing it, and probes with a small buffer before growing past the file's size.
    while (&mut file)
        .take(READ_SLICE_BYTES as u64)
        .read_to_end(&mut bytes)?
        > 0
    {}
    Ok(bytes)
}

/// Loads a dataset file; the format comes from its extension.
pub fn load(path: &Path) -> Result<Dataset, LoadError> {
    let format = Format::of(path).ok_or_else(|| LoadError::UnknownExtension {
        path: path.to_owned(),
    })?;
    let bytes = read_in_slices(path).map_err(|reason| LoadError::Read {
        path: path.to_owned(),
        reason,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.valid_up_to();
            // The prefix is valid UTF-8, so the position can be computed on it.
            let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            return Err(LoadError::NotUtf8 {
                path: path.to_owned(),
                at: Position::of_offset(prefix, valid),
            });
        }
    };
    let mut loader = Loader {
        path,
        text,
        builder: DatasetBuilder::new(),
        positions: Vec::new(),
    };
    // A UTF-8 byte order mark is not data.
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    match format {
        Format::Json => loader.json(start)?,
        Format::JsonLines => loader.json_lines(start)?,
        Format::Csv => loader.csv(start)?,
    }
    let Loader {
        builder, positions, ..
    } = loader;
    // The text is only needed again to place a duplicate, which reads the file anew; freeing it
    // first keeps the peak at about the file size plus the dataset.
    drop(bytes);
    builder
        .finish()
        .map_err(|DuplicateKey { first, second, key }| {
            let position = pair_position(path, format, &positions);
            LoadError::DuplicateKey {
                path: path.to_owned(),
                at: position(second),
                first: position(first),
                key: key_text(key),
            }
        })
}

/// Maps a pair index to its position, for a duplicate found after the text was freed.
fn pair_position<'p>(
    path: &Path,
    format: Format,
    positions: &'p [u64],
) -> impl Fn(usize) -> Position + 'p {
    // A `.json` position is a byte offset: line and column need the text (read again; if that
    // fails, the offset alone still places the pair).
    let text = (format == Format::Json)
        .then(|| {
            std::fs::read(path)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
        })
        .flatten();
    move |pair| {
        let at = positions[pair];
        match (format, &text) {
            (Format::Json, Some(text)) => Position::of_offset(text, at as usize),
            (Format::Json, None) => Position::Byte(at),
            _ => Position::Line(at),
        }
    }
}

/// Where a pair was found, kept per pair so a duplicate can say where its twin was.
#[derive(Debug, Clone, Copy)]
enum PairAt {
    /// Byte offset of the key (`.json`).
    Byte(usize),
    /// Line of the record (`.jsonl`, `.csv`).
    Line(u64),
}

impl PairAt {
    fn position(self, text: &str) -> Position {
        match self {
            PairAt::Byte(offset) => Position::of_offset(text, offset),
            PairAt::Line(line) => Position::Line(line),
        }
    }

    fn raw(self) -> u64 {
        match self {
            PairAt::Byte(offset) => offset as u64,
            PairAt::Line(line) => line,
        }
    }
}

struct Loader<'a> {
    path: &'a Path,
    text: &'a str,
    builder: DatasetBuilder,
    /// Per pair: its key's byte offset (`.json`) or its line (`.jsonl`, `.csv`).
    positions: Vec<u64>,
}

impl Loader<'_> {
    fn bad_json(&self, at: Position, reason: &'static str) -> LoadError {
        LoadError::BadJson {
            path: self.path.to_owned(),
            at,
            reason,
        }
    }

    /// Checks the key text and records the pair whose value was just appended to the arena.
    fn add_pair(&mut self, key_text: &str, at: PairAt) -> Result<(), LoadError> {
        let Some(key) = parse_uuid_v4(key_text) else {
            return Err(LoadError::KeyNotUuidV4 {
                path: self.path.to_owned(),
                at: at.position(self.text),
                key: key_text.to_owned(),
            });
        };
        self.builder
            .push_key(key)
            .map_err(|_| LoadError::TooLarge {
                path: self.path.to_owned(),
                at: at.position(self.text),
            })?;
        self.positions.push(at.raw());
        Ok(())
    }

    /// `{"<uuid>": "<value>", ...}`.
    fn json(&mut self, start: usize) -> Result<(), LoadError> {
        let text = self.text;
        let mut reader = Reader::new(text, start);
        let mut scratch = String::new();
        let syntax = |loader: &Self, e: SyntaxError| {
            loader.bad_json(Position::of_offset(text, e.at), e.reason)
        };
        reader.skip_whitespace();
        reader
            .expect(b'{', "expected '{': the file must hold one JSON object")
            .map_err(|e| syntax(self, e))?;
        reader.skip_whitespace();
        if reader.peek() == Some(b'}') {
            reader.expect(b'}', "").map_err(|e| syntax(self, e))?;
        } else {
            loop {
                let key_at = reader.pos();
                let key = reader
                    .string(&mut scratch)
                    .map_err(|e| syntax(self, e))?
                    .to_owned();
                reader.skip_whitespace();
                reader
                    .expect(b':', "expected ':' after the key")
                    .map_err(|e| syntax(self, e))?;
                reader.skip_whitespace();
                self.value(&mut reader, &key, text)?;
                self.add_pair(&key, PairAt::Byte(key_at))?;
                reader.skip_whitespace();
                match reader.peek() {
                    Some(b',') => {
                        reader.expect(b',', "").map_err(|e| syntax(self, e))?;
                        reader.skip_whitespace();
                    }
                    Some(b'}') => {
                        reader.expect(b'}', "").map_err(|e| syntax(self, e))?;
                        break;
                    }
                    _ => {
                        return Err(syntax(
                            self,
                            reader.error("expected ',' or '}' after a value"),
                        ))
                    }
                }
            }
        }
        reader.skip_whitespace();
        if !reader.at_end() {
            return Err(syntax(
                self,
                reader.error("unexpected data after the object"),
            ));
        }
        Ok(())
    }

    /// Decodes a string value into the arena, or explains why the value is not one.
    fn value(&mut self, reader: &mut Reader<'_>, key: &str, text: &str) -> Result<(), LoadError> {
        if reader.peek() == Some(b'"') {
            return reader.string_into(&mut self.builder.values).map_err(|e| {
                self.builder.discard_pending_value();
                self.bad_json(Position::of_offset(text, e.at), e.reason)
            });
        }
        let at = Position::of_offset(text, reader.pos());
        if reader.at_value_start() {
            Err(LoadError::ValueNotString {
                path: self.path.to_owned(),
                at,
                key: key.to_owned(),
            })
        } else {
            Err(self.bad_json(at, "expected a value"))
        }
    }

    /// One `{"key": ..., "value": ...}` a line; other fields are ignored; blank lines skipped.
    fn json_lines(&mut self, start: usize) -> Result<(), LoadError> {
        let text = self.text;
        let mut scratch = String::new();
        let mut key = String::new();
        let mut line_start = start;
        let mut line_number = 0_u64;
        while line_start < text.len() {
            line_number += 1;
            let line_end = text[line_start..]
                .find('\n')
                .map_or(text.len(), |i| line_start + i);
            let line = &text[..line_end];
            let mut reader = Reader::new(line, line_start);
            line_start = line_end + 1;
            let at = PairAt::Line(line_number);
            let syntax = |e: SyntaxError| (Position::of_offset(text, e.at), e.reason);
            reader.skip_whitespace();
            if reader.at_end() {
                continue;
            }
            let fail = |loader: &mut Self, (position, reason)| {
                loader.builder.discard_pending_value();
                loader.bad_json(position, reason)
            };
            let mut have_key = false;
            let mut have_value = false;
            reader
                .expect(b'{', "expected '{': each line must hold one JSON object")
                .map_err(|e| fail(self, syntax(e)))?;
            reader.skip_whitespace();
            if reader.peek() != Some(b'}') {
                loop {
                    let field = reader
                        .string(&mut scratch)
                        .map_err(|e| fail(self, syntax(e)))?;
                    let field = match field {
                        "key" => Field::Key,
                        "value" => Field::Value,
                        _ => Field::Other,
                    };
                    reader.skip_whitespace();
                    reader
                        .expect(b':', "expected ':' after a field name")
                        .map_err(|e| fail(self, syntax(e)))?;
                    reader.skip_whitespace();
                    match field {
                        Field::Key if have_key => {
                            return Err(fail(self, syntax(reader.error("\"key\" appears twice"))))
                        }
                        Field::Value if have_value => {
                            return Err(fail(self, syntax(reader.error("\"value\" appears twice"))))
                        }
                        Field::Key => {
                            if reader.peek() != Some(b'"') {
                                return Err(fail(
                                    self,
                                    syntax(reader.error("\"key\" is not a string")),
                                ));
                            }
                            key.clear();
                            reader
                                .string_into(&mut key)
                                .map_err(|e| fail(self, syntax(e)))?;
                            have_key = true;
                        }
                        Field::Value => {
                            if reader.peek() != Some(b'"') {
                                let error = if reader.at_value_start() {
                                    LoadError::ValueNotString {
                                        path: self.path.to_owned(),
                                        at: Position::Line(line_number),
                                        key: key.clone(),
                                    }
                                } else {
                                    fail(self, syntax(reader.error("expected a value")))
                                };
                                self.builder.discard_pending_value();
                                return Err(error);
                            }
                            reader
                                .string_into(&mut self.builder.values)
                                .map_err(|e| fail(self, syntax(e)))?;
                            have_value = true;
                        }
                        Field::Other => reader
                            .skip_value(&mut scratch)
                            .map_err(|e| fail(self, syntax(e)))?,
                    }
                    reader.skip_whitespace();
                    match reader.peek() {
                        Some(b',') => {
                            reader.expect(b',', "").map_err(|e| fail(self, syntax(e)))?;
                            reader.skip_whitespace();
                        }
                        Some(b'}') => break,
                        _ => {
                            return Err(fail(
                                self,
                                syntax(reader.error("expected ',' or '}' after a value")),
                            ))
                        }
                    }
                }
            }
            reader
                .expect(b'}', "expected '}'")
                .map_err(|e| fail(self, syntax(e)))?;
            reader.skip_whitespace();
            if !reader.at_end() {
                return Err(fail(
                    self,
                    syntax(reader.error("unexpected data after the object")),
                ));
            }
            if !have_key || !have_value {
                let reason = if have_key {
                    "the object has no \"value\" field"
                } else {
                    "the object has no \"key\" field"
                };
                self.builder.discard_pending_value();
                return Err(self.bad_json(Position::Line(line_number), reason));
            }
            self.add_pair(&key, at)?;
        }
        Ok(())
    }

    /// RFC 4180 records after a `key,value` header, read by the `csv` crate.
    fn csv(&mut self, start: usize) -> Result<(), LoadError> {
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
            // The csv crate reads malformed quoting leniently: a quote that is never closed
            // would swallow every later record into one value. A well-formed record holds an
            // even number of quotes (pairs around fields, `""` inside them).
            if raw.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                let reason = if end == input.len() {
                    "a quoted field is never closed"
                } else {
                    "a quote inside an unquoted field (quote the whole field and double the quote)"
                };
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

/// Blank lines the csv crate skipped before the record in `raw`: its reader's position is
/// where it stood before them.
fn blank_lines_before(raw: &[u8]) -> u64 {
    raw.iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .filter(|&&b| b == b'\n')
        .count() as u64
}

#[derive(Clone, Copy)]
enum Field {
    Key,
    Value,
    Other,
}

/// A key as lower-case hyphenated text, for messages.
fn key_text(key: u128) -> String {
    String::from_utf8_lossy(&format_uuid(key)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_files::TestDir;

    const K1: &str = "8a35eb59-62b3-481c-8875-1f248df4c952";
    const K2: &str = "0f6c4d4e-2b55-4d0b-9a43-64d6e0a5e3b1";
    const V1_NOT_V4: &str = "c232ab00-9414-11ec-b3c8-9f6bdeced846";

    fn pairs(dataset: &Dataset) -> Vec<(String, String)> {
        dataset
            .iter()
            .map(|(k, v)| (key_text(k), v.to_owned()))
            .collect()
    }

    fn load_text(name: &str, contents: &str) -> Result<Vec<(String, String)>, String> {
        let dir = TestDir::new();
        load(&dir.file(name, contents))
            .map(|d| pairs(&d))
            .map_err(|e| e.to_string())
    }

    fn error(name: &str, contents: &str) -> String {
        load_text(name, contents).expect_err("must fail")
    }

    fn expected() -> Vec<(String, String)> {
        vec![
            (K1.to_owned(), "lunmtp ftxemjfob pmo hwoya".to_owned()),
            (K2.to_owned(), "a, \"b\"\nc 😀".to_owned()),
        ]
    }

    #[test]
    fn a_file_of_many_read_slices_is_read_whole() {
        let dir = TestDir::new();
        let contents: Vec<u8> = (0..READ_SLICE_BYTES * 5 / 2 + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        let path = dir.file("big.bin", &contents);
        assert_eq!(read_in_slices(&path).expect("read"), contents);
        let empty = dir.file("empty.bin", b"");
        assert!(read_in_slices(&empty).expect("read").is_empty());
    }

    #[test]
    fn json_object_loads_in_file_order() {
        let text = format!(
            "\u{feff}{{\"{K1}\": \"lunmtp ftxemjfob pmo hwoya\",\n \"{}\" : \"a, \\\"b\\\"\\nc \\ud83d\\ude00\"}}\n",
            K2.to_uppercase()
        );
        assert_eq!(load_text("d.json", &text), Ok(expected()));
        assert_eq!(load_text("empty.json", " {} "), Ok(vec![]));
    }

    #[test]
    fn json_lines_load_ignoring_blank_lines_and_extra_fields() {
        let text = format!(
            "{{\"key\": \"{K1}\", \"value\": \"lunmtp ftxemjfob pmo hwoya\"}}\n\n   \r\n\
             {{\"value\": \"a, \\\"b\\\"\\nc 😀\", \"n\": [1, {{\"x\": null}}], \"key\": \"{K2}\"}}\r\n"
        );
        assert_eq!(load_text("d.jsonl", &text), Ok(expected()));
        assert_eq!(load_text("d.ndjson", &text), Ok(expected()));
    }

    #[test]
    fn csv_loads_quoted_values() {
        let text = format!(
            "key,value\r\n{K1},lunmtp ftxemjfob pmo hwoya\r\n{K2},\"a, \"\"b\"\"\nc 😀\"\r\n"
        );
        assert_eq!(load_text("d.csv", &text), Ok(expected()));
        assert_eq!(load_text("header-only.csv", "key,value"), Ok(vec![]));
    }

    #[test]
    fn missing_file_names_the_file() {
        let dir = TestDir::new();
        let message = load(&dir.path("absent.json"))
            .expect_err("missing")
            .to_string();
        assert!(message.contains("absent.json: cannot read"), "{message}");
        assert!(message.contains("No such file"), "{message}");
    }

    #[test]
    fn unknown_extension_is_an_error() {
        let message = error("data.txt", "{}");
        assert!(
            message.contains("data.txt: unknown dataset format"),
            "{message}"
        );
    }

    #[test]
    fn invalid_utf8_reports_its_position() {
        let dir = TestDir::new();
        let path = dir.file("bad.json", b"{\n  \"ab\xff");
        let message = load(&path).expect_err("not UTF-8").to_string();
        assert!(
            message.ends_with(
                "bad.json: line 2, column 6 (byte offset 7): the file is not valid UTF-8"
            ),
            "{message}"
        );
    }

    #[test]
    fn bad_json_reports_line_column_and_byte() {
        let message = error("d.json", &format!("{{\"{K1}\": \"v\",\n \"{K2}\" \"v\"}}"));
        assert!(
            message.ends_with(
                "d.json: line 2, column 41 (byte offset 86): bad JSON: expected ':' after the key"
            ),
            "{message}"
        );
        let message = error("d.json", "[]");
        assert!(
            message.contains("line 1, column 1 (byte offset 0): bad JSON: expected '{'"),
            "{message}"
        );
        let message = error("d.json", &format!("{{\"{K1}\": \"v\",}}"));
        assert!(
            message.contains("column 46 (byte offset 45): bad JSON: expected a string"),
            "{message}"
        );
        let message = error("d.json", &format!("{{\"{K1}\": \"v\"}} x"));
        assert!(
            message.contains("bad JSON: unexpected data after the object"),
            "{message}"
        );
        let message = error("d.json", &format!("{{\"{K1}\": \"v"));
        assert!(
            message.contains("bad JSON: unterminated string"),
            "{message}"
        );
    }

    #[test]
    fn key_that_is_not_uuid_v4_is_reported_with_its_position() {
        let message = error(
            "d.json",
            &format!("{{\"{K1}\": \"v\",\n\"{V1_NOT_V4}\": \"w\"}}"),
        );
        assert!(
            message.ends_with(&format!(
                "d.json: line 2, column 1 (byte offset 46): key \"{V1_NOT_V4}\" is not a UUID version 4"
            )),
            "{message}"
        );
        let message = error(
            "d.jsonl",
            &format!("{{\"key\":\"{K1}\",\"value\":\"v\"}}\n{{\"key\":\"nope\",\"value\":\"v\"}}"),
        );
        assert!(
            message.ends_with("d.jsonl: line 2: key \"nope\" is not a UUID version 4"),
            "{message}"
        );
        let message = error("d.csv", &format!("key,value\n{K1},v\n{V1_NOT_V4},w\n"));
        assert!(
            message.ends_with(
                "line 3: key \"c232ab00-9414-11ec-b3c8-9f6bdeced846\" is not a UUID version 4"
            ),
            "{message}"
        );
    }

    #[test]
    fn duplicate_key_reports_both_positions() {
        // Upper and lower case are the same key.
        let message = error(
            "d.json",
            &format!(
                "{{\"{K1}\": \"a\",\n\"{K2}\": \"b\",\n\"{}\": \"c\"}}",
                K1.to_uppercase()
            ),
        );
        assert!(
            message.ends_with(&format!(
                "d.json: line 3, column 1 (byte offset 91): duplicate key {K1}, first seen at line 1, column 2 (byte offset 1)"
            )),
            "{message}"
        );
        let message = error(
            "d.jsonl",
            &format!(
                "{{\"key\":\"{K1}\",\"value\":\"a\"}}\n\n{{\"key\":\"{K1}\",\"value\":\"b\"}}\n"
            ),
        );
        assert!(
            message.ends_with(&format!(
                "d.jsonl: line 3: duplicate key {K1}, first seen at line 1"
            )),
            "{message}"
        );
        let message = error("d.csv", &format!("key,value\n{K1},\"a\nb\"\n{K1},c\n"));
        assert!(
            message.ends_with(&format!(
                "d.csv: line 4: duplicate key {K1}, first seen at line 2"
            )),
            "{message}"
        );
    }

    #[test]
    fn value_that_is_not_a_string_is_reported() {
        let message = error("d.json", &format!("{{\n\"{K1}\": 42}}"));
        assert!(
            message.ends_with(&format!(
                "d.json: line 2, column 41 (byte offset 42): the value of key \"{K1}\" is not a string"
            )),
            "{message}"
        );
        let message = error("d.jsonl", &format!("\n{{\"key\":\"{K1}\",\"value\":null}}"));
        assert!(
            message.ends_with(&format!(
                "d.jsonl: line 2: the value of key \"{K1}\" is not a string"
            )),
            "{message}"
        );
    }

    #[test]
    fn json_lines_record_errors_name_the_line() {
        let message = error("d.jsonl", &format!("{{\"key\":\"{K1}\"}}"));
        assert!(
            message.ends_with("d.jsonl: line 1: bad JSON: the object has no \"value\" field"),
            "{message}"
        );
        let message = error("d.jsonl", "{\"value\":\"v\"}");
        assert!(
            message.ends_with("bad JSON: the object has no \"key\" field"),
            "{message}"
        );
        let message = error("d.jsonl", "\n{\"key\": 5, \"value\":\"v\"}");
        assert!(
            message.ends_with(
                "d.jsonl: line 2, column 9 (byte offset 9): bad JSON: \"key\" is not a string"
            ),
            "{message}"
        );
        let message = error(
            "d.jsonl",
            &format!("{{\"key\":\"{K1}\",\"value\":\"v\"}} {{}}"),
        );
        assert!(
            message.contains("bad JSON: unexpected data after the object"),
            "{message}"
        );
        let message = error("d.jsonl", "[1]");
        assert!(
            message.contains("line 1, column 1 (byte offset 0): bad JSON: expected '{'"),
            "{message}"
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let message = error("d.csv", "id,text\n");
        assert!(
            message
                .ends_with("d.csv: line 1: bad CSV: the first line must be the header `key,value`"),
            "{message}"
        );
        let message = error("d.csv", "");
        assert!(
            message.ends_with(
                "d.csv: line 1: bad CSV: the file is empty: expected the header `key,value`"
            ),
            "{message}"
        );
        let message = error("d.csv", &format!("key,value\n{K1},a,b\n"));
        assert!(
            message.ends_with("d.csv: line 2: bad CSV: expected 2 fields (key,value), found 3"),
            "{message}"
        );
        let message = error("d.csv", &format!("key,value\n{K1}\n"));
        assert!(
            message.ends_with("line 2: bad CSV: expected 2 fields (key,value), found 1"),
            "{message}"
        );
        let message = error(
            "d.csv",
            &format!("key,value\n{K1},\"never closed\n\n{K2},v\n"),
        );
        assert!(
            message.ends_with("line 2: bad CSV: a quoted field is never closed"),
            "{message}"
        );
        let message = error("d.csv", &format!("key,value\n{K1},5\" tall\n{K2},v\n"));
        assert!(
            message.ends_with("line 2: bad CSV: a quote inside an unquoted field (quote the whole field and double the quote)"),
            "{message}"
        );
    }

    #[test]
    fn csv_skips_a_byte_order_mark_and_blank_lines_and_counts_them() {
        let text = format!("\u{feff}key,value\r\n\r\n{K1},a\n\n\n{V1_NOT_V4},b\n");
        let message = error("d.csv", &text);
        assert!(
            message.ends_with(&format!(
                "d.csv: line 6: key \"{V1_NOT_V4}\" is not a UUID version 4"
            )),
            "{message}"
        );
        let text = format!("\u{feff}key,value\n\n{K1},a\n");
        assert_eq!(
            load_text("d.csv", &text),
            Ok(vec![(K1.to_owned(), "a".to_owned())])
        );
    }
}
