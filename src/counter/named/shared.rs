//! [`Shared`]: what every core knows of named counters: each owner's store, the limit on how
//! many counters there may be, and the owners' statistics for `/metrics` (no label per name).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::counter::store::{NamedLimit, StoreHandle};
use crate::metrics::Histogram;

/// The buckets of [`Shared::batch_names`].
static NAMES_BOUNDS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

pub struct Shared {
    /// One store per core: the owner core `i` commits on `stores[i]`.
    pub stores: Vec<StoreHandle>,
    pub limit: Arc<NamedLimit>,
    /// Most increments in one transaction; 0 means no limit.
    pub max_batch: usize,
    /// A GET is answered from what the owner's store last saw if it is younger than this.
    pub fresh_for: Duration,
    /// Names per committed transaction.
    pub batch_names: Histogram,
    /// Increments per committed transaction.
    pub batch_size: Histogram,
    pub failed_commits: AtomicU64,
    /// New counters refused because they would pass the limit (one per name and transaction).
    pub refused: AtomicU64,
    /// GETs answered from memory, and those that read PostgreSQL.
    pub reads_cached: AtomicU64,
    pub reads_queried: AtomicU64,
}

impl Shared {
    pub fn new(
        stores: Vec<StoreHandle>,
        limit: Arc<NamedLimit>,
        max_batch: usize,
        fresh_for: Duration,
    ) -> Shared {
        Shared {
            stores,
            limit,
            max_batch,
            fresh_for,
            batch_names: Histogram::new(&NAMES_BOUNDS),
            batch_size: Histogram::new(&NAMES_BOUNDS),
            failed_commits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reads_cached: AtomicU64::new(0),
            reads_queried: AtomicU64::new(0),
        }
    }

    /// Appends the named counters' metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.batch_names.render(
            "tally_named_batch_names",
            "Named counters per committed transaction.",
            out,
        );
        self.batch_size.render(
            "tally_named_batch_size",
            "Increments of named counters per committed transaction.",
            out,
        );
        // One sample per owner core: the owners commit in parallel, each on its store.
        crate::metrics::write_header(
            out,
            "tally_named_commits_total",
            "counter",
            "Transactions of named counters committed, by owner core.",
        );
        for (core, store) in self.stores.iter().enumerate() {
            let _ = writeln!(
                out,
                "tally_named_commits_total{{core=\"{core}\"}} {}",
                store.stats().commits
            );
        }
        let increments: u64 = self
            .stores
            .iter()
            .map(|s| s.stats().committed_delta_sum)
            .sum();
        let remembered: usize = self.stores.iter().map(|s| s.named_view_len()).sum();
        let lines: [(&str, &str, &str, u64); 8] = [
            (
                "tally_named_committed_increments_total",
                "counter",
                "Sum of the committed deltas of named counters.",
                increments,
            ),
            (
                "tally_named_failed_commits_total",
                "counter",
                "Transactions of named counters not confirmed (their requests got 503).",
                self.failed_commits.load(Relaxed),
            ),
            (
                "tally_named_limit_refusals_total",
                "counter",
                "New counters refused (per name and transaction): past --max-counters.",
                self.refused.load(Relaxed),
            ),
            (
                "tally_named_counters",
                "gauge",
                "Named counters in the database, as this instance last counted them.",
                self.limit.rows().max(0) as u64,
            ),
            (
                "tally_named_counters_limit",
                "gauge",
                "--max-counters.",
                self.limit.max().max(0) as u64,
            ),
            (
                "tally_named_remembered",
                "gauge",
                "Names whose count the stores keep in memory for GET.",
                remembered as u64,
            ),
            (
                "tally_named_reads_cached_total",
                "counter",
                "GETs of named counters answered from memory.",
                self.reads_cached.load(Relaxed),
            ),
            (
                "tally_named_reads_queried_total",
                "counter",
                "GETs of named counters that read PostgreSQL.",
                self.reads_queried.load(Relaxed),
            ),
        ];
        for (name, kind, help, value) in lines {
            crate::metrics::write_single(out, name, kind, help, value);
        }
    }

    /// Why named counters cannot be served now, if they cannot.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        (!self.stores.iter().all(StoreHandle::is_connected))
            .then_some("a named counters' store (PostgreSQL) is unreachable")
    }
}
