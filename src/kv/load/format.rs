//! The dataset file formats and how a file's name chooses one; shared by the loader and the
//! writer. Touches nothing but the path's extension.

use std::path::Path;

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
