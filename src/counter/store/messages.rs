//! What goes between a [`StoreHandle`](super::StoreHandle) and the store thread: the
//! [`Request`]s on the queue (an [`Add`] carries its increments and the [`Reply`] it is answered
//! on), and what a batch gets back ([`Committed`], one [`KeyOutcome`] per [`KeyedIncrement`]).
//! Plain data.

use std::time::Instant;

use tokio::sync::oneshot;

use super::error::CommitError;

/// An increment sent with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedIncrement {
    pub key: Box<str>,
    pub by: i64,
}

/// What became of a keyed increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Counted by this batch: the count right after its own increment.
    Counted(i64),
    /// Counted before, within the retention, with the same `by`: the count it got then.
    Replayed(i64),
    /// Seen before with another `by`: not counted.
    Mismatch,
}

/// A committed batch: unkeyed increments take the values up to `unkeyed_end`, counted keyed
/// ones the values after it, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub unkeyed_end: i64,
    /// One per keyed increment, in the order given.
    pub keyed: Vec<KeyOutcome>,
}

pub(super) type Reply = oneshot::Sender<Result<Committed, CommitError>>;

pub(super) enum Request {
    Add(Add),
    Shutdown,
}

pub(super) struct Add {
    /// The unkeyed increments' sum.
    pub(super) delta: i64,
    /// Unique keys; empty for most batches, which then run the plain [`ADD`](super::sql::ADD).
    pub(super) keyed: Vec<KeyedIncrement>,
    /// Past this, the caller is told `Timeout` (or `Unavailable` if it was never sent).
    pub(super) deadline: Instant,
    pub(super) reply: Reply,
}
