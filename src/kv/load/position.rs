//! Where in a dataset file something is: [`Position`] for messages, [`PairAt`] kept per pair
//! while parsing, and [`pair_position`] to place a pair again once the text is freed. Touches
//! only the file's text (and reads the file anew to place a `.json` duplicate).

use std::fmt;
use std::path::Path;

use super::format::Format;

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
    pub(super) fn of_offset(text: &str, offset: usize) -> Self {
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

/// Maps a pair index to its position, for a duplicate found after the text was freed.
pub(super) fn pair_position<'p>(
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
pub(super) enum PairAt {
    /// Byte offset of the key (`.json`).
    Byte(usize),
    /// Line of the record (`.jsonl`, `.csv`).
    Line(u64),
}

impl PairAt {
    pub(super) fn position(self, text: &str) -> Position {
        match self {
            PairAt::Byte(offset) => Position::of_offset(text, offset),
            PairAt::Line(line) => Position::Line(line),
        }
    }

    pub(super) fn raw(self) -> u64 {
        match self {
            PairAt::Byte(offset) => offset as u64,
            PairAt::Line(line) => line,
        }
    }
}
