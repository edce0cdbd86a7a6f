//! [`LoadError`]: why a dataset file could not be loaded, naming the file, the position and
//! the reason. Pure data and its messages; touches nothing else.

use std::path::PathBuf;

use super::position::Position;
use crate::kv::dataset::MAX_VALUE_BYTES;
use crate::kv::uuid_v4::format_uuid;

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

/// A key as lower-case hyphenated text, for messages.
pub(super) fn key_text(key: u128) -> String {
    String::from_utf8_lossy(&format_uuid(key)).into_owned()
}
