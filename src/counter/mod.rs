//! The durable counter: per-core batching, the owner core's group commit, and the values each
//! request gets back.
//!
//! ```text
//!  core k: POST -> CounterCore::increment -> joins the core's open Batch, gets a Ticket
//!          batcher task: sends each closed Batch as one CoreBatch message ----------+
//!                                                                                    v
//!  owner core: run_owner: gathers every queued CoreBatch, ONE transaction  -> store (side runtime)
//!          UPDATE .. SET count = count + sum RETURNING count                 <- new count
//!          replies to each core, in order, with the base its batch starts at
//!  core k: reply task resolves the Batch; each Ticket yields base + its own running offset
//! ```
//! Nothing waits on a timer: a transaction starts as soon as the previous one finished, and
//! whatever arrived meanwhile forms the next one. A request is answered 200 only after
//! PostgreSQL confirmed the commit of the transaction holding its increment. Knows no sockets.
//!
//! No ticket waits on a dead owner: the owner core holds an [`OwnerLease`] on its thread's
//! stack. However that thread ends (a panic in any of its tasks included), dropping the lease
//! disconnects a channel every core's reply task watches; they fail their batches in flight at
//! once and refuse new ones, and readiness turns false.

pub mod store;

/// TLS to PostgreSQL lives beside the connecting code, in `store::tls`; the old path stays.
pub use store::tls;

#[cfg(test)]
mod batching_tests;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{
    AtomicU64, AtomicU8, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::metrics::Histogram;
pub use store::{CommitError, KeyOutcome, KeyedIncrement, StoreHandle};

/// Largest `by` a request may ask for (README.md, "API": 1 <= n <= 2^31-1).
pub const MAX_BY: i64 = i32::MAX as i64;

static BATCH_BOUNDS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];
static LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0, 5.0,
];

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
    /// `OWNER_*`: whether the owner core can commit (set by [`OwnerLease`] and `run_owner`).
    owner: AtomicU8,
}

const OWNER_NOT_STARTED: u8 = 0;
const OWNER_RUNNING: u8 = 1;
/// Every core closed and the owner committed what they sent: a clean shutdown.
const OWNER_FINISHED: u8 = 2;
/// The owner's lease was dropped before its loop finished: its thread ended, or its loop did.
const OWNER_STOPPED: u8 = 3;

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
                 raised to at least {} (README.md, Operations)",
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
        let stats = self.store.stats();
        type Line = (&'static str, &'static str, &'static str, u64);
        let lines: [Line; 14] = [
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
        ];
        for (name, kind, help, v) in lines {
            crate::metrics::write_single(out, name, kind, help, v);
        }
        crate::metrics::write_single(
            out,
            "tally_counter_store_up",
            "gauge",
            "Whether the store connection is up.",
            u64::from(self.store.is_connected()),
        );
        crate::metrics::write_single(
            out,
            "tally_counter_row_lowered",
            "gauge",
            "1 while the row is below a count this instance returned (increments refused).",
            u64::from(self.store.row_lowered().is_some()),
        );
    }
}

/// One core's batch of increments, as sent to the owner.
#[derive(Debug)]
struct CoreBatch {
    core: usize,
    requests: u32,
    /// The unkeyed increments' sum.
    delta: i64,
    /// Increments with an Idempotency-Key, no key twice (usually empty: no allocation).
    keyed: Vec<KeyedIncrement>,
}

/// The owner's answer for one CoreBatch.
type BatchReply = Result<BatchAnswer, CommitError>;

#[derive(Debug, Clone)]
struct BatchAnswer {
    /// The count just before the batch's first unkeyed increment.
    base: i64,
    /// What became of each keyed increment, in order.
    keyed: Vec<KeyOutcome>,
}

/// The channels between the cores and the owner, made once at start-up.
pub struct Wiring {
    pub owner: OwnerPort,
    pub cores: Vec<CorePort>,
}

/// What the owner core needs: the queue of batches and a reply channel to every core.
pub struct OwnerPort {
    batches: flume::Receiver<CoreBatch>,
    replies: Vec<flume::Sender<BatchReply>>,
    /// The only sender of every core's `owner_alive`; moves into the [`OwnerLease`].
    alive: Option<flume::Sender<Infallible>>,
}

/// What each core needs: a way to the owner and its own reply queue.
pub struct CorePort {
    id: usize,
    /// Taken (dropped) by [`CounterCore::close`], so the owner knows when every core is done.
    to_owner: RefCell<Option<flume::Sender<CoreBatch>>>,
    replies: flume::Receiver<BatchReply>,
    /// Nothing is ever sent: it disconnects when the owner's lease (or port) is dropped.
    owner_alive: flume::Receiver<Infallible>,
}

pub fn wire(cores: usize) -> Wiring {
    let (to_owner, batches) = flume::unbounded();
    let (alive, owner_alive) = flume::bounded(0);
    let (replies, receivers): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded()).unzip();
    Wiring {
        owner: OwnerPort {
            batches,
            replies,
            alive: Some(alive),
        },
        cores: receivers
            .into_iter()
            .enumerate()
            .map(|(id, replies)| CorePort {
                id,
                to_owner: RefCell::new(Some(to_owner.clone())),
                replies,
                owner_alive: owner_alive.clone(),
            })
            .collect(),
    }
}

impl OwnerPort {
    /// The owner's proof of life. Keep it where it is dropped whatever happens to the owner's
    /// loop: on the owner thread's stack, not in a task (glommio leaks the pending tasks of an
    /// executor that panicked, so a task's locals may never be dropped). `run_owner` takes it
    /// itself if nobody did.
    pub fn lease(&mut self, shared: &Arc<CounterShared>) -> OwnerLease {
        shared.owner.store(OWNER_RUNNING, Release);
        OwnerLease {
            _alive: self.alive.take(),
            shared: shared.clone(),
        }
    }
}

/// While it lives, the cores wait for the owner's replies; once dropped, they fail what they
/// sent (outcome unknown), refuse new increments, and readiness turns false.
pub struct OwnerLease {
    _alive: Option<flume::Sender<Infallible>>,
    shared: Arc<CounterShared>,
}

impl Drop for OwnerLease {
    fn drop(&mut self) {
        let was = self.shared.owner.swap(OWNER_STOPPED, AcqRel);
        if was == OWNER_FINISHED {
            self.shared.owner.store(OWNER_FINISHED, Release);
        } else {
            log::error!(
                "the counter's owner core stopped before the counter finished: every increment \
                 now gets 503 and /api/v1/system/ready is 503; restart tally"
            );
        }
    }
}

/// The owner loop: one transaction in flight, every batch that queued meanwhile in the next.
/// Ends when every core has dropped its sender and the queue is empty, so every increment
/// received before shutdown is committed and answered.
///
/// A key already in the transaction being formed ends it: the repeat goes in the next one and
/// so waits for the first and replays its result (README.md, "API", Idempotency-Key).
pub async fn run_owner(mut port: OwnerPort, shared: Arc<CounterShared>) {
    let _lease = port.alive.is_some().then(|| port.lease(&shared));
    let mut queue: VecDeque<CoreBatch> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match port.batches.recv_async().await {
                Ok(batch) => queue.push_back(batch),
                Err(_) => break,
            }
        }
        queue.extend(port.batches.try_iter());
        shared
            .pending_increments
            .store(queue.iter().map(|b| u64::from(b.requests)).sum(), Relaxed);

        let (take, requests, delta) = next_transaction(&queue, shared.max_batch);
        let key_counts: Vec<usize> = queue.iter().take(take).map(|b| b.keyed.len()).collect();
        let keyed: Vec<KeyedIncrement> = queue
            .iter_mut()
            .take(take)
            .flat_map(|b| std::mem::take(&mut b.keyed))
            .collect();
        let started = Instant::now();
        let result = shared.store.add_batch(delta, keyed).await;
        shared
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(committed) => {
                shared.batch_size.observe(f64::from(requests));
                let mut base = committed.unkeyed_end - delta;
                let mut outcomes = committed.keyed.into_iter();
                for (batch, keys) in queue.drain(..take).zip(key_counts) {
                    let keyed = outcomes.by_ref().take(keys).collect();
                    let _ = port.replies[batch.core].send(Ok(BatchAnswer { base, keyed }));
                    base += batch.delta;
                }
            }
            Err(err) => {
                shared.failed_commits.fetch_add(1, Relaxed);
                log::warn!("counter commit of {requests} increments failed: {err}");
                for batch in queue.drain(..take) {
                    let _ = port.replies[batch.core].send(Err(err.clone()));
                }
            }
        }
    }
    shared.pending_increments.store(0, Relaxed);
    shared.owner.store(OWNER_FINISHED, Release);
}

/// How many queued batches form the next transaction, with their request count and unkeyed
/// delta. A batch repeating a key already taken starts the next transaction.
fn next_transaction(queue: &VecDeque<CoreBatch>, max_batch: usize) -> (usize, u32, i64) {
    let (mut take, mut requests, mut delta) = (0, 0u32, 0i64);
    // Allocates only when a batch has keys, and then once.
    let key_count = queue.iter().map(|b| b.keyed.len()).sum();
    let mut keys: HashSet<&str> = HashSet::with_capacity(key_count);
    for batch in queue {
        let over = max_batch > 0 && (requests + batch.requests) as usize > max_batch;
        let repeats_a_key = batch.keyed.iter().any(|k| keys.contains(&*k.key));
        if take > 0 && (over || repeats_a_key) {
            break;
        }
        keys.extend(batch.keyed.iter().map(|k| &*k.key));
        take += 1;
        requests += batch.requests;
        delta += batch.delta;
    }
    (take, requests, delta)
}

/// Increments gathered on one core between two sends to the owner.
#[derive(Default)]
struct Batch {
    requests: Cell<u32>,
    delta: Cell<i64>,
    /// Keyed increments, no key twice; a [`KeyedTicket`] holds its index here.
    keyed: RefCell<Vec<KeyedIncrement>>,
    /// A hash of each key in `keyed`, so a repeat is found without comparing against every
    /// key of the batch: that scan made a core's batch of n keys cost n^2/2 comparisons
    /// (~1 us per key at the 100-250 keys a core gathers per pass under 256 connections).
    key_hashes: RefCell<HashSet<u64>>,
    result: RefCell<Option<BatchReply>>,
    waiters: RefCell<Vec<Waker>>,
}

impl Batch {
    fn resolve(&self, reply: BatchReply) {
        *self.result.borrow_mut() = Some(reply);
        for waker in self.waiters.take() {
            waker.wake();
        }
    }
}

/// The key's hash for [`Batch::key_hashes`] (SipHash, keyed per process: a client cannot
/// choose keys that collide on purpose; a collision only costs a comparison).
fn key_hash(key: &str) -> u64 {
    thread_local! {
        static KEY_HASHER: RandomState = RandomState::new();
    }
    KEY_HASHER.with(|hasher| hasher.hash_one(key))
}

/// A core's side of the counter; lives on that core only.
pub struct CounterCore {
    port: CorePort,
    max_batch: usize,
    /// Batches not yet sent; increments join the last one while it has room.
    open: RefCell<Vec<Rc<Batch>>>,
    /// Batches sent and not yet answered, in the order the owner will answer them.
    in_flight: RefCell<VecDeque<Rc<Batch>>>,
    batcher: Cell<Option<Waker>>,
    /// Set once the owner's lease is gone: nothing sent to it would ever be answered.
    owner_gone: Cell<bool>,
}

impl CounterCore {
    pub fn new(port: CorePort, max_batch: usize) -> Rc<Self> {
        Rc::new(CounterCore {
            port,
            max_batch,
            open: RefCell::new(Vec::new()),
            in_flight: RefCell::new(VecDeque::new()),
            batcher: Cell::new(None),
            owner_gone: Cell::new(false),
        })
    }

    /// Adds `by` to this core's open batch. The ticket resolves once the batch committed.
    pub fn increment(&self, by: i64) -> Ticket {
        let mut open = self.open.borrow_mut();
        let has_room = open
            .last()
            .is_some_and(|b| self.max_batch == 0 || (b.requests.get() as usize) < self.max_batch);
        if !has_room {
            open.push(Rc::new(Batch::default()));
        }
        let Some(batch) = open.last() else {
            unreachable!("a batch was just pushed");
        };
        batch.requests.set(batch.requests.get() + 1);
        let offset = batch.delta.get() + by;
        batch.delta.set(offset);
        let ticket = Ticket {
            batch: batch.clone(),
            offset,
            registered: false,
        };
        if let Some(waker) = self.batcher.take() {
            waker.wake();
        }
        ticket
    }

    /// Adds a keyed increment to this core's open batch (a new one if that batch already has
    /// the key). The ticket resolves once the batch committed: counted, replayed or mismatch.
    pub fn increment_keyed(&self, by: i64, key: &str) -> KeyedTicket {
        let mut open = self.open.borrow_mut();
        let hash = key_hash(key);
        let has_room = open.last().is_some_and(|b| {
            (self.max_batch == 0 || (b.requests.get() as usize) < self.max_batch)
                && !(b.key_hashes.borrow().contains(&hash)
                    && b.keyed.borrow().iter().any(|k| &*k.key == key))
        });
        if !has_room {
            open.push(Rc::new(Batch::default()));
        }
        let Some(batch) = open.last() else {
            unreachable!("a batch was just pushed");
        };
        batch.requests.set(batch.requests.get() + 1);
        batch.key_hashes.borrow_mut().insert(hash);
        let mut keyed = batch.keyed.borrow_mut();
        let index = keyed.len();
        keyed.push(KeyedIncrement {
            key: key.into(),
            by,
        });
        let ticket = KeyedTicket {
            batch: batch.clone(),
            index,
            registered: false,
        };
        if let Some(waker) = self.batcher.take() {
            waker.wake();
        }
        ticket
    }

    /// Sends open batches to the owner as soon as this core's current round of work is done
    /// (the batcher is woken by `increment`, and runs after the tasks already queued).
    pub async fn run_batcher(self: Rc<Self>) {
        loop {
            let batches = std::future::poll_fn(|cx| {
                let mut open = self.open.borrow_mut();
                if open.is_empty() {
                    self.batcher.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(std::mem::take(&mut *open))
                }
            })
            .await;
            self.send(batches);
        }
    }

    /// Sends closed batches to the owner; they then wait in `in_flight` for its replies.
    fn send(&self, batches: Vec<Rc<Batch>>) {
        if self.owner_gone.get() {
            for batch in batches {
                batch.resolve(Err(CommitError::Unavailable(
                    "the counter's owner core has stopped".into(),
                )));
            }
            return;
        }
        let to_owner = self.port.to_owner.borrow();
        for batch in batches {
            let msg = CoreBatch {
                core: self.port.id,
                requests: batch.requests.get(),
                delta: batch.delta.get(),
                // The tickets keep only their index: the keys themselves move on.
                keyed: std::mem::take(&mut *batch.keyed.borrow_mut()),
            };
            // The batch is closed: nothing joins it any more.
            drop(batch.key_hashes.take());
            match to_owner.as_ref().map(|tx| tx.send(msg)) {
                Some(Ok(())) => self.in_flight.borrow_mut().push_back(batch),
                _ => batch.resolve(Err(CommitError::Unavailable(
                    "the counter is shutting down".into(),
                ))),
            }
        }
    }

    /// Batches sent to the owner and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.borrow().len()
    }

    /// Resolves batches as the owner's replies arrive (in the order the batches were sent).
    /// Once the owner is gone (its lease or its port dropped), fails every batch in flight and
    /// makes later sends fail at once.
    pub async fn run_replies(self: Rc<Self>) {
        loop {
            // Replies first: one sent just before the owner died is still delivered.
            let next = futures_lite::future::or(
                async { self.port.replies.recv_async().await.ok() },
                async {
                    let _disconnected = self.port.owner_alive.recv_async().await;
                    None
                },
            )
            .await;
            let Some(reply) = next else { break };
            let batch = self.in_flight.borrow_mut().pop_front();
            match batch {
                Some(batch) => batch.resolve(reply),
                None => log::error!("counter reply without a batch in flight"),
            }
        }
        self.owner_gone.set(true);
        let orphans = std::mem::take(&mut *self.in_flight.borrow_mut());
        for batch in orphans {
            // The owner may have sent it to the store before it stopped.
            batch.resolve(Err(CommitError::Unknown(
                "the counter's owner core stopped before answering".into(),
            )));
        }
    }

    /// Sends any increment still open, then drops this core's sender so the owner can finish
    /// once every core is done. Replies to what was sent keep arriving.
    pub fn close(&self) {
        let open = std::mem::take(&mut *self.open.borrow_mut());
        self.send(open);
        self.port.to_owner.borrow_mut().take();
    }
}

/// A request's claim on a value: resolves to the count right after its own increment.
pub struct Ticket {
    batch: Rc<Batch>,
    /// Sum of the batch's deltas up to and including this request's.
    offset: i64,
    registered: bool,
}

impl Future for Ticket {
    type Output = Result<i64, CommitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(reply) = self.batch.result.borrow().as_ref() {
            return Poll::Ready(match reply {
                Ok(answer) => Ok(answer.base + self.offset),
                Err(error) => Err(error.clone()),
            });
        }
        if !self.registered {
            self.batch.waiters.borrow_mut().push(cx.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}

/// A keyed request's claim: resolves to what became of its key.
pub struct KeyedTicket {
    batch: Rc<Batch>,
    /// Its place in the batch's keyed increments (and in the answer's outcomes).
    index: usize,
    registered: bool,
}

impl Future for KeyedTicket {
    type Output = Result<KeyOutcome, CommitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(reply) = self.batch.result.borrow().as_ref() {
            return Poll::Ready(match reply {
                Ok(answer) => answer.keyed.get(self.index).copied().ok_or_else(|| {
                    CommitError::Unknown("the store answered fewer keys than it was sent".into())
                }),
                Err(error) => Err(error.clone()),
            });
        }
        if !self.registered {
            self.batch.waiters.borrow_mut().push(cx.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}

/// Parses a POST /api/v1/counter body: empty means 1; otherwise a JSON object whose optional
/// `by` is an integer in 1..=2^31-1 (other fields are ignored).
pub fn parse_by(body: &mut [u8]) -> Result<i64, &'static str> {
    use simd_json::prelude::*;
    if body.is_empty() {
        return Ok(1);
    }
    let value = simd_json::to_borrowed_value(body).map_err(|_| "body is not valid JSON")?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    let Some(by) = object.get("by") else {
        return Ok(1);
    };
    let n = by
        .as_i64()
        .filter(|_| by.is_i64() || by.is_u64())
        .ok_or("by must be an integer")?;
    if !(1..=MAX_BY).contains(&n) {
        return Err("by must be an integer from 1 to 2147483647");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(s: &str) -> Result<i64, &'static str> {
        parse_by(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn empty_body_and_empty_object_increment_by_one() {
        assert_eq!(by(""), Ok(1));
        assert_eq!(by("{}"), Ok(1));
        assert_eq!(by(r#"{"other": true}"#), Ok(1));
    }

    #[test]
    fn by_accepts_one_to_i32_max() {
        assert_eq!(by(r#"{"by": 1}"#), Ok(1));
        assert_eq!(by(r#"{"by": 2147483647}"#), Ok(2_147_483_647));
    }

    #[test]
    fn by_rejects_zero_negative_too_large_and_non_integers() {
        for body in [
            r#"{"by": 0}"#,
            r#"{"by": -1}"#,
            r#"{"by": 2147483648}"#,
            r#"{"by": 1.5}"#,
            r#"{"by": 1.0}"#,
            r#"{"by": "3"}"#,
            r#"{"by": null}"#,
            r#"{"by": 18446744073709551615}"#,
            "[1]",
            "7",
            "{",
            " ",
        ] {
            assert!(by(body).is_err(), "{body} was accepted");
        }
    }

    fn batch(core: usize, requests: u32, delta: i64) -> CoreBatch {
        CoreBatch {
            core,
            requests,
            delta,
            keyed: Vec::new(),
        }
    }

    fn keyed_batch(core: usize, keys: &[&str]) -> CoreBatch {
        CoreBatch {
            keyed: keys
                .iter()
                .map(|&key| KeyedIncrement {
                    key: key.into(),
                    by: 1,
                })
                .collect(),
            ..batch(core, keys.len() as u32, 0)
        }
    }

    #[test]
    fn a_repeated_key_waits_for_the_next_transaction() {
        let q: VecDeque<_> = [
            keyed_batch(0, &["a", "b"]),
            batch(1, 2, 2),
            keyed_batch(1, &["c"]),
            keyed_batch(2, &["b"]),
            keyed_batch(3, &["d"]),
        ]
        .into();
        assert_eq!(next_transaction(&q, 0), (3, 5, 2));
    }

    #[test]
    fn a_transaction_takes_every_queued_batch_without_a_cap() {
        let q: VecDeque<_> = [batch(0, 3, 3), batch(1, 5, 9)].into();
        assert_eq!(next_transaction(&q, 0), (2, 8, 12));
    }

    #[test]
    fn a_cap_of_one_gives_one_increment_per_transaction() {
        let q: VecDeque<_> = [batch(0, 1, 4), batch(1, 1, 1)].into();
        assert_eq!(next_transaction(&q, 1), (1, 1, 4));
    }
}
