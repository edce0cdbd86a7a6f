//! `/api/v1/counter`: GET reads the count; POST increments it by 1 or by `{"by": n}`, once per
//! `Idempotency-Key` when one is sent, and is answered after the commit with `{"count": N}`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::counter::{self, CommitError, KeyOutcome, KeyedTicket, Ticket};
use crate::http::Status;

use super::{message, App, Reply, Request, Response};

/// The request's `Idempotency-Key` field, as the head found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyField<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

/// Longest Idempotency-Key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotency-Replayed: true";

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

/// An increment waiting for its commit: a future of its outcome, which then
/// [responds](Committed::respond).
pub enum Pending {
    Plain(Ticket),
    Keyed(KeyedTicket),
}

/// What became of an increment.
pub enum Committed {
    Plain(Result<i64, CommitError>),
    Keyed(Result<KeyOutcome, CommitError>),
}

impl Future for Pending {
    type Output = Committed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Committed> {
        match self.get_mut() {
            Pending::Plain(ticket) => Pin::new(ticket).poll(cx).map(Committed::Plain),
            Pending::Keyed(ticket) => Pin::new(ticket).poll(cx).map(Committed::Keyed),
        }
    }
}

impl Committed {
    /// Writes the response's body into `out`.
    pub fn respond(self, out: &mut Vec<u8>) -> Response {
        match self {
            Committed::Plain(result) => committed(result, out),
            Committed::Keyed(result) => keyed_committed(result, out),
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

/// The response to a committed (or failed) increment.
pub(super) fn committed(result: Result<i64, CommitError>, out: &mut Vec<u8>) -> Response {
    match result {
        Ok(count) => count_body(out, count),
        Err(err) => {
            log::debug!("increment not confirmed: {err}");
            message(
                out,
                Status::ServiceUnavailable,
                "the increment was not confirmed by the store",
            )
        }
    }
}

/// The response to a keyed increment: a replay is marked with [`REPLAYED_HEADER`].
pub(super) fn keyed_committed(
    result: Result<KeyOutcome, CommitError>,
    out: &mut Vec<u8>,
) -> Response {
    match result {
        Ok(KeyOutcome::Counted(count)) => count_body(out, count),
        Ok(KeyOutcome::Replayed(count)) => Response {
            extra_header: Some(REPLAYED_HEADER),
            ..count_body(out, count)
        },
        Ok(KeyOutcome::Mismatch) => message(
            out,
            Status::UnprocessableContent,
            "this Idempotency-Key was used with another body (by)",
        ),
        Err(err) => committed(Err(err), out),
    }
}

fn count_body(out: &mut Vec<u8>, count: i64) -> Response {
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.push(b'}');
    Response::json(Status::Ok)
}
