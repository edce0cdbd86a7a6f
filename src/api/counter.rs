//! `/api/v1/counter`: GET reads the count; POST increments it by 1 or by `{"by": n}`, once per
//! `Idempotency-Key` when one is sent, and is answered after the commit with `{"count": N}`.

use crate::counter;
use crate::http::Status;

use super::app::App;
use super::pending::{count_body, Pending};
use super::reply::{KeyField, Reply, Request};
use super::response::{message, Response};

/// Longest Idempotency-Key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// `GET /api/v1/counter`: this core's view of the count (never below a value it answered).
pub fn get(app: &App, out: &mut Vec<u8>) -> Response {
    match app.instance.counter.current() {
        Some(count) => count_body(out, count),
        None => message(
            out,
            Status::ServiceUnavailable,
            "the count is not known yet: the store is unavailable",
        ),
    }
}

/// `POST /api/v1/counter`: a 400 now, or an increment whose answer waits for its commit.
pub fn increment(app: &App, request: Request<'_>, out: &mut Vec<u8>) -> Reply {
    match (
        parse_by(request.body),
        idempotency_key(request.idempotency_key),
    ) {
        (Err(msg), _) | (_, Err(msg)) => Reply::Now(message(out, Status::BadRequest, msg)),
        (Ok(by), Ok(None)) => Reply::Later(Pending::Plain(app.counter.increment(by))),
        (Ok(by), Ok(Some(key))) => {
            Reply::Later(Pending::Keyed(app.counter.increment_keyed(by, key)))
        }
    }
}

/// A key is 1..=255 visible ASCII characters (0x21..=0x7E), compared byte for byte: the
/// draft's quoted sf-string form `"abc"` is accepted as is, quotes included.
pub(super) fn idempotency_key(key: KeyField<'_>) -> Result<Option<&str>, &'static str> {
    match key {
        KeyField::Absent => Ok(None),
        KeyField::Repeated => Err("send one Idempotency-Key field, not several"),
        KeyField::One(bytes) => {
            let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
            if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES || !visible {
                return Err("Idempotency-Key must be 1 to 255 visible ASCII characters");
            }
            // Visible ASCII is UTF-8.
            std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| "Idempotency-Key must be visible ASCII")
        }
    }
}

/// Parses a POST /api/v1/counter body: empty means 1; otherwise a JSON object whose optional
/// `by` is an integer in 1..=2^31-1 (other fields are ignored).
pub fn parse_by(body: &mut [u8]) -> Result<i64, &'static str> {
    use simd_json::prelude::*;
    if body.is_empty() {
        return Ok(1);
    }
    let value = simd_json::to_borrowed_value(body).map_err(|_| "body is not valid JSON")?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    let Some(by) = object.get("by") else {
        return Ok(1);
    };
    let n = by
        .as_i64()
        .filter(|_| by.is_i64() || by.is_u64())
        .ok_or("by must be an integer")?;
    if !(1..=counter::MAX_BY).contains(&n) {
        return Err("by must be an integer from 1 to 2147483647");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::parse_by;

    fn by(s: &str) -> Result<i64, &'static str> {
        parse_by(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn empty_body_and_empty_object_increment_by_one() {
        assert_eq!(by(""), Ok(1));
        assert_eq!(by("{}"), Ok(1));
        assert_eq!(by(r#"{"other": true}"#), Ok(1));
    }

    #[test]
    fn by_accepts_one_to_i32_max() {
        assert_eq!(by(r#"{"by": 1}"#), Ok(1));
        assert_eq!(by(r#"{"by": 2147483647}"#), Ok(2_147_483_647));
    }

    #[test]
    fn by_rejects_zero_negative_too_large_and_non_integers() {
        for body in [
            r#"{"by": 0}"#,
            r#"{"by": -1}"#,
            r#"{"by": 2147483648}"#,
            r#"{"by": 1.5}"#,
            r#"{"by": 1.0}"#,
            r#"{"by": "3"}"#,
            r#"{"by": null}"#,
            r#"{"by": 18446744073709551615}"#,
            "[1]",
            "7",
            "{",
            " ",
        ] {
            assert!(by(body).is_err(), "{body} was accepted");
        }
    }
}
