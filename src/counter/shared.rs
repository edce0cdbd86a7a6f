//! [`CounterShared`]: the instance-wide counter state every core reads (the store handle, the
//! owner's life, the commit statistics), and what readiness reports from it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Acquire};

use super::StoreHandle;
use crate::metrics::Histogram;

/// The buckets of [`CounterShared::batch_size`] (increments per transaction).
static BATCH_BOUNDS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];
/// The buckets of [`CounterShared::commit_seconds`].
static LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0, 5.0,
];

const OWNER_NOT_STARTED: u8 = 0;
pub(super) const OWNER_RUNNING: u8 = 1;
/// Every core closed and the owner committed what they sent: a clean shutdown.
pub(super) const OWNER_FINISHED: u8 = 2;
/// The owner's lease was dropped before its loop finished: its thread ended, or its loop did.
pub(super) const OWNER_STOPPED: u8 = 3;

/// Instance-wide counter state: the store handle and the owner's statistics.
pub struct CounterShared {
    pub store: StoreHandle,
    /// Most increments in one transaction; 0 means no limit.
    pub max_batch: usize,
    /// Increments per transaction.
    pub batch_size: Histogram,
    /// Seconds from sending a transaction to its result.
    pub commit_seconds: Histogram,
    pub failed_commits: AtomicU64,
    /// Increments received by the owner and not yet answered.
    pub pending_increments: AtomicU64,
    /// `OWNER_*`: whether the owner core can commit (set by [`OwnerLease`](super::OwnerLease) and
    /// `run_owner`).
    pub(super) owner: AtomicU8,
}

impl CounterShared {
    pub fn new(store: StoreHandle, max_batch: usize) -> Self {
        CounterShared {
            store,
            max_batch,
            batch_size: Histogram::new(&BATCH_BOUNDS),
            commit_seconds: Histogram::new(&LATENCY_BOUNDS),
            failed_commits: AtomicU64::new(0),
            pending_increments: AtomicU64::new(0),
            owner: AtomicU8::new(OWNER_NOT_STARTED),
        }
    }

    /// The count as this instance knows it: never below a value it returned.
    pub fn current(&self) -> Option<i64> {
        self.store.highest_seen()
    }

    /// Why increments cannot be served now, if they cannot (for `/api/v1/system/ready`). The
    /// text goes into a JSON string as it is: no quote or backslash.
    pub fn unavailable_reason(&self) -> Option<Cow<'static, str>> {
        let owner = self.owner.load(Acquire);
        if owner == OWNER_STOPPED {
            return Some(Cow::Borrowed(
                "the counter's owner core stopped: increments cannot be committed; \
                 restart tally (its log says why the core stopped)",
            ));
        }
        if owner == OWNER_FINISHED {
            return Some(Cow::Borrowed("the counter is shutting down"));
        }
        if let Some(lowered) = self.store.row_lowered() {
            return Some(Cow::Owned(format!(
                "the counter row in PostgreSQL is at {}, below {}, a value this instance already \
                 returned: it was lowered outside tally; increments are refused until it is \
                 raised to at least {} (docs/operations.md: when the counter row goes backwards)",
                lowered.row, lowered.highest_returned, lowered.highest_returned
            )));
        }
        if !self.store.is_connected() {
            return Some(Cow::Borrowed(
                "the counter store (PostgreSQL) is unreachable",
            ));
        }
        if owner == OWNER_NOT_STARTED {
            return Some(Cow::Borrowed("the counter's owner core has not started"));
        }
        None
    }
}
