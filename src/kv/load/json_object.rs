//! The `.json` reader: one object `{"<uuid>": "<value>", ...}`, read with kv's strict JSON
//! [`Reader`] and decoded straight into the dataset's arena. Touches only the [`Loader`].

use super::error::LoadError;
use super::loader::Loader;
use super::position::{PairAt, Position};
use crate::kv::json::Reader;

impl Loader<'_> {
    /// `{"<uuid>": "<value>", ...}`.
    pub(super) fn json(&mut self, start: usize) -> Result<(), LoadError> {
        let text = self.text;
        let mut reader = Reader::new(text, start);
        let mut scratch = String::new();
        reader.skip_whitespace();
        reader
            .expect(b'{', "expected '{': the file must hold one JSON object")
            .map_err(|e| self.syntax_error(e))?;
        reader.skip_whitespace();
        if reader.peek() == Some(b'}') {
            reader.expect(b'}', "").map_err(|e| self.syntax_error(e))?;
        } else {
            loop {
                let key_at = reader.pos();
                let key = reader
                    .string(&mut scratch)
                    .map_err(|e| self.syntax_error(e))?
                    .to_owned();
                reader.skip_whitespace();
                reader
                    .expect(b':', "expected ':' after the key")
                    .map_err(|e| self.syntax_error(e))?;
                reader.skip_whitespace();
                self.value(&mut reader, &key, text)?;
                self.add_pair(&key, PairAt::Byte(key_at))?;
                reader.skip_whitespace();
                match reader.peek() {
                    Some(b',') => {
                        reader.expect(b',', "").map_err(|e| self.syntax_error(e))?;
                        reader.skip_whitespace();
                    }
                    Some(b'}') => {
                        reader.expect(b'}', "").map_err(|e| self.syntax_error(e))?;
                        break;
                    }
                    _ => {
                        return Err(
                            self.syntax_error(reader.error("expected ',' or '}' after a value"))
                        )
                    }
                }
            }
        }
        reader.skip_whitespace();
        if !reader.at_end() {
            return Err(self.syntax_error(reader.error("unexpected data after the object")));
        }
        Ok(())
    }

    /// Decodes a string value into the arena, or explains why the value is not one.
    fn value(&mut self, reader: &mut Reader<'_>, key: &str, text: &str) -> Result<(), LoadError> {
        if reader.peek() == Some(b'"') {
            return reader.string_into(&mut self.builder.values).map_err(|e| {
                self.builder.discard_pending_value();
                self.syntax_error(e)
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
}
