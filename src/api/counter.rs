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
        counter::parse_by(request.body),
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
