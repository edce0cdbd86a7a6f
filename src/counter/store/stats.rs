//! The store's counters for `/metrics`: [`StoreStats`], the snapshot a handle returns, and
//! `Counters`, the atomics the store thread adds to, declared from one list of fields.

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares [`StoreStats`] and the atomics behind it (`Counters`, which the store thread adds
/// to) from one list of fields, with the snapshot from one to the other: a counter cannot be
/// added to one and forgotten in the other.
macro_rules! store_counters {
    ($($(#[doc = $doc:literal])* $field:ident,)*) => {
        /// A snapshot of the store's counters, for `/metrics`.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StoreStats {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        #[derive(Default)]
        pub(super) struct Counters {
            $(pub(super) $field: AtomicU64,)*
        }

        impl Counters {
            pub(super) fn snapshot(&self) -> StoreStats {
                StoreStats {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

store_counters! {
    /// Committed `add`s (transactions).
    commits,
    /// Sum of the deltas of committed `add`s (increments made durable).
    committed_delta_sum,
    commit_errors_unavailable,
    commit_errors_timeout,
    commit_errors_unknown,
    /// Commits and `add`s refused because the row was below a count already returned.
    commit_errors_row_lowered,
    /// Successful connections (the first one included).
    connects,
    connect_failures,
    /// Connections lost or dropped after a timeout or unknown outcome.
    disconnects,
    /// Batches whose outcome was lost and then settled (found committed, or run again).
    settled,
    /// Keyed increments answered from an earlier request with the same key.
    key_replays,
    /// Keyed increments refused: the key was used with another `by`.
    key_mismatches,
}
