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

/// A batch of increments to named counters (`/api/v1/counters/{name}`), for one owner core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedWork {
    /// Unique names, each with the sum of its unkeyed increments (> 0, or 0 for a name that
    /// only has keyed increments). The rows are locked in name order.
    pub names: Vec<(Box<str>, i64)>,
    /// Keyed increments, no (name, key) twice; they count after their name's unkeyed delta.
    pub keyed: Vec<NamedKeyed>,
}

/// A keyed increment of a named counter: its name (an index into [`NamedWork::names`]), its
/// `Idempotency-Key` (scoped to the name) and `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedKeyed {
    pub name: u32,
    pub key: Box<str>,
    pub by: i64,
}

/// What a committed [`NamedWork`] got: per name, in the order given, the count right after its
/// increments, or `None` when the name was refused because the counter limit is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCommitted {
    pub counts: Vec<Option<i64>>,
    /// Per keyed increment, in order: what became of it, `None` when its name was refused.
    pub keyed: Vec<Option<KeyOutcome>>,
}

pub(super) type NamedCountsReply = oneshot::Sender<Result<Vec<i64>, CommitError>>;

pub(super) type NamedReply = oneshot::Sender<Result<NamedCommitted, CommitError>>;

pub(super) enum Request {
    Add(Add),
    /// Reads named counters: the count of each name given (0 for a name with no row). Without
    /// a reply, a refresh of what the store remembers (its view, which every read updates).
    ReadNamed {
        names: Vec<Box<str>>,
        reply: Option<NamedCountsReply>,
    },
    /// Deletes a named counter: its last count, `None` if there was none.
    DeleteNamed {
        name: Box<str>,
        reply: oneshot::Sender<Result<Option<i64>, CommitError>>,
    },
    Shutdown,
}

/// A batch to commit: the single counter's increments or named counters'.
pub(super) enum Job {
    Single {
        /// The unkeyed increments' sum.
        delta: i64,
        /// Unique keys; empty for most batches, which then run the plain
        /// [`ADD`](super::sql::ADD).
        keyed: Vec<KeyedIncrement>,
        reply: Reply,
    },
    Named {
        work: NamedWork,
        /// Per name, whether the counter limit refused it: decided on the first attempt (empty
        /// until then) and kept, so a batch settled after a lost outcome sends the same names.
        refused: Vec<bool>,
        reply: NamedReply,
    },
}

impl Job {
    /// Tells the caller `error` (nothing counted: see `Request::refuse`, `Store::fail`).
    pub(super) fn send_error(self, error: CommitError) {
        match self {
            Job::Single { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Named { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// What the job is, for a log line.
    pub(super) fn what(&self) -> String {
        match self {
            Job::Single { delta, .. } => format!("increment by {delta}"),
            Job::Named { work, .. } => format!("increments of {} named counters", work.names.len()),
        }
    }
}

pub(super) struct Add {
    pub(super) job: Job,
    /// Past this, the caller is told `Timeout` (or `Unavailable` if it was never sent).
    pub(super) deadline: Instant,
}
