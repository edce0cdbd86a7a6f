//! The store thread's state: [`Store`], which every room (`commit`, `in_doubt`, `outage`,
//! `retention`, `lowered_row`, `session`) adds its methods to, and the [`InDoubt`] batch it may
//! hold. Only the fields live here; what the store does is in the rooms.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Instant;

use super::config::StoreConfig;
use super::error::CommitError;
use super::messages::{Add, Request};
use super::shared::Shared;
use super::sweep::Sweep;

/// The store thread's state. Every room (`commit`, `in_doubt`, `outage`, `retention`, ...)
/// adds its methods to it; only the store thread ever holds it, hence `Cell`s, not locks.
pub(super) struct Store<'a> {
    pub(super) config: StoreConfig,
    pub(super) queue: flume::Receiver<Request>,
    pub(super) shared: &'a Shared,
    /// Told to callers while disconnected.
    pub(super) last_error: String,
    /// This store's row in `tally_instances`: where its batches are recorded.
    pub(super) instance: i64,
    /// The id of the next batch sent.
    pub(super) next_batch_id: Cell<i64>,
    /// At most one: nothing else is sent until it is settled (or its deadline passed).
    pub(super) in_doubt: Cell<Option<InDoubt>>,
    /// When this store's row is next touched and rows of long-gone stores deleted.
    pub(super) instance_upkeep_at: Cell<Instant>,
    /// Where the sweep of expired keys stands.
    pub(super) sweep: Cell<Sweep>,
    /// Where the sweep of `tally_idempotency` stands, while it holds keys of earlier versions.
    pub(super) legacy_sweep: Cell<Sweep>,
    /// When the connection that served was lost; `None` while connected, and before the first
    /// connection (a database never reached is a configuration error: refused at once).
    pub(super) outage_since: Cell<Option<Instant>>,
    /// Increments received during an outage younger than the commit timeout: they wait for the
    /// reconnection (a PostgreSQL restart takes well under the timeout) instead of failing at
    /// once, and are sent, in order, before anything else on the new connection. Each is
    /// answered `Unavailable` at its deadline, or when the outage outlasts the commit timeout.
    pub(super) held: RefCell<VecDeque<Add>>,
    /// When the number of named counters is next read (see `named::NamedLimit`).
    pub(super) named_recount_at: Cell<Instant>,
    /// A request taken off the queue while gathering reads (see `session`), served next.
    pub(super) stashed: RefCell<Option<Request>>,
}

/// A batch whose commit outcome was lost: settled on the next connection, or answered `why`
/// at its deadline.
pub(super) struct InDoubt {
    pub(super) id: i64,
    /// The batch, its reply and its deadline.
    pub(super) add: Add,
    /// `Timeout` or `Unknown`: what the caller is told if it cannot be settled in time.
    pub(super) why: CommitError,
}
