//! What the handles and the store thread both see: [`Shared`], behind an `Arc`, and
//! [`NOT_SEEN`], the value its counts hold before any is known.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use super::error::RowLowered;
use super::stats::Counters;
use super::view::NameView;

/// `highest_seen` before any value is known (a real count is always greater).
pub(super) const NOT_SEEN: i64 = i64::MIN;

/// What the handles and the store thread both see.
pub(super) struct Shared {
    pub(super) commit_timeout: Duration,
    pub(super) connected: AtomicBool,
    pub(super) highest_seen: AtomicI64,
    /// The highest count a commit returned (`NOT_SEEN` before the first); only the store
    /// thread writes it. Unlike `highest_seen`, refresh reads never raise it.
    pub(super) highest_returned: AtomicI64,
    /// The row's count while it is below `highest_returned`, else `NOT_SEEN`.
    pub(super) lowered_row: AtomicI64,
    pub(super) stats: Counters,
    /// A named counters' store: the counts it knows (see `view`).
    pub(super) view: Mutex<NameView>,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected when the store thread has finished (it holds the only sender).
    pub(super) thread_done: flume::Receiver<()>,
}

impl Shared {
    pub(super) fn row_lowered(&self) -> Option<RowLowered> {
        let row = self.lowered_row.load(Ordering::Acquire);
        (row != NOT_SEEN).then(|| RowLowered {
            row,
            highest_returned: self.highest_returned.load(Ordering::Acquire),
        })
    }
}
