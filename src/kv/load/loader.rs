//! [`Loader`]: the state every format's reader shares while parsing one file (the text, the
//! dataset being built, each pair's position) and the step they all end with, adding a pair.
//! The readers (`json_object`, `json_lines`, `csv_records`) each add their method to it.

use std::path::Path;

use super::error::LoadError;
use super::position::{PairAt, Position};
use crate::kv::dataset::DatasetBuilder;
use crate::kv::json::SyntaxError;
use crate::kv::parse_uuid_v4;

pub(super) struct Loader<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    pub(super) builder: DatasetBuilder,
    /// Per pair: its key's byte offset (`.json`) or its line (`.jsonl`, `.csv`).
    pub(super) positions: Vec<u64>,
}

impl Loader<'_> {
    pub(super) fn bad_json(&self, at: Position, reason: &'static str) -> LoadError {
        LoadError::BadJson {
            path: self.path.to_owned(),
            at,
            reason,
        }
    }

    /// A syntax error of the JSON readers, placed by line and column.
    pub(super) fn syntax_error(&self, e: SyntaxError) -> LoadError {
        self.bad_json(Position::of_offset(self.text, e.at), e.reason)
    }

    /// Checks the key text and records the pair whose value was just appended to the arena.
    pub(super) fn add_pair(&mut self, key_text: &str, at: PairAt) -> Result<(), LoadError> {
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
}
