//! The counter's store: the only code that speaks to PostgreSQL.
//!
//! It runs on a side runtime, a plain OS thread named `tally-store` with a tokio
//! current-thread runtime driving tokio-postgres, because glommio executors cannot run tokio
//! I/O. Executors reach it through runtime-agnostic channels (a flume request queue, a tokio
//! oneshot per reply), so [`StoreHandle::add`] can be awaited from any executor.
//!
//! Guarantee (README.md, "Architecture", the Counter paragraph): `add` returns `Ok(count)` only
//! when PostgreSQL answered the row of a committed `UPDATE`. Requests run one at a time, in the
//! order they were sent, on one connection; a refresh `SELECT` between them keeps
//! [`StoreHandle::highest_seen`] moving when other instances write to the same row.
//!
//! No unknown outcomes: every batch carries a fresh id, increasing per store, written by the
//! same statement (one transaction, one round trip) as its `UPDATE` into this store's own row of
//! `tally_instances` (its id is random per store start), with the count the batch got. That row
//! is updated in place, never inserted per batch (a HOT update: no index entry, nothing to
//! prune), and only this store writes it, so other instances sharing the database cannot
//! overwrite what it says. When the connection is lost or the statement times out, the batch is
//! *in doubt*: the store reconnects and settles it before anything else, within the caller's
//! deadline. It first locks the counter row (`FOR UPDATE`), which waits until the old session's
//! transaction, which held that lock, has ended; only then can its row be trusted: the batch's
//! id there means committed (answer the stored count), another id means it never will (run the
//! batch again, same id, in that locked transaction). The row's `CHECK (batch >
//! previous_batch)` makes a copy of the old statement reaching the server even later fail
//! instead of counting twice. Only when PostgreSQL stays unreachable past the deadline (or the
//! row was deleted behind the store's back) is the outcome reported unknown.
//!
//! Second guarantee: no value is returned twice. The row only grows while every writer is a
//! tally (other instances' increments raise it), so a commit whose first value is at or below
//! the highest count this store has *returned* means the row was lowered behind our back (a
//! restored backup, a manual `UPDATE`). That commit is answered [`CommitError::RowLowered`],
//! and so is every later `add`, without touching the row, until a read finds the row back at or
//! above that count (README.md, "Operations", "When the counter row goes backwards").

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::error::Severity;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Socket, Statement};

use tls::Connector;

pub mod tls;

pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_millis(200);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect back-off: doubles from the first to the last value after each failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The longest pause between connection attempts while an increment waits for one (held in
/// an outage, or in doubt): a restarted PostgreSQL is found within this once it is back,
/// rather than up to [`BACKOFF_MAX`] later, past the increment's deadline.
const BACKOFF_WHILE_WAITING: Duration = Duration::from_millis(200);
/// How long a closing connection may take to say goodbye (Terminate) to the server.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serialises concurrent schema creation by several tally processes: `CREATE TABLE IF NOT
/// EXISTS` alone can still fail with a unique violation on `pg_type` when two run at once.
/// The value is "tally" in ASCII.
const SCHEMA_LOCK_KEY: i64 = 0x74_61_6c_6c_79;
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS tally_counter \
     (id int PRIMARY KEY CHECK (id = 1), count bigint NOT NULL)";
/// One row per store (`id`, random per start): its last committed batch, how an in-doubt batch
/// is settled. `count` is the counter right after that batch; `keyed_delta` the part its keyed
/// increments added. Batch ids only grow per store, so the `CHECK` refuses a batch run twice.
/// (Earlier versions inserted a row per batch into `tally_batches`, a table no longer read.)
const CREATE_INSTANCES: &str = "CREATE TABLE IF NOT EXISTS tally_instances \
     (id bigint PRIMARY KEY, batch bigint, previous_batch bigint, \
     count bigint NOT NULL DEFAULT 0, keyed_delta bigint NOT NULL DEFAULT 0, \
     seen_at timestamptz NOT NULL DEFAULT now(), CHECK (batch > previous_batch))";
/// Run when no batch of this store is in doubt (a row recreated while one was could make a
/// committed batch look uncommitted).
const INSERT_INSTANCE: &str =
    "INSERT INTO tally_instances (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";
/// `$1` is the highest count this instance has seen (0 at first), so a row deleted behind our
/// back does not restart below values already handed out.
const INSERT_ROW: &str =
    "INSERT INTO tally_counter (id, count) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";
/// One statement, its own transaction: the row lock serialises all writers, instances included.
/// `$2` is the batch id, recorded in this store's row `$3` in the same transaction (a
/// data-modifying CTE always runs). The second column says whether that row was there.
const ADD: &str = "WITH counted AS \
     (UPDATE tally_counter SET count = count + $1 WHERE id = 1 RETURNING count), \
     marked AS (UPDATE tally_instances i SET previous_batch = i.batch, batch = $2, \
       count = c.count, keyed_delta = 0, seen_at = now() FROM counted c WHERE i.id = $3 \
       RETURNING 1) \
     SELECT count, EXISTS (SELECT FROM marked) FROM counted";
const READ: &str = "SELECT count FROM tally_counter WHERE id = 1";
/// Run inside a transaction: returns once every transaction that held the row lock has ended.
const LOCK_ROW: &str = "SELECT count FROM tally_counter WHERE id = 1 FOR UPDATE";
/// A separate statement after [`LOCK_ROW`]: under READ COMMITTED it takes a new snapshot, so it
/// sees what the old session committed while we waited (one statement would not).
const FIND_BATCH: &str = "SELECT batch, count, keyed_delta FROM tally_instances WHERE id = $1";
/// Rows of stores gone for [`INSTANCE_RETENTION`] (a small table: one row per store start).
const PRUNE_INSTANCES: &str = "DELETE FROM tally_instances \
     WHERE seen_at < now() - make_interval(secs => $1)";
/// Keeps an idle store's row from being pruned: at most once per [`INSTANCE_TOUCH_INTERVAL`].
const TOUCH_INSTANCE: &str = "UPDATE tally_instances SET seen_at = now() WHERE id = $1";
/// How long the row of a store that stopped writing is kept. A live store touches its row far
/// more often, and its in-doubt batch is settled within a commit timeout.
const INSTANCE_RETENTION: Duration = Duration::from_secs(24 * 3600);
const INSTANCE_TOUCH_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the sweep of expired idempotency keys ([`SWEEP_KEYS`]) takes its next slice; again
/// at once, between commits, while it is behind its pace.
const PRUNE_INTERVAL: Duration = Duration::from_millis(250);
/// Most pages of `tally_idempotency` one sweep statement reads (256 KiB, at most ~3,000 rows
/// of short keys): ~1 ms from disk, so no DELETE holds the store's connection, or row locks,
/// for long.
const SWEEP_SLICE_PAGES: i64 = 32;
/// The sweep goes over the whole table once per retention / this: an expired key is deleted
/// at most a quarter of the retention after it expired (it counts again from its expiry
/// anyway: [`ADD_KEYED`] checks `created_at`), and the sweep reads each stored row about this
/// many times in its life, whatever the retention and the rate of keys.
const SWEEPS_PER_RETENTION: f64 = 4.0;

/// Idempotency keys and what their first request got (README.md, "API", Idempotency-Key).
/// `batch_id` tells a settling store whether its in-doubt batch is the one that counted a key.
/// The primary key is the table's only index: the expired keys are found by a sweep of the
/// heap ([`SWEEP_KEYS`]), not through an index on `created_at`, which cost a third of a keyed
/// batch (one more index entry and WAL record per key: 66 -> 50 kB of WAL and 1.6 -> 1.3 ms
/// for a statement of 256 fresh keys, pgbench against a table of 1M keys).
const CREATE_KEYS: &str = "CREATE TABLE IF NOT EXISTS tally_idempotency \
     (key text PRIMARY KEY, by bigint NOT NULL, count bigint NOT NULL, batch_id bigint NOT NULL, \
     created_at timestamptz NOT NULL DEFAULT now())";
/// A batch with keyed increments, run after [`LOCK_ROW`] in the same transaction. Every writer
/// takes the row lock first, so this statement's snapshot (taken after it) holds every key
/// committed before: no key can be counted twice, by this instance or another. Keys seen
/// within the retention are not counted; the fresh ones count after the unkeyed delta `$1`, in
/// the order given. Keys are unique in `$2`. A fresh key absent from the table is a plain
/// `INSERT` (no other writer can insert it while we hold the lock; `ON CONFLICT` would cost a
/// speculative insertion, one more WAL record per key: 1033 -> 777 records, 81 -> 70 kB of WAL
/// and a third less time for a batch of 256 keys, pgbench); an expired key still present is
/// overwritten by an upsert, which also covers a prune deleting it meanwhile.
/// Returns `unkeyed_end` and whether this store's row `$6` recorded the batch `$4`, then, for
/// each key seen within the retention, its position (from 1) and what it got then: one row
/// with a NULL position when there is none. The counts of fresh keys follow from the order
/// (`unkeyed_end` plus the running sum of their `by`), so they are not sent back.
const ADD_KEYED: &str = "WITH input AS (SELECT key, by, pos \
       FROM unnest($2::text[], $3::bigint[]) WITH ORDINALITY AS t(key, by, pos)), \
     present AS (SELECT i.pos, k.by, k.count, \
       k.created_at > now() - make_interval(secs => $5) AS live \
       FROM input i JOIN tally_idempotency k ON k.key = i.key), \
     fresh AS (SELECT i.key, i.by, i.pos, (sum(i.by) OVER (ORDER BY i.pos))::bigint AS running, \
       p.pos IS NOT NULL AS expired \
       FROM input i LEFT JOIN present p ON p.pos = i.pos WHERE p.live IS NOT TRUE), \
     total AS (SELECT COALESCE(sum(by), 0)::bigint AS keyed FROM fresh), \
     counted AS (UPDATE tally_counter SET count = count + $1 + total.keyed FROM total \
       WHERE id = 1 RETURNING tally_counter.count - total.keyed AS unkeyed_end, total.keyed), \
     inserted AS (INSERT INTO tally_idempotency (key, by, count, batch_id) \
       SELECT f.key, f.by, c.unkeyed_end + f.running, $4 FROM fresh f, counted c \
       WHERE NOT f.expired), \
     renewed AS (INSERT INTO tally_idempotency (key, by, count, batch_id) \
       SELECT f.key, f.by, c.unkeyed_end + f.running, $4 FROM fresh f, counted c \
       WHERE f.expired \
       ON CONFLICT (key) DO UPDATE SET by = excluded.by, count = excluded.count, \
       batch_id = excluded.batch_id, created_at = now()), \
     marked AS (UPDATE tally_instances i SET previous_batch = i.batch, batch = $4, \
       count = c.unkeyed_end + c.keyed, keyed_delta = c.keyed, seen_at = now() \
       FROM counted c WHERE i.id = $6 RETURNING 1) \
     SELECT c.unkeyed_end, EXISTS (SELECT FROM marked), p.pos, p.by, p.count \
     FROM counted c LEFT JOIN present p ON p.live ORDER BY p.pos";
/// Settling a keyed batch found committed: what each of its keys got.
const FIND_KEYS: &str =
    "SELECT key, by, count, batch_id FROM tally_idempotency WHERE key = ANY($1::text[])";
/// One slice of the sweep over `tally_idempotency`: deletes the expired keys stored in pages
/// `$1` to `$2` (exclusive) and returns how many, and the table's size in pages. A TID range
/// scan: it reads those pages and nothing else, whatever the table's size and statistics, so a
/// sweep that finds nothing expired costs a few page reads, and an empty range none. The time
/// condition is checked again on a row a batch renewed meanwhile, which is then kept.
const SWEEP_KEYS: &str = "WITH gone AS (DELETE FROM tally_idempotency \
     WHERE ctid >= format('(%s,0)', $1)::tid AND ctid < format('(%s,0)', $2)::tid \
     AND created_at < now() - make_interval(secs => $3) RETURNING 1) \
     SELECT (SELECT count(*) FROM gone), \
     pg_relation_size('tally_idempotency') / current_setting('block_size')::bigint";
/// The index earlier versions pruned through. Still there in a database they created (and
/// used by their prune while one of them runs): README.md, "Idempotency-Key", says when to
/// drop it.
const OLD_KEYS_TIME_INDEX: &str = "SELECT to_regclass('tally_idempotency_created_at') IS NOT NULL";
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// `highest_seen` before any value is known (a real count is always greater).
const NOT_SEEN: i64 = i64::MIN;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A tokio-postgres connection string: `postgresql://...` or `host=... user=...`.
    pub url: String,
    /// Longest wait for an `add`, counted from when it was sent to the store.
    pub commit_timeout: Duration,
    /// How often the count is read back while idle, so instances sharing a row converge.
    pub refresh_interval: Duration,
    /// Bound on connecting plus schema set-up.
    pub connect_timeout: Duration,
    /// The CPU the `tally-store` thread is pinned to; `None` leaves it to the scheduler.
    pub cpu: Option<usize>,
    /// How long an idempotency key is remembered (and replayed) after its first request.
    pub idempotency_retention: Duration,
}

impl StoreConfig {
    /// The given URL with the default timeouts, unpinned.
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            cpu: None,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
        }
    }
}

/// Why an increment was not confirmed. Every variant maps to a 503; only `Unavailable` and
/// `InvalidDelta` promise that nothing was applied.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Not connected, or PostgreSQL rejected the statement: nothing was applied.
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// No answer within the commit timeout, and no way to settle it before the deadline: the
    /// increment may or may not have committed.
    #[error("no answer from PostgreSQL within the commit timeout (outcome unknown)")]
    Timeout,
    /// The connection broke while the statement was in flight, and PostgreSQL stayed
    /// unreachable until the deadline: it may have committed.
    #[error("connection to PostgreSQL lost during the commit (outcome unknown): {0}")]
    Unknown(String),
    /// A caller bug: deltas are sums of positive increments.
    #[error("increment must be positive, got {0}")]
    InvalidDelta(i64),
    /// The row is below a count this store already returned: answering would hand out values
    /// twice. Refused until the row is raised to at least `highest_returned`.
    #[error(
        "the counter row was lowered outside tally: it is at {row}, below {highest_returned}, \
         a count this instance already returned; raise it to at least {highest_returned}"
    )]
    RowLowered { row: i64, highest_returned: i64 },
}

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

/// The row found below a count this store returned (see [`CommitError::RowLowered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLowered {
    /// The count PostgreSQL last reported.
    pub row: i64,
    /// The highest count this store has returned from a commit.
    pub highest_returned: i64,
}

/// A snapshot of the store's counters, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Committed `add`s (transactions).
    pub commits: u64,
    /// Sum of the deltas of committed `add`s (increments made durable).
    pub committed_delta_sum: u64,
    pub commit_errors_unavailable: u64,
    pub commit_errors_timeout: u64,
    pub commit_errors_unknown: u64,
    /// Commits and `add`s refused because the row was below a count already returned.
    pub commit_errors_row_lowered: u64,
    /// Successful connections (the first one included).
    pub connects: u64,
    pub connect_failures: u64,
    /// Connections lost or dropped after a timeout or unknown outcome.
    pub disconnects: u64,
    /// Batches whose outcome was lost and then settled (found committed, or run again).
    pub settled: u64,
    /// Keyed increments answered from an earlier request with the same key.
    pub key_replays: u64,
    /// Keyed increments refused: the key was used with another `by`.
    pub key_mismatches: u64,
}

impl From<RowLowered> for CommitError {
    fn from(lowered: RowLowered) -> Self {
        CommitError::RowLowered {
            row: lowered.row,
            highest_returned: lowered.highest_returned,
        }
    }
}

/// A cheap, cloneable, `Send + Sync` handle to the store thread. The thread ends when
/// [`shutdown`](Self::shutdown) is called or the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    /// Only handles hold senders, so the thread sees the queue close when the last one goes.
    requests: flume::Sender<Request>,
    shared: Arc<Shared>,
}

/// What the handles and the store thread both see.
struct Shared {
    commit_timeout: Duration,
    connected: AtomicBool,
    highest_seen: AtomicI64,
    /// The highest count a commit returned (`NOT_SEEN` before the first); only the store
    /// thread writes it. Unlike `highest_seen`, refresh reads never raise it.
    highest_returned: AtomicI64,
    /// The row's count while it is below `highest_returned`, else `NOT_SEEN`.
    lowered_row: AtomicI64,
    stats: Counters,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected when the store thread has finished (it holds the only sender).
    thread_done: flume::Receiver<()>,
}

impl Shared {
    fn row_lowered(&self) -> Option<RowLowered> {
        let row = self.lowered_row.load(Ordering::Acquire);
        (row != NOT_SEEN).then(|| RowLowered {
            row,
            highest_returned: self.highest_returned.load(Ordering::Acquire),
        })
    }
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    committed_delta_sum: AtomicU64,
    commit_errors_unavailable: AtomicU64,
    commit_errors_timeout: AtomicU64,
    commit_errors_unknown: AtomicU64,
    commit_errors_row_lowered: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    settled: AtomicU64,
    key_replays: AtomicU64,
    key_mismatches: AtomicU64,
}

type Reply = oneshot::Sender<Result<Committed, CommitError>>;

enum Request {
    Add(Add),
    Shutdown,
}

struct Add {
    /// The unkeyed increments' sum.
    delta: i64,
    /// Unique keys; empty for most batches, which then run the plain [`ADD`].
    keyed: Vec<KeyedIncrement>,
    /// Past this, the caller is told `Timeout` (or `Unavailable` if it was never sent).
    deadline: Instant,
    reply: Reply,
}

/// Starts the `tally-store` thread (pinned to `config.cpu` if set) and returns at once; it
/// connects in the background, with back-off, and reconnects by itself whenever the connection
/// is lost. Fails only if the OS refuses a thread; a refused pinning is logged, not fatal.
pub fn spawn(config: StoreConfig) -> std::io::Result<StoreHandle> {
    let (requests, queue) = flume::unbounded();
    let (thread_done_tx, thread_done) = flume::bounded::<()>(0);
    let shared = Arc::new(Shared {
        commit_timeout: config.commit_timeout,
        connected: AtomicBool::new(false),
        highest_seen: AtomicI64::new(NOT_SEEN),
        highest_returned: AtomicI64::new(NOT_SEEN),
        lowered_row: AtomicI64::new(NOT_SEEN),
        stats: Counters::default(),
        thread: Mutex::new(None),
        thread_done,
    });
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("tally-store".into())
        .spawn(move || {
            let _done = thread_done_tx;
            let _disconnected_on_exit = DisconnectedOnExit(&for_thread);
            if let Some(cpu) = config.cpu {
                pin_current_thread(cpu);
            }
            run_thread(config, queue, &for_thread);
        })?;
    if let Ok(mut slot) = shared.thread.lock() {
        *slot = Some(thread);
    }
    Ok(StoreHandle { requests, shared })
}

impl StoreHandle {
    /// Adds `delta` (> 0) to the counter row in one statement, its own transaction, and
    /// returns the count right after it. `Ok` only once PostgreSQL answered the committed row.
    pub async fn add(&self, delta: i64) -> Result<i64, CommitError> {
        if delta <= 0 {
            return Err(CommitError::InvalidDelta(delta));
        }
        self.add_batch(delta, Vec::new())
            .await
            .map(|committed| committed.unkeyed_end)
    }

    /// Adds `delta` (>= 0) and every keyed increment whose key was not seen within the
    /// retention, in one transaction. `keyed` must not repeat a key; at least one of the two
    /// must add something.
    pub async fn add_batch(
        &self,
        delta: i64,
        keyed: Vec<KeyedIncrement>,
    ) -> Result<Committed, CommitError> {
        if delta < 0 || (delta == 0 && keyed.is_empty()) {
            return Err(CommitError::InvalidDelta(delta));
        }
        if let Some(bad) = keyed.iter().find(|k| k.by <= 0) {
            return Err(CommitError::InvalidDelta(bad.by));
        }
        let (reply, answer) = oneshot::channel();
        let request = Request::Add(Add {
            delta,
            keyed,
            deadline: Instant::now() + self.shared.commit_timeout,
            reply,
        });
        if self.requests.send(request).is_err() {
            return Err(CommitError::Unavailable("the store has shut down".into()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(CommitError::Unknown(
                "the store thread ended before answering".into(),
            ))
        })
    }

    /// True while a connection is up and the schema is in place (for `/ready`).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The highest count this instance has seen, from its commits and periodic reads; `None`
    /// before the first. Updated before `add` returns, so it is never behind an `add` result.
    pub fn highest_seen(&self) -> Option<i64> {
        let seen = self.shared.highest_seen.load(Ordering::Acquire);
        (seen != NOT_SEEN).then_some(seen)
    }

    /// `Some` while the row is below a count this store returned: every `add` is refused.
    pub fn row_lowered(&self) -> Option<RowLowered> {
        self.shared.row_lowered()
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.stats;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StoreStats {
            commits: get(&c.commits),
            committed_delta_sum: get(&c.committed_delta_sum),
            commit_errors_unavailable: get(&c.commit_errors_unavailable),
            commit_errors_timeout: get(&c.commit_errors_timeout),
            commit_errors_unknown: get(&c.commit_errors_unknown),
            commit_errors_row_lowered: get(&c.commit_errors_row_lowered),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            disconnects: get(&c.disconnects),
            settled: get(&c.settled),
            key_replays: get(&c.key_replays),
            key_mismatches: get(&c.key_mismatches),
        }
    }

    /// Answers the requests already queued, closes the connection and joins the thread. Blocks
    /// the calling thread for at most the commit timeout plus a second; call it at exit, not
    /// from an executor. Later `add`s get `Unavailable`.
    pub fn shutdown(&self) {
        let _ = self.requests.send(Request::Shutdown);
        let thread = self
            .shared
            .thread
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        let Some(thread) = thread else {
            return;
        };
        let wait = self.shared.commit_timeout + CLOSE_TIMEOUT;
        match self.shared.thread_done.recv_timeout(wait) {
            Err(flume::RecvTimeoutError::Timeout) => {
                log::warn!("the store thread did not finish within {wait:?}; leaving it");
            }
            Ok(()) | Err(flume::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    log::error!("the store thread panicked");
                }
            }
        }
    }
}

/// The store still works unpinned (the CPU may be outside this process's cpuset, or gone), so
/// a refusal is only worth a warning.
fn pin_current_thread(cpu: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        log::warn!("cannot pin the store thread to CPU {cpu}; it runs unpinned");
    }
}

/// `/ready` must not report a store whose thread has died, whatever the reason.
struct DisconnectedOnExit<'a>(&'a Shared);

impl Drop for DisconnectedOnExit<'_> {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Release);
    }
}

fn run_thread(config: StoreConfig, queue: flume::Receiver<Request>, shared: &Shared) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error!("cannot build the store's tokio runtime: {error}");
            let reason = format!("the store could not start: {error}");
            refuse_until_shutdown(&queue, &reason, &shared.stats);
            return;
        }
    };
    let store = Store {
        config,
        queue,
        shared,
        last_error: "not connected yet".into(),
        instance: random_id(),
        next_batch_id: Cell::new(random_id()),
        in_doubt: Cell::new(None),
        instance_upkeep_at: Cell::new(Instant::now() + INSTANCE_TOUCH_INTERVAL),
        sweep: Cell::new(Sweep::default()),
        outage_since: Cell::new(None),
        held: RefCell::new(VecDeque::new()),
    };
    runtime.block_on(store.run());
}

/// A store's instance id, and the random start of its batch ids (then +1 per batch): batch ids
/// of different instances and restarts do not meet, so a key's `batch_id` tells which batch
/// counted it. `RandomState` is seeded from the OS's randomness; no dependency for 64 bits.
fn random_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // Non-negative and far from i64::MAX: easier to read in psql, never overflows.
    (hasher.finish() >> 2) as i64
}

/// A batch whose commit outcome was lost: settled on the next connection, or answered `why`
/// at its deadline.
struct InDoubt {
    id: i64,
    delta: i64,
    keyed: Vec<KeyedIncrement>,
    deadline: Instant,
    reply: Reply,
    /// `Timeout` or `Unknown`: what the caller is told if it cannot be settled in time.
    why: CommitError,
}

/// What settling an in-doubt batch came to.
enum Settled {
    /// Its result: committed before (found) or now (run again).
    Answer(Result<Committed, CommitError>),
    /// The settling itself failed; the connection is of no further use, try another.
    Retry(String),
    /// The deadline passed: the caller was answered with the outcome unknown.
    Expired,
}

fn refuse_until_shutdown(queue: &flume::Receiver<Request>, reason: &str, stats: &Counters) {
    while let Ok(Request::Add(add)) = queue.recv() {
        add.refuse(reason, stats);
    }
}

impl Add {
    /// Answers `Unavailable` with `reason`, counted in the store's metrics.
    fn refuse(self, reason: &str, stats: &Counters) {
        stats
            .commit_errors_unavailable
            .fetch_add(1, Ordering::Relaxed);
        let _ = self
            .reply
            .send(Err(CommitError::Unavailable(reason.to_owned())));
    }
}

/// One open connection with its prepared statements.
struct Connection {
    client: Client,
    add: Statement,
    read: Statement,
    lock_row: Statement,
    find_batch: Statement,
    insert_instance: Statement,
    add_keyed: Statement,
    find_keys: Statement,
    sweep_keys: Statement,
    /// Drives the socket; ends when the connection does.
    io: tokio::task::JoinHandle<()>,
    /// Fires (or errors) when `io` ends.
    closed: oneshot::Receiver<()>,
}

impl Connection {
    /// Drops the client (which sends Terminate) and gives the I/O task a moment to flush it.
    async fn close(self) {
        let Connection { client, io, .. } = self;
        drop(client);
        let abort = io.abort_handle();
        if tokio::time::timeout(CLOSE_TIMEOUT, io).await.is_err() {
            abort.abort();
        }
    }

    /// For a connection whose state is unknown: no goodbye, just close the socket.
    fn abandon(self) {
        self.io.abort();
    }
}

/// The sweep over `tally_idempotency` (see [`SWEEP_KEYS`]): a cursor over its pages, paced
/// so that the whole table is read once per retention / [`SWEEPS_PER_RETENTION`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sweep {
    /// The first page of the next slice.
    next_page: i64,
    /// The table's size in pages, as the last slice found it.
    table_pages: i64,
    /// Pages the pace allows to read now (fractions build up between ticks).
    budget: f64,
}

impl Sweep {
    /// One tick of [`PRUNE_INTERVAL`]: the pace adds to the budget, at most one whole sweep.
    fn tick(&mut self, retention: Duration) {
        let period = retention.as_secs_f64() / SWEEPS_PER_RETENTION;
        let share = (PRUNE_INTERVAL.as_secs_f64() / period.max(f64::MIN_POSITIVE)).min(1.0);
        let table = self.table_pages.max(1) as f64;
        self.budget = (self.budget + table * share).min(table);
    }

    /// The pages of the next slice: `[start, end)`, empty while the budget is below a page.
    fn slice(&self) -> (i64, i64) {
        let pages = (self.budget as i64).min(SWEEP_SLICE_PAGES);
        (self.next_page, self.next_page + pages)
    }

    /// After the slice `[start, end)` ran on a table of `table_pages` pages: moves the cursor
    /// (back to the first page past the end) and says whether the pace wants another slice now.
    fn advance(&mut self, (start, end): (i64, i64), table_pages: i64) -> bool {
        self.budget -= (end - start) as f64;
        self.table_pages = table_pages;
        self.next_page = if end >= table_pages { 0 } else { end };
        self.budget >= 1.0
    }
}

/// Why serving a connection stopped.
enum Served {
    Lost,
    ShutDown,
}

struct Store<'a> {
    config: StoreConfig,
    queue: flume::Receiver<Request>,
    shared: &'a Shared,
    /// Told to callers while disconnected.
    last_error: String,
    /// This store's row in `tally_instances`: where its batches are recorded.
    instance: i64,
    /// The id of the next batch sent.
    next_batch_id: Cell<i64>,
    /// At most one: nothing else is sent until it is settled (or its deadline passed).
    in_doubt: Cell<Option<InDoubt>>,
    /// When this store's row is next touched and rows of long-gone stores deleted.
    instance_upkeep_at: Cell<Instant>,
    /// Where the sweep of expired keys stands.
    sweep: Cell<Sweep>,
    /// When the connection that served was lost; `None` while connected, and before the first
    /// connection (a database never reached is a configuration error: refused at once).
    outage_since: Cell<Option<Instant>>,
    /// Increments received during an outage younger than the commit timeout: they wait for the
    /// reconnection (a PostgreSQL restart takes well under the timeout) instead of failing at
    /// once, and are sent, in order, before anything else on the new connection. Each is
    /// answered `Unavailable` at its deadline, or when the outage outlasts the commit timeout.
    held: RefCell<VecDeque<Add>>,
}

impl Store<'_> {
    async fn run(mut self) {
        self.connect_and_serve().await;
        if let Some(batch) = self.in_doubt.take() {
            self.answer_in_doubt(batch);
        }
        self.last_error = "the store has shut down".into();
        for add in self.held.take() {
            self.refuse(add);
        }
    }

    async fn connect_and_serve(&mut self) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let attempt = connect(
                &self.config,
                self.shared.highest_seen.load(Ordering::Acquire),
            );
            let Some(result) = self.refusing_requests_during(attempt).await else {
                return;
            };
            match result {
                Ok(connection) => {
                    self.shared.stats.connects.fetch_add(1, Ordering::Relaxed);
                    // Connected (and so ready) promises a known count: read it first, or a
                    // GET right after /ready turned 200 could still get 503.
                    if !self.refresh(&connection).await {
                        connection.abandon();
                        let pause = tokio::time::sleep(self.pause(backoff));
                        if self.refusing_requests_during(pause).await.is_none() {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    if let Err(error) = self.settle_in_doubt(&connection).await {
                        log::warn!("settling an in-doubt batch: {error}; reconnecting");
                        connection.abandon();
                        let pause = tokio::time::sleep(self.pause(backoff));
                        if self.refusing_requests_during(pause).await.is_none() {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    backoff = BACKOFF_FIRST;
                    self.outage_since.set(None);
                    self.shared.connected.store(true, Ordering::Release);
                    log::info!("connected to PostgreSQL");
                    let served = self.serve(connection).await;
                    self.shared.connected.store(false, Ordering::Release);
                    match served {
                        Served::ShutDown => return,
                        Served::Lost => {
                            self.outage_since.set(Some(Instant::now()));
                            self.shared
                                .stats
                                .disconnects
                                .fetch_add(1, Ordering::Relaxed);
                            self.last_error = "connection to PostgreSQL lost; reconnecting".into();
                        }
                    }
                }
                Err(error) => {
                    self.shared
                        .stats
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if error != self.last_error {
                        log::warn!("cannot connect to PostgreSQL (retrying): {error}");
                    }
                    self.last_error = error;
                    let pause = tokio::time::sleep(self.pause(backoff));
                    if self.refusing_requests_during(pause).await.is_none() {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The pause before the next connection attempt: `backoff`, or at most
    /// [`BACKOFF_WHILE_WAITING`] while an increment waits for a connection.
    fn pause(&self, backoff: Duration) -> Duration {
        let waiting = self.in_doubt_deadline().is_some()
            || !self.held.borrow().is_empty()
            || self.holding_until().is_some();
        if waiting {
            backoff.min(BACKOFF_WHILE_WAITING)
        } else {
            backoff
        }
    }

    /// While the outage is younger than the commit timeout: when it stops being.
    fn holding_until(&self) -> Option<Instant> {
        let until = self.outage_since.get()? + self.config.commit_timeout;
        (Instant::now() < until).then_some(until)
    }

    /// Runs `work` while holding each `add` that arrives during a young outage (see
    /// [`Store::held`]) and answering the others with `Unavailable`; answers an in-doubt batch
    /// with its unknown outcome, and a held `add` with `Unavailable`, once its deadline passes
    /// (or the outage outlasts the commit timeout); `None` on shutdown.
    async fn refusing_requests_during<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::pin!(work);
        loop {
            let in_doubt_deadline = self.in_doubt_deadline();
            let holding_until = self.holding_until();
            let held_deadline = self.held.borrow().iter().map(|add| add.deadline).min();
            // The next moment something is due: the in-doubt batch's or a held add's deadline,
            // or the end of the holding (which then refuses every held add).
            let next_due = [
                in_doubt_deadline,
                held_deadline.and(holding_until),
                held_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                output = &mut work => return Some(output),
                _ = sleep_until_some(next_due) => {
                    if in_doubt_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        if let Some(batch) = self.in_doubt.take() {
                            self.answer_in_doubt(batch);
                        }
                    }
                    self.refuse_held_past_due();
                }
                request = self.queue.recv_async() => match request {
                    Ok(Request::Add(add)) if self.holding_until().is_some() => {
                        self.held.borrow_mut().push_back(add);
                    }
                    Ok(Request::Add(add)) => self.refuse(add),
                    Ok(Request::Shutdown) | Err(_) => return None,
                },
            }
        }
    }

    /// Answers `Unavailable` to the held adds whose deadline passed, and to all of them once
    /// the outage is older than the commit timeout.
    fn refuse_held_past_due(&self) {
        let holding = self.holding_until().is_some();
        let now = Instant::now();
        let (due, kept): (VecDeque<Add>, VecDeque<Add>) = self
            .held
            .take()
            .into_iter()
            .partition(|add| !holding || now >= add.deadline);
        *self.held.borrow_mut() = kept;
        for add in due {
            self.refuse(add);
        }
    }

    /// Nothing was sent: known not applied.
    fn refuse(&self, add: Add) {
        add.refuse(&self.last_error, &self.shared.stats);
    }

    async fn serve(&mut self, mut connection: Connection) -> Served {
        let mut refresh = tokio::time::interval(self.config.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // What waited for this connection goes first, in the order it arrived.
            let held = self.held.borrow_mut().pop_front();
            if let Some(add) = held {
                if !self.run_add(&connection, add).await {
                    connection.abandon();
                    return Served::Lost;
                }
                continue;
            }
            // Biased: a dead connection is noticed first, and a waiting commit goes before a
            // refresh (commits return the row's count anyway).
            tokio::select! {
                biased;
                _ = &mut connection.closed => {
                    log::warn!("connection to PostgreSQL closed");
                    connection.abandon();
                    return Served::Lost;
                }
                request = self.queue.recv_async() => match request {
                    Ok(Request::Add(add)) => {
                        if !self.run_add(&connection, add).await {
                            connection.abandon();
                            return Served::Lost;
                        }
                    }
                    Ok(Request::Shutdown) | Err(_) => {
                        connection.close().await;
                        return Served::ShutDown;
                    }
                },
                _ = refresh.tick() => {
                    if !self.refresh(&connection).await {
                        connection.abandon();
                        return Served::Lost;
                    }
                }
                _ = prune.tick() => match self.prune(&connection).await {
                    None => {
                        connection.abandon();
                        return Served::Lost;
                    }
                    // More expired rows are waiting: prune again after the next commit.
                    Some(true) => prune.reset_immediately(),
                    Some(false) => {}
                },
            }
        }
    }

    /// Commits `add` and answers it; false when its outcome is in doubt, to be settled on a new
    /// connection (its state is unknown: a statement may still be running on this one).
    async fn run_add(&self, connection: &Connection, add: Add) -> bool {
        let Add {
            delta,
            keyed,
            deadline,
            reply,
        } = add;
        let id = self.next_batch_id.get();
        self.next_batch_id.set(id.wrapping_add(1));
        match self.commit(connection, id, delta, &keyed, deadline).await {
            Err(why @ (CommitError::Timeout | CommitError::Unknown(_))) => {
                log::warn!(
                    "increment by {delta} (batch {id}) in doubt: {why}; reconnecting to settle it"
                );
                self.in_doubt.set(Some(InDoubt {
                    id,
                    delta,
                    keyed,
                    deadline,
                    reply,
                    why,
                }));
                false
            }
            result => {
                self.answer(delta, reply, result);
                true
            }
        }
    }

    fn answer(&self, delta: i64, reply: Reply, result: Result<Committed, CommitError>) {
        if let Ok(committed) = &result {
            let stats = &self.shared.stats;
            for outcome in &committed.keyed {
                let counter = match outcome {
                    KeyOutcome::Counted(_) => continue,
                    KeyOutcome::Replayed(_) => &stats.key_replays,
                    KeyOutcome::Mismatch => &stats.key_mismatches,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        match &result {
            // Logged as an error once, when found; not again for every batch.
            Err(error @ CommitError::RowLowered { .. }) => self.count_error(error),
            Err(error) => {
                self.count_error(error);
                log::warn!("increment by {delta} not confirmed: {error}");
            }
            Ok(_) => {}
        }
        let _ = reply.send(result);
    }

    /// Its deadline passed (or the store is shutting down) before it could be settled.
    fn answer_in_doubt(&self, batch: InDoubt) {
        self.answer(batch.delta, batch.reply, Err(batch.why));
    }

    fn in_doubt_deadline(&self) -> Option<Instant> {
        let batch = self.in_doubt.take();
        let deadline = batch.as_ref().map(|batch| batch.deadline);
        self.in_doubt.set(batch);
        deadline
    }

    /// Settles the in-doubt batch, if any, on a fresh connection (see the module comment);
    /// with none, makes sure this store's row exists. `Err` when this connection could not: the
    /// batch stays in doubt, the connection is spent.
    async fn settle_in_doubt(&self, connection: &Connection) -> Result<(), String> {
        let Some(batch) = self.in_doubt.take() else {
            // Nothing in doubt: (re)creating the row cannot make a commit look absent.
            return self.upkeep_instances(connection, true).await;
        };
        match self.settle(connection, &batch).await {
            Settled::Answer(result) => {
                self.answer(batch.delta, batch.reply, result);
                Ok(())
            }
            Settled::Retry(error) => {
                self.in_doubt.set(Some(batch));
                Err(error)
            }
            Settled::Expired => {
                self.answer_in_doubt(batch);
                Err("the batch's deadline passed while settling it".into())
            }
        }
    }

    async fn settle(&self, connection: &Connection, batch: &InDoubt) -> Settled {
        let client = &connection.client;
        let text = |error: tokio_postgres::Error| error.to_string();
        let settling = async {
            client.batch_execute("BEGIN").await.map_err(text)?;
            // Waits for the old session's transaction, which held this lock, to end.
            client
                .query_opt(&connection.lock_row, &[])
                .await
                .map_err(text)?;
            let found = client
                .query_opt(&connection.find_batch, &[&self.instance])
                .await
                .map_err(text)?;
            let outcome = match found {
                // The row was deleted behind our back: whether the batch committed is lost.
                // Recreate it (nothing else is in doubt now) and report the outcome unknown.
                None => {
                    client
                        .execute(&connection.insert_instance, &[&self.instance])
                        .await
                        .map_err(text)?;
                    None
                }
                Some(row) if row.try_get::<_, Option<i64>>(0).map_err(text)? == Some(batch.id) => {
                    let count: i64 = row.try_get(1).map_err(text)?;
                    let keyed_delta: i64 = row.try_get(2).map_err(text)?;
                    let unkeyed_end = count - keyed_delta;
                    let keyed = self.find_keys(connection, batch).await?;
                    let committed = Committed { unkeyed_end, keyed };
                    Some((count, batch.delta + keyed_delta, committed, true))
                }
                Some(_) if batch.keyed.is_empty() => {
                    let (count, _marked) = self
                        .run_unkeyed(connection, batch.id, batch.delta)
                        .await
                        .map_err(|error| error.to_string())?;
                    let committed = Committed {
                        unkeyed_end: count,
                        keyed: Vec::new(),
                    };
                    Some((count, batch.delta, committed, false))
                }
                Some(_) => {
                    let (count, added, committed, _marked) = self
                        .run_keyed(connection, batch.id, batch.delta, &batch.keyed)
                        .await
                        .map_err(|error| error.to_string())?;
                    Some((count, added, committed, false))
                }
            };
            client.batch_execute("COMMIT").await.map_err(text)?;
            Ok::<_, String>(outcome)
        };
        match tokio::time::timeout_at(batch.deadline.into(), settling).await {
            Err(_elapsed) => Settled::Expired,
            Ok(Err(error)) => Settled::Retry(error),
            Ok(Ok(None)) => {
                log::error!(
                    "in-doubt batch {} cannot be settled: the row {} of tally_instances was \
                     deleted (recreated now); its outcome stays unknown",
                    batch.id,
                    self.instance
                );
                Settled::Answer(Err(batch.why.clone()))
            }
            Ok(Ok(Some((count, added, committed, committed_before)))) => {
                let how = if committed_before {
                    "had committed"
                } else {
                    "had not committed; ran it again"
                };
                log::info!("in-doubt batch {} settled: it {how}", batch.id);
                self.shared.stats.settled.fetch_add(1, Ordering::Relaxed);
                Settled::Answer(self.confirm(count, added).map(|_| committed))
            }
        }
    }

    /// Touches this store's row (or inserts it, `insert`, only when no batch is in doubt) and
    /// deletes the rows of stores gone for [`INSTANCE_RETENTION`].
    async fn upkeep_instances(&self, connection: &Connection, insert: bool) -> Result<(), String> {
        let text = |error: tokio_postgres::Error| format!("keeping tally_instances: {error}");
        let client = &connection.client;
        let ours = if insert {
            client
                .execute(&connection.insert_instance, &[&self.instance])
                .await
        } else {
            client.execute(TOUCH_INSTANCE, &[&self.instance]).await
        };
        ours.map_err(text)?;
        let retention = INSTANCE_RETENTION.as_secs_f64();
        client
            .execute(PRUNE_INSTANCES, &[&retention])
            .await
            .map_err(text)?;
        self.instance_upkeep_at
            .set(Instant::now() + INSTANCE_TOUCH_INTERVAL);
        Ok(())
    }

    /// What each key of a batch found committed got: counted by it, or by an earlier batch.
    async fn find_keys(
        &self,
        connection: &Connection,
        batch: &InDoubt,
    ) -> Result<Vec<KeyOutcome>, String> {
        let text = |error: tokio_postgres::Error| error.to_string();
        if batch.keyed.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = batch.keyed.iter().map(|k| &*k.key).collect();
        let rows = connection
            .client
            .query(&connection.find_keys, &[&keys])
            .await
            .map_err(text)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get(0).map_err(text)?;
            let by: i64 = row.try_get(1).map_err(text)?;
            let count: i64 = row.try_get(2).map_err(text)?;
            let batch_id: i64 = row.try_get(3).map_err(text)?;
            found.insert(key, (by, count, batch_id));
        }
        batch
            .keyed
            .iter()
            .map(|increment| {
                let &(by, count, batch_id) = found.get(&*increment.key).ok_or_else(|| {
                    format!("key {:?} of a committed batch is gone", increment.key)
                })?;
                Ok(if batch_id == batch.id {
                    KeyOutcome::Counted(count)
                } else if by == increment.by {
                    KeyOutcome::Replayed(count)
                } else {
                    KeyOutcome::Mismatch
                })
            })
            .collect()
    }

    /// Runs the sweep's next slice of expired keys (and, once per [`INSTANCE_TOUCH_INTERVAL`],
    /// keeps `tally_instances`): whether the sweep is behind its pace and wants another slice
    /// now, or `None` when the connection should be dropped.
    async fn prune(&self, connection: &Connection) -> Option<bool> {
        let retention = self.config.idempotency_retention;
        let mut sweep = self.sweep.get();
        sweep.tick(retention);
        let slice = sweep.slice();
        let upkeep_due = Instant::now() >= self.instance_upkeep_at.get();
        let delete = async {
            if upkeep_due {
                if let Err(error) = self.upkeep_instances(connection, false).await {
                    // Retried at the next interval; the row's retention is far longer.
                    log::warn!("{error}");
                    self.instance_upkeep_at
                        .set(Instant::now() + INSTANCE_TOUCH_INTERVAL);
                }
            }
            let retention = retention.as_secs_f64();
            connection
                .client
                .query_one(&connection.sweep_keys, &[&slice.0, &slice.1, &retention])
                .await
        };
        let row = match tokio::time::timeout(self.config.commit_timeout, delete).await {
            Ok(Ok(row)) => row,
            Ok(Err(error)) => {
                log::warn!("pruning expired keys: {error}");
                self.sweep.set(sweep);
                return statement_was_rejected(&error).then_some(false);
            }
            Err(_elapsed) => {
                log::warn!(
                    "pruning expired keys took over {:?}",
                    self.config.commit_timeout
                );
                return None;
            }
        };
        let table_pages = row.try_get::<_, i64>(1).unwrap_or(sweep.table_pages);
        let more = sweep.advance(slice, table_pages);
        self.sweep.set(sweep);
        Some(more)
    }

    async fn commit(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
        deadline: Instant,
    ) -> Result<Committed, CommitError> {
        if Instant::now() >= deadline {
            return Err(CommitError::Unavailable(
                "waited past the commit timeout before it could be sent".into(),
            ));
        }
        if connection.client.is_closed() {
            return Err(CommitError::Unavailable(
                "connection to PostgreSQL closed".into(),
            ));
        }
        if self.shared.row_lowered().is_some() {
            // Only a read may lift the refusal: the row is not touched while it is low. A
            // failed read leaves the refusal as it is (the refresh notices a dead connection).
            let _ = tokio::time::timeout_at(deadline.into(), self.read_row(connection)).await;
            if let Some(lowered) = self.shared.row_lowered() {
                return Err(lowered.into());
            }
        }
        // A quarter of the timeout is kept to settle the batch if its outcome is lost.
        let statement_deadline = deadline - self.config.commit_timeout / 4;
        if !keyed.is_empty() {
            let client = &connection.client;
            // Pipelined: one round trip. A failed statement turns the COMMIT into a rollback.
            let transaction = async {
                let (begin, lock, run, commit) = tokio::join!(
                    client.batch_execute("BEGIN"),
                    client.query_opt(&connection.lock_row, &[]),
                    self.run_keyed(connection, id, delta, keyed),
                    client.batch_execute("COMMIT"),
                );
                begin.map_err(|error| classify(&error))?;
                lock.map_err(|error| classify(&error))?;
                let (count, added, committed, marked) = run?;
                commit.map_err(|error| classify(&error))?;
                Ok::<_, CommitError>((count, added, committed, marked))
            };
            let (count, added, committed, marked) =
                match tokio::time::timeout_at(statement_deadline.into(), transaction).await {
                    Err(_elapsed) => return Err(CommitError::Timeout),
                    Ok(result) => result?,
                };
            self.recreate_row_if_unmarked(connection, marked).await;
            return self.confirm(count, added).map(|_| committed);
        }
        let answer = tokio::time::timeout_at(
            statement_deadline.into(),
            self.run_unkeyed(connection, id, delta),
        )
        .await;
        let (count, marked) = match answer {
            Err(_elapsed) => return Err(CommitError::Timeout),
            Ok(result) => result?,
        };
        self.recreate_row_if_unmarked(connection, marked).await;
        self.confirm(count, delta).map(|count| Committed {
            unkeyed_end: count,
            keyed: Vec::new(),
        })
    }

    /// Runs [`ADD`]: the count after the batch, and whether this store's row recorded it.
    async fn run_unkeyed(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
    ) -> Result<(i64, bool), CommitError> {
        let row = connection
            .client
            .query_opt(&connection.add, &[&delta, &id, &self.instance])
            .await
            .map_err(|error| classify(&error))?
            // Committed, but it touched nothing: the row is gone. Reconnecting recreates it.
            .ok_or_else(|| CommitError::Unknown("tally_counter has no row with id = 1".into()))?;
        let unreadable = |error: tokio_postgres::Error| {
            CommitError::Unknown(format!("unreadable count: {error}"))
        };
        let count: i64 = row.try_get(0).map_err(unreadable)?;
        let marked: bool = row.try_get(1).map_err(unreadable)?;
        Ok((count, marked))
    }

    /// A batch committed, answered, but not recorded: this store's row was deleted behind its
    /// back. Nothing is in doubt now, so the row can be recreated; if that fails, the next
    /// connection does it (until then a lost outcome is reported unknown, never guessed).
    async fn recreate_row_if_unmarked(&self, connection: &Connection, marked: bool) {
        if marked {
            return;
        }
        log::warn!(
            "the row {} of tally_instances was deleted behind tally's back; recreating it",
            self.instance
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.instance];
        let insert = connection
            .client
            .execute(&connection.insert_instance, &params);
        match tokio::time::timeout(self.config.commit_timeout, insert).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => log::warn!("recreating the row of tally_instances: {error}"),
            Err(_elapsed) => log::warn!("recreating the row of tally_instances timed out"),
        }
    }

    /// Runs [`ADD_KEYED`] (the row lock must be held): the count after the batch, what it
    /// added, each key's outcome, and whether this store's row recorded the batch.
    async fn run_keyed(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
    ) -> Result<(i64, i64, Committed, bool), CommitError> {
        let keys: Vec<&str> = keyed.iter().map(|k| &*k.key).collect();
        let bys: Vec<i64> = keyed.iter().map(|k| k.by).collect();
        let retention = self.config.idempotency_retention.as_secs_f64();
        let rows = connection
            .client
            .query(
                &connection.add_keyed,
                &[&delta, &keys, &bys, &id, &retention, &self.instance],
            )
            .await
            .map_err(|error| classify(&error))?;
        let unreadable = |error: tokio_postgres::Error| {
            CommitError::Unknown(format!("unreadable keyed result: {error}"))
        };
        // No row at all: tally_counter has no row (the UPDATE touched nothing).
        let first = rows
            .first()
            .ok_or_else(|| CommitError::Unknown("tally_counter has no row with id = 1".into()))?;
        let unkeyed_end: i64 = first.try_get(0).map_err(unreadable)?;
        let marked: bool = first.try_get(1).map_err(unreadable)?;
        // Keys seen before, by position (from 1, ascending); the rest were counted now.
        let mut seen = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(pos) = row.try_get::<_, Option<i64>>(2).map_err(unreadable)? else {
                continue;
            };
            let by: i64 = row.try_get(3).map_err(unreadable)?;
            let count: i64 = row.try_get(4).map_err(unreadable)?;
            seen.push((pos, by, count));
        }
        let mut seen = seen.into_iter().peekable();
        let mut added = delta;
        let mut outcomes = Vec::with_capacity(keyed.len());
        for (pos, increment) in (1..).zip(keyed) {
            outcomes.push(match seen.next_if(|&(at, _, _)| at == pos) {
                Some((_, by, count)) if by == increment.by => KeyOutcome::Replayed(count),
                Some(_) => KeyOutcome::Mismatch,
                None => {
                    added += increment.by;
                    KeyOutcome::Counted(unkeyed_end + (added - delta))
                }
            });
        }
        if seen.next().is_some() {
            return Err(CommitError::Unknown(
                "the keyed batch answered a key position out of range".into(),
            ));
        }
        let count = unkeyed_end + (added - delta);
        let committed = Committed {
            unkeyed_end,
            keyed: outcomes,
        };
        Ok((count, added, committed, marked))
    }

    /// Records the count a committed batch of `delta` returned, unless it would hand out a
    /// value twice (see the module comment).
    fn confirm(&self, count: i64, delta: i64) -> Result<i64, CommitError> {
        // The values this commit hands out are count - delta + 1 ..= count. Every one of them
        // is above highest_returned unless the row went down since our last commit.
        let highest_returned = self.shared.highest_returned.load(Ordering::Acquire);
        if highest_returned != NOT_SEEN && count - delta < highest_returned {
            self.shared.lowered_row.store(count, Ordering::Release);
            log::error!(
                "the counter row went backwards: PostgreSQL returned {count} after this \
                 instance had returned {highest_returned} (restored backup? manual UPDATE?). \
                 Refusing every increment until the row is raised to at least \
                 {highest_returned}: UPDATE tally_counter SET count = GREATEST(count, \
                 {highest_returned}) WHERE id = 1"
            );
            return Err(CommitError::RowLowered {
                row: count,
                highest_returned,
            });
        }
        self.shared.highest_returned.store(count, Ordering::Release);
        self.shared.highest_seen.fetch_max(count, Ordering::AcqRel);
        let stats = &self.shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .committed_delta_sum
            .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        Ok(count)
    }

    /// Records a count read from the row: raises `highest_seen`, and ends or updates the
    /// refusal of a lowered row. `Err(RowLowered)` while the row is still too low.
    fn saw_row(&self, count: i64) -> Result<(), CommitError> {
        self.shared.highest_seen.fetch_max(count, Ordering::AcqRel);
        let Some(lowered) = self.shared.row_lowered() else {
            return Ok(());
        };
        if count >= lowered.highest_returned {
            self.shared.lowered_row.store(NOT_SEEN, Ordering::Release);
            log::warn!(
                "the counter row is back at {count}, at or above {}, the highest count this \
                 instance returned: increments are served again",
                lowered.highest_returned
            );
            Ok(())
        } else {
            self.shared.lowered_row.store(count, Ordering::Release);
            Err(RowLowered {
                row: count,
                ..lowered
            }
            .into())
        }
    }

    /// Reads the row while it is known to be lowered, to see whether it was raised again.
    async fn read_row(&self, connection: &Connection) -> Result<(), CommitError> {
        let row = connection
            .client
            .query_opt(&connection.read, &[])
            .await
            .map_err(|error| classify(&error))?
            .ok_or_else(|| CommitError::Unknown("tally_counter has no row with id = 1".into()))?;
        let count = row
            .try_get::<_, i64>(0)
            .map_err(|error| CommitError::Unknown(format!("unreadable count: {error}")))?;
        self.saw_row(count)
    }

    /// Reads the row; false when the connection should be dropped.
    async fn refresh(&self, connection: &Connection) -> bool {
        let read = connection.client.query_opt(&connection.read, &[]);
        match tokio::time::timeout(self.config.commit_timeout, read).await {
            Ok(Ok(Some(row))) => {
                if let Ok(count) = row.try_get::<_, i64>(0) {
                    let _still_lowered = self.saw_row(count);
                }
                true
            }
            Ok(Ok(None)) => {
                log::error!("tally_counter has no row with id = 1; reconnecting to recreate it");
                false
            }
            Ok(Err(error)) => {
                log::warn!("reading the count: {error}");
                statement_was_rejected(&error)
            }
            Err(_elapsed) => {
                log::warn!(
                    "reading the count took over {:?}",
                    self.config.commit_timeout
                );
                false
            }
        }
    }

    fn count_error(&self, error: &CommitError) {
        let stats = &self.shared.stats;
        let counter = match error {
            CommitError::Unavailable(_) | CommitError::InvalidDelta(_) => {
                &stats.commit_errors_unavailable
            }
            CommitError::Timeout => &stats.commit_errors_timeout,
            CommitError::Unknown(_) => &stats.commit_errors_unknown,
            CommitError::RowLowered { .. } => &stats.commit_errors_row_lowered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// An `ERROR` (not `FATAL`/`PANIC`) reply to a single-statement transaction means PostgreSQL
/// rolled it back and the session goes on: known not applied. Anything else, a broken socket,
/// a server shutting down mid-statement (`FATAL 57P01`, which can arrive after the COMMIT), is
/// an unknown outcome.
fn statement_was_rejected(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(Severity::Error))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn classify(error: &tokio_postgres::Error) -> CommitError {
    if statement_was_rejected(error) {
        CommitError::Unavailable(format!("PostgreSQL rejected the increment: {error}"))
    } else {
        CommitError::Unknown(error.to_string())
    }
}

/// Connects, checks durability settings, creates the schema if missing and prepares the two
/// statements, all within `connect_timeout`.
async fn connect(config: &StoreConfig, highest_seen: i64) -> Result<Connection, String> {
    let (url, tls) = tls::split_connection_string(&config.url)
        .map_err(|error| format!("invalid database URL: {error}"))?;
    let mut pg_config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| format!("invalid database URL: {error}"))?;
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("tally");
    }
    pg_config.connect_timeout(config.connect_timeout);
    let connector = tls.apply(&mut pg_config)?;
    let set_up = async {
        let opened = match connector {
            Connector::Plain => open(&pg_config, NoTls).await,
            Connector::Rustls(rustls) => open(&pg_config, rustls).await,
        };
        let (client, io, closed) = opened.map_err(|error| match error.as_db_error() {
            Some(_) => error.to_string(),
            // Transport and TLS failures: the cause (tokio-postgres's text omits it, e.g. why
            // a certificate was refused) and the TLS settings in force.
            None => {
                let mut text = error.to_string();
                let mut cause = std::error::Error::source(&error);
                while let Some(inner) = cause {
                    text.push_str(&format!(": {inner}"));
                    cause = inner.source();
                }
                format!("{text} ({tls})")
            }
        })?;
        // If set-up fails below, dropping the client ends the I/O task.
        prepare(client, io, closed, highest_seen).await
    };
    tokio::time::timeout(config.connect_timeout, set_up)
        .await
        .map_err(|_| {
            format!(
                "connecting and creating the schema took over {:?}",
                config.connect_timeout
            )
        })?
}

/// Opens a connection with `tls` and spawns the task that drives its socket.
async fn open<T>(
    pg_config: &tokio_postgres::Config,
    tls: T,
) -> Result<(Client, tokio::task::JoinHandle<()>, oneshot::Receiver<()>), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = pg_config.connect(tls).await?;
    let (closed_tx, closed) = oneshot::channel();
    let io = tokio::spawn(async move {
        if let Err(error) = connection.await {
            log::warn!("PostgreSQL connection: {error}");
        }
        let _ = closed_tx.send(());
    });
    Ok((client, io, closed))
}

async fn prepare(
    client: Client,
    io: tokio::task::JoinHandle<()>,
    closed: oneshot::Receiver<()>,
    highest_seen: i64,
) -> Result<Connection, String> {
    let fail = |what: &str| {
        let what = what.to_owned();
        move |error: tokio_postgres::Error| format!("{what}: {error}")
    };
    // Commits must be durable before we answer 200 (README.md, "API"). `off` is the one setting
    // that acknowledges before the WAL is flushed; `local`, `remote_write`... are kept as they are.
    let settings = client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync')",
            &[],
        )
        .await
        .map_err(fail("reading durability settings"))?;
    let synchronous_commit: String = settings.try_get(0).map_err(fail("synchronous_commit"))?;
    let fsync: String = settings.try_get(1).map_err(fail("fsync"))?;
    if synchronous_commit == "off" {
        log::warn!("the database has synchronous_commit = off; tally sets it on for its session");
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(fail("setting synchronous_commit"))?;
    }
    if fsync == "off" {
        log::warn!("the PostgreSQL server runs with fsync = off: a crash can lose commits");
    }

    // `SET LOCAL`: no "already exists, skipping" notice in the log at every connect.
    let create_schema = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY}); \
         SET LOCAL client_min_messages = warning; {CREATE_TABLE}; {CREATE_INSTANCES}; \
         {CREATE_KEYS}; COMMIT"
    );
    client
        .batch_execute(&create_schema)
        .await
        .map_err(fail("creating table tally_counter"))?;
    // This session's statements all find their rows through an index (the sweep by TID), and
    // the keyed batch must: its plan is cached after five runs, and with a young, small keys
    // table the planner picks a hash join over a sequential scan of it, which the cached plan
    // keeps while the table grows, until autovacuum's ANALYZE invalidates it (37 us of
    // PostgreSQL per key instead of 7 in the first minute of a fresh data directory).
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .map_err(fail("setting enable_seqscan"))?;
    let old_index = client
        .query_one(OLD_KEYS_TIME_INDEX, &[])
        .await
        .map_err(fail("looking for the old keys index"))?;
    if old_index.try_get::<_, bool>(0).unwrap_or(false) {
        log::warn!(
            "the index tally_idempotency_created_at, which earlier tally versions pruned keys \
             through, is no longer needed and slows every keyed increment; once no older tally \
             uses this database: DROP INDEX CONCURRENTLY tally_idempotency_created_at"
        );
    }
    let seed = highest_seen.max(0);
    client
        .execute(INSERT_ROW, &[&seed])
        .await
        .map_err(fail("inserting the counter row"))?;
    let add = client
        .prepare_typed(ADD, &[Type::INT8, Type::INT8, Type::INT8])
        .await
        .map_err(fail("preparing the increment"))?;
    let read = client
        .prepare(READ)
        .await
        .map_err(fail("preparing the read"))?;
    let lock_row = client
        .prepare(LOCK_ROW)
        .await
        .map_err(fail("preparing the row lock"))?;
    let find_batch = client
        .prepare_typed(FIND_BATCH, &[Type::INT8])
        .await
        .map_err(fail("preparing the batch lookup"))?;
    let insert_instance = client
        .prepare_typed(INSERT_INSTANCE, &[Type::INT8])
        .await
        .map_err(fail("preparing the instance row"))?;
    let add_keyed = client
        .prepare_typed(
            ADD_KEYED,
            &[
                Type::INT8,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::FLOAT8,
                Type::INT8,
            ],
        )
        .await
        .map_err(fail("preparing the keyed increment"))?;
    let find_keys = client
        .prepare_typed(FIND_KEYS, &[Type::TEXT_ARRAY])
        .await
        .map_err(fail("preparing the key lookup"))?;
    let sweep_keys = client
        .prepare_typed(SWEEP_KEYS, &[Type::INT8, Type::INT8, Type::FLOAT8])
        .await
        .map_err(fail("preparing the key sweep"))?;
    Ok(Connection {
        client,
        add,
        read,
        lock_row,
        find_batch,
        insert_instance,
        add_keyed,
        find_keys,
        sweep_keys,
        io,
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Cpus_allowed_list` of this process's `tally-store` thread, once it has one.
    fn store_thread_cpus() -> Option<String> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "tally-store" {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .map(|list| list.trim().to_owned());
        }
        None
    }

    #[test]
    fn a_sweep_reads_a_small_table_whole_each_tick_when_the_retention_is_short() {
        let mut sweep = Sweep::default();
        let retention = PRUNE_INTERVAL.mul_f64(SWEEPS_PER_RETENTION);
        sweep.tick(retention);
        assert_eq!(sweep.slice(), (0, 1), "the size is not known yet: one page");
        assert!(!sweep.advance((0, 1), 3));
        sweep.tick(retention);
        assert_eq!(sweep.slice(), (1, 4));
        assert!(!sweep.advance((1, 4), 3));
        assert_eq!(sweep.next_page, 0, "back to the start past the last page");
    }

    #[test]
    fn a_sweep_reads_each_page_once_per_quarter_retention_in_bounded_slices() {
        let retention = Duration::from_secs(24 * 3600);
        let mut sweep = Sweep {
            table_pages: 400,
            ..Sweep::default()
        };
        // 400 pages over 6 hours: one page per 54 s, 216 ticks.
        let mut ticks = 0;
        loop {
            ticks += 1;
            sweep.tick(retention);
            if sweep.slice() != (0, 0) {
                break;
            }
        }
        assert_eq!((ticks, sweep.slice()), (216, (0, 1)));

        // A table that grew past its pace (or a long disconnection): at most one sweep is
        // owed, taken a slice at a time, again at once while the budget lasts.
        let mut behind = Sweep {
            table_pages: 100,
            budget: 1e9,
            ..Sweep::default()
        };
        behind.tick(retention);
        assert_eq!(behind.budget, 100.0);
        let mut slices = Vec::new();
        loop {
            let slice = behind.slice();
            slices.push(slice);
            if !behind.advance(slice, 100) {
                break;
            }
        }
        assert_eq!(slices, [(0, 32), (32, 64), (64, 96), (96, 100)]);
        assert_eq!(behind.next_page, 0);
    }

    #[test]
    fn the_store_thread_runs_on_the_configured_cpu() {
        // The last CPU this process may use: pinning to it narrows the mask whenever there are two.
        let cpu = core_affinity::get_core_ids()
            .and_then(|ids| ids.last().copied())
            .expect("at least one usable CPU")
            .id;
        // Nothing listens there: the thread keeps retrying in the background, which is enough.
        let mut config = StoreConfig::new("host=/nonexistent/tally-test user=tally");
        config.cpu = Some(cpu);
        let store = spawn(config).expect("store thread");

        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = store_thread_cpus();
        while seen.as_deref() != Some(&*cpu.to_string()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            seen = store_thread_cpus();
        }
        store.shutdown();
        assert_eq!(seen, Some(cpu.to_string()));
    }
}
