//! The counter's store: the only code that speaks to PostgreSQL.
//!
//! It runs on a side runtime, a plain OS thread named `tally-store` with a tokio
//! current-thread runtime driving tokio-postgres, because glommio executors cannot run tokio
//! I/O. Executors reach it through runtime-agnostic channels (a flume request queue, a tokio
//! oneshot per reply), so [`StoreHandle::add`] can be awaited from any executor.
//!
//! Guarantee (docs/architecture.md, "The counter"): `add` returns `Ok(count)` only
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
//! above that count (docs/operations.md, "When the counter row goes backwards").
//!
//! The rooms, in the order a batch meets them:
//! - this file: the public face ([`spawn`], [`StoreHandle`]), and the public paths of what its
//!   children define;
//! - `config`: [`StoreConfig`] and its defaults; `messages`: what a caller sends and gets back
//!   ([`KeyedIncrement`], [`Committed`], [`KeyOutcome`]) and the requests on the queue;
//! - `shared`: what the handles share with the thread; `stats`: its counters ([`StoreStats`]);
//! - `session`: the `tally-store` thread, its runtime and the connect / serve loop;
//! - `state`: `Store`, the thread's state every room below adds methods to;
//! - `connect` (with `tls`): opening a connection, the schema, the prepared statements;
//! - `sql`: the statements' text; `digest`: what a key is stored as ([`key_digest`]);
//! - `outage`: holding and refusing increments while there is no connection;
//! - `commit`: running a batch and answering it; `lowered_row`: the second guarantee;
//! - `in_doubt`: settling a batch whose outcome was lost;
//! - `retention`: the retention of idempotency keys and of `tally_instances` rows, paced by
//!   `sweep`;
//! - `error`: [`CommitError`] (what a caller of `add` is told, with [`RowLowered`]) and
//!   [`StoreError`] (why connecting or settling failed).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

mod commit;
mod config;
mod connect;
mod digest;
mod error;
mod in_doubt;
mod limit;
mod lowered_row;
mod messages;
mod named;
mod outage;
mod retention;
mod session;
mod shared;
mod sql;
mod state;
mod stats;
mod sweep;
pub mod tls;
mod view;

pub use config::{
    NamedConfig, StoreConfig, DEFAULT_COMMIT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDEMPOTENCY_RETENTION, DEFAULT_NAMED_VIEW_CAPACITY, DEFAULT_REFRESH_INTERVAL,
};
pub use digest::key_digest;
pub use error::{CommitError, RowLowered, StoreError};
pub use limit::NamedLimit;
pub use messages::{Committed, KeyOutcome, KeyedIncrement, NamedCommitted, NamedKeyed, NamedWork};
pub use stats::StoreStats;

use config::CLOSE_TIMEOUT;
use messages::{Add, Job, Request};
use session::run_thread;
use shared::{Shared, NOT_SEEN};
use stats::Counters;

/// A cheap, cloneable, `Send + Sync` handle to the store thread. The thread ends when
/// [`shutdown`](Self::shutdown) is called or the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    /// Only handles hold senders, so the thread sees the queue close when the last one goes.
    requests: flume::Sender<Request>,
    shared: Arc<Shared>,
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
        view: Mutex::new(view::NameView::new(
            config.named.as_ref().map_or(0, |named| named.view_capacity),
        )),
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
        self.ask(|reply| {
            Request::Add(Add {
                job: Job::Single {
                    delta,
                    keyed,
                    reply,
                },
                deadline: Instant::now() + self.shared.commit_timeout,
            })
        })
        .await
    }

    /// Adds each name's delta (> 0) to its counter, creating it (unless the counter limit
    /// refuses: that name's count is `None`), in one transaction. Names must be unique.
    pub async fn add_named(&self, work: NamedWork) -> Result<NamedCommitted, CommitError> {
        let keyed_names: std::collections::HashSet<u32> =
            work.keyed.iter().map(|k| k.name).collect();
        let empty = (0..)
            .zip(&work.names)
            .find(|(i, (_, delta))| *delta < 0 || (*delta == 0 && !keyed_names.contains(i)));
        if let Some((_, &(_, bad))) = empty {
            return Err(CommitError::InvalidDelta(bad));
        }
        if let Some(bad) = work
            .keyed
            .iter()
            .find(|k| k.by <= 0 || k.name as usize >= work.names.len())
        {
            return Err(CommitError::InvalidDelta(bad.by));
        }
        self.ask(|reply| {
            Request::Add(Add {
                job: Job::Named {
                    work,
                    refused: Vec::new(),
                    reply,
                },
                deadline: Instant::now() + self.shared.commit_timeout,
            })
        })
        .await
    }

    /// The counts of `names` as PostgreSQL has them now (0 for a counter never incremented).
    /// Queued behind the commits sent before it.
    pub async fn read_named(&self, names: Vec<Box<str>>) -> Result<Vec<i64>, CommitError> {
        self.ask(|reply| Request::ReadNamed {
            names,
            reply: Some(reply),
        })
        .await
    }

    /// The count of the named counter `name` as this store last committed or read it, if it
    /// remembers; older than `fresh_for`, the count is answered all the same and a read is
    /// queued (once) to refresh it, as the single counter's count is refreshed in the
    /// background.
    pub fn named_count(&self, name: &str, fresh_for: std::time::Duration) -> Option<i64> {
        let (count, refresh) = self.shared.view.lock().ok()?.ask(name, fresh_for)?;
        if refresh {
            let _ = self.requests.send(Request::ReadNamed {
                names: vec![name.into()],
                reply: None,
            });
        }
        Some(count)
    }

    /// Deletes the counter `name`: its last count, `None` if there was none.
    pub async fn delete_named(&self, name: Box<str>) -> Result<Option<i64>, CommitError> {
        self.ask(|reply| Request::DeleteNamed { name, reply }).await
    }

    /// Sends the request `make` builds around its reply channel, and awaits the answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CommitError>>) -> Request,
    ) -> Result<T, CommitError> {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(make(reply)).is_err() {
            return Err(CommitError::Unavailable("the store has shut down".into()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(CommitError::Unknown(
                "the store thread ended before answering".into(),
            ))
        })
    }

    /// How many names the store remembers the count of.
    pub fn named_view_len(&self) -> usize {
        self.shared.view.lock().map_or(0, |view| view.len())
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
        self.shared.stats.snapshot()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
