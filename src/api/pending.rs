//! An increment's answer, which waits for its commit: [`Pending`] is the future of its outcome,
//! [`Committed::respond`] writes the response (the count, a marked replay, or 503).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::counter::{named, CommitError, KeyOutcome, KeyedTicket, Ticket};
use crate::http::Status;

use super::response::{message, Response};

/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotency-Replayed: true";

/// An increment waiting for its commit: a future of its outcome, which then
/// [responds](Committed::respond).
pub enum Pending {
    Plain(Ticket),
    Keyed(KeyedTicket),
    /// An increment of a named counter.
    Named(named::NamedTicket),
    NamedKeyed(named::NamedKeyedTicket),
    /// A named counter's count read through its store.
    Read(named::Read),
    /// A named counter's deletion.
    Delete(named::Delete),
}

/// What became of an increment (or of a read or deletion that had to wait).
pub enum Committed {
    Plain(Result<i64, CommitError>),
    Keyed(Result<KeyOutcome, CommitError>),
    Named(Result<named::Counted, CommitError>),
    NamedKeyed(Result<named::KeyedCounted, CommitError>),
    Read(Result<i64, CommitError>),
    Delete(Result<Option<i64>, CommitError>),
}

impl Future for Pending {
    type Output = Committed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Committed> {
        match self.get_mut() {
            Pending::Plain(ticket) => Pin::new(ticket).poll(cx).map(Committed::Plain),
            Pending::Keyed(ticket) => Pin::new(ticket).poll(cx).map(Committed::Keyed),
            Pending::Named(ticket) => Pin::new(ticket).poll(cx).map(Committed::Named),
            Pending::NamedKeyed(ticket) => Pin::new(ticket).poll(cx).map(Committed::NamedKeyed),
            Pending::Read(read) => read.as_mut().poll(cx).map(Committed::Read),
            Pending::Delete(delete) => delete.as_mut().poll(cx).map(Committed::Delete),
        }
    }
}

impl Committed {
    /// Writes the response's body into `out`.
    pub fn respond(self, out: &mut Vec<u8>) -> Response {
        match self {
            Committed::Plain(result) => committed(result, out),
            Committed::Keyed(result) => keyed_committed(result, out),
            Committed::Named(result) => counted(result, out),
            Committed::NamedKeyed(result) => keyed_counted(result, out),
            Committed::Read(Ok(count)) => count_body(out, count),
            Committed::Read(Err(err)) => {
                log::debug!("named counter read failed: {err}");
                message(
                    out,
                    Status::ServiceUnavailable,
                    "the count could not be read from the store",
                )
            }
            Committed::Delete(result) => deleted(result, out),
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

pub(super) fn count_body(out: &mut Vec<u8>, count: i64) -> Response {
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.push(b'}');
    Response::json(Status::Ok)
}

/// The response to a deletion.
pub(super) fn deleted(
    result: Result<Option<i64>, crate::counter::CommitError>,
    out: &mut Vec<u8>,
) -> Response {
    match result {
        Ok(Some(count)) => count_body(out, count),
        Ok(None) => message(out, Status::NotFound, "no counter has this name"),
        Err(err) => {
            log::debug!("delete not confirmed: {err}");
            message(
                out,
                Status::ServiceUnavailable,
                "the deletion was not confirmed by the store",
            )
        }
    }
}

/// The response to a keyed named increment.
pub(super) fn keyed_counted(
    result: Result<named::KeyedCounted, crate::counter::CommitError>,
    out: &mut Vec<u8>,
) -> Response {
    match result {
        Ok(named::KeyedCounted::Outcome(outcome)) => keyed_committed(Ok(outcome), out),
        Ok(named::KeyedCounted::LimitReached { limit }) => {
            counted(Ok(named::Counted::LimitReached { limit }), out)
        }
        Err(err) => committed(Err(err), out),
    }
}

/// The response to a named increment.
pub(super) fn counted(
    result: Result<named::Counted, crate::counter::CommitError>,
    out: &mut Vec<u8>,
) -> Response {
    match result {
        Ok(named::Counted::Count(count)) => count_body(out, count),
        Ok(named::Counted::LimitReached { limit }) => message(
            out,
            Status::InsufficientStorage,
            &format!(
                "the counter limit ({limit}) is reached: existing counters keep counting; \
                 delete counters or raise --max-counters"
            ),
        ),
        Err(err) => committed(Err(err), out),
    }
}
