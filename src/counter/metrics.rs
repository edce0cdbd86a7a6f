//! The counter's `/metrics` lines: the owner's histograms and counters and the store's
//! [`StoreStats`](super::store::StoreStats). Reads [`CounterShared`]; writes text only.

use std::sync::atomic::Ordering::Relaxed;

use super::CounterShared;

/// A `/metrics` value on one line: name, type, help text, value.
type Line = (&'static str, &'static str, &'static str, u64);

impl CounterShared {
    /// Appends the counter's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.batch_size.render(
            "tally_counter_batch_size",
            "Increments per committed transaction.",
            out,
        );
        self.commit_seconds.render(
            "tally_counter_commit_seconds",
            "Time from sending a transaction to the store until its result.",
            out,
        );
        for (name, kind, help, value) in self.metric_lines() {
            crate::metrics::write_single(out, name, kind, help, value);
        }
    }

    /// The one-line values, in the order they are written: a table, one entry per metric.
    fn metric_lines(&self) -> [Line; 16] {
        let stats = self.store.stats();
        [
            (
                "tally_counter_commits_total",
                "counter",
                "Transactions committed.",
                stats.commits,
            ),
            (
                "tally_counter_committed_increments_total",
                "counter",
                "Sum of committed deltas.",
                stats.committed_delta_sum,
            ),
            (
                "tally_counter_failed_commits_total",
                "counter",
                "Transactions not confirmed (their requests got 503).",
                self.failed_commits.load(Relaxed),
            ),
            (
                "tally_counter_store_unavailable_total",
                "counter",
                "Commits refused: no store connection.",
                stats.commit_errors_unavailable,
            ),
            (
                "tally_counter_store_timeouts_total",
                "counter",
                "Commits past the commit timeout (outcome unknown).",
                stats.commit_errors_timeout,
            ),
            (
                "tally_counter_store_lost_total",
                "counter",
                "Commits whose outcome stayed unknown past the commit timeout (connection lost).",
                stats.commit_errors_unknown,
            ),
            (
                "tally_counter_store_row_lowered_total",
                "counter",
                "Increments refused because the row was below a count already returned.",
                stats.commit_errors_row_lowered,
            ),
            (
                "tally_counter_store_settled_total",
                "counter",
                "Commits whose outcome was lost, then settled after reconnecting (answered 200).",
                stats.settled,
            ),
            (
                "tally_counter_idempotent_replays_total",
                "counter",
                "Keyed increments answered with an earlier request's count (not counted).",
                stats.key_replays,
            ),
            (
                "tally_counter_idempotent_mismatches_total",
                "counter",
                "Keyed increments refused with 422: the key was used with another by.",
                stats.key_mismatches,
            ),
            (
                "tally_counter_store_connects_total",
                "counter",
                "Store connections established.",
                stats.connects,
            ),
            (
                "tally_counter_store_connect_failures_total",
                "counter",
                "Failed connection attempts.",
                stats.connect_failures,
            ),
            (
                "tally_counter_store_disconnects_total",
                "counter",
                "Store connections lost or dropped.",
                stats.disconnects,
            ),
            (
                "tally_counter_pending_increments",
                "gauge",
                "Increments at the owner core awaiting their commit.",
                self.pending_increments.load(Relaxed),
            ),
            (
                "tally_counter_store_up",
                "gauge",
                "Whether the store connection is up.",
                u64::from(self.store.is_connected()),
            ),
            (
                "tally_counter_row_lowered",
                "gauge",
                "1 while the row is below a count this instance returned (increments refused).",
                u64::from(self.store.row_lowered().is_some()),
            ),
        ]
    }
}
