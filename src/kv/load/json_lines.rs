//! The `.jsonl`/`.ndjson` reader: one `{"key": ..., "value": ...}` object a line, read with
//! kv's strict JSON [`Reader`]; errors name the line. Touches only the [`Loader`].

use super::error::LoadError;
use super::loader::Loader;
use super::position::{PairAt, Position};
use crate::kv::json::Reader;

impl Loader<'_> {
    /// One `{"key": ..., "value": ...}` a line; other fields are ignored; blank lines skipped.
    pub(super) fn json_lines(&mut self, start: usize) -> Result<(), LoadError> {
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
            let mut reader = Reader::new(&text[..line_end], line_start);
            line_start = line_end + 1;
            reader.skip_whitespace();
            if reader.at_end() {
                continue;
            }
            if let Err(error) = self.line_object(&mut reader, line_number, &mut key, &mut scratch) {
                // A value half-decoded into the arena belongs to no pair.
                self.builder.discard_pending_value();
                return Err(error);
            }
            self.add_pair(&key, PairAt::Line(line_number))?;
        }
        Ok(())
    }

    /// One line's object, from its `{` to the end of the line: its "key" into `key`, its
    /// "value" appended to the arena, other fields skipped.
    fn line_object(
        &mut self,
        reader: &mut Reader<'_>,
        line_number: u64,
        key: &mut String,
        scratch: &mut String,
    ) -> Result<(), LoadError> {
        reader
            .expect(b'{', "expected '{': each line must hold one JSON object")
            .map_err(|e| self.syntax_error(e))?;
        reader.skip_whitespace();
        let (have_key, have_value) = if reader.peek() == Some(b'}') {
            (false, false)
        } else {
            self.line_fields(reader, line_number, key, scratch)?
        };
        reader
            .expect(b'}', "expected '}'")
            .map_err(|e| self.syntax_error(e))?;
        reader.skip_whitespace();
        if !reader.at_end() {
            return Err(self.syntax_error(reader.error("unexpected data after the object")));
        }
        if !have_key || !have_value {
            let reason = if have_key {
                "the object has no \"value\" field"
            } else {
                "the object has no \"key\" field"
            };
            return Err(self.bad_json(Position::Line(line_number), reason));
        }
        Ok(())
    }

    /// The object's fields, up to its closing `}` (not consumed): whether "key" and "value"
    /// were among them. Each may appear once.
    fn line_fields(
        &mut self,
        reader: &mut Reader<'_>,
        line_number: u64,
        key: &mut String,
        scratch: &mut String,
    ) -> Result<(bool, bool), LoadError> {
        let mut have_key = false;
        let mut have_value = false;
        loop {
            let field = match reader.string(scratch).map_err(|e| self.syntax_error(e))? {
                "key" => Field::Key,
                "value" => Field::Value,
                _ => Field::Other,
            };
            reader.skip_whitespace();
            reader
                .expect(b':', "expected ':' after a field name")
                .map_err(|e| self.syntax_error(e))?;
            reader.skip_whitespace();
            match field {
                Field::Key if have_key => {
                    return Err(self.syntax_error(reader.error("\"key\" appears twice")))
                }
                Field::Value if have_value => {
                    return Err(self.syntax_error(reader.error("\"value\" appears twice")))
                }
                Field::Key => {
                    if reader.peek() != Some(b'"') {
                        return Err(self.syntax_error(reader.error("\"key\" is not a string")));
                    }
                    key.clear();
                    reader.string_into(key).map_err(|e| self.syntax_error(e))?;
                    have_key = true;
                }
                Field::Value => {
                    self.line_value(reader, line_number, key)?;
                    have_value = true;
                }
                Field::Other => reader
                    .skip_value(scratch)
                    .map_err(|e| self.syntax_error(e))?,
            }
            reader.skip_whitespace();
            match reader.peek() {
                Some(b',') => {
                    reader.expect(b',', "").map_err(|e| self.syntax_error(e))?;
                    reader.skip_whitespace();
                }
                Some(b'}') => break,
                _ => {
                    return Err(self.syntax_error(reader.error("expected ',' or '}' after a value")))
                }
            }
        }
        Ok((have_key, have_value))
    }

    /// Decodes the "value" field into the arena, or explains why it is not a string. `key` is
    /// the last key read (for the message).
    fn line_value(
        &mut self,
        reader: &mut Reader<'_>,
        line_number: u64,
        key: &str,
    ) -> Result<(), LoadError> {
        if reader.peek() != Some(b'"') {
            return Err(if reader.at_value_start() {
                LoadError::ValueNotString {
                    path: self.path.to_owned(),
                    at: Position::Line(line_number),
                    key: key.to_owned(),
                }
            } else {
                self.syntax_error(reader.error("expected a value"))
            });
        }
        reader
            .string_into(&mut self.builder.values)
            .map_err(|e| self.syntax_error(e))
    }
}

#[derive(Clone, Copy)]
enum Field {
    Key,
    Value,
    Other,
}
