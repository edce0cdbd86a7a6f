//! The `.jsonl`/`.ndjson` reader: one `{"key": ..., "value": ...}` object a line, read with
//! kv's strict JSON [`Reader`]; errors name the line. Touches only the [`Loader`].

use super::error::LoadError;
use super::loader::Loader;
use super::position::{PairAt, Position};
use crate::kv::json::{Reader, SyntaxError};

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
}

#[derive(Clone, Copy)]
enum Field {
    Key,
    Value,
    Other,
}
