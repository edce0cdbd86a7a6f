//! The store thread: its tokio runtime, and the session loop that connects (with back-off),
//! settles what is in doubt, then serves requests, refreshes and sweeps on one connection until
//! it is lost or the store shuts down. Builds the [`Store`] (see `state`) the other rooms
//! work on, and drives it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::config::StoreConfig;
use super::connect::{connect, Connection};
use super::error::{statement_was_rejected, CommitError, StoreError};
use super::messages::{NamedCountsReply, Request};
use super::outage::refuse_until_shutdown;
use super::shared::Shared;
use super::state::Store;
use super::sweep::{Sweep, INSTANCE_TOUCH_INTERVAL, PRUNE_INTERVAL};

/// Most read requests of named counters served by one statement.
const READS_AT_ONCE: usize = 256;

/// Reconnect back-off: doubles from the first to the last value after each failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The body of the `tally-store` thread: builds its runtime and runs the [`Store`] on it until
/// shutdown (or, without a runtime, refuses every increment).
pub(super) fn run_thread(config: StoreConfig, queue: flume::Receiver<Request>, shared: &Shared) {
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
        legacy_sweep: Cell::new(Sweep::default()),
        outage_since: Cell::new(None),
        held: RefCell::new(VecDeque::new()),
        named_recount_at: Cell::new(Instant::now()),
        stashed: RefCell::new(None),
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

/// Why serving a connection stopped.
enum Served {
    Lost,
    ShutDown,
}

impl Store<'_> {
    /// Serves until shutdown, then answers whatever still waits: the in-doubt batch with its
    /// unknown outcome, held increments with `Unavailable`.
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

    /// Connects, settles, serves until the connection is lost, and again, until shutdown.
    /// Every failed attempt pauses by the back-off (see [`Store::back_off`]).
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
            let ready = match result {
                Ok(connection) => self.make_ready(connection).await,
                Err(error) => {
                    self.connect_failed(error);
                    None
                }
            };
            match ready {
                Some(connection) => {
                    backoff = BACKOFF_FIRST;
                    if let Served::ShutDown = self.serve_until_lost(connection).await {
                        return;
                    }
                }
                None if self.back_off(&mut backoff).await => {}
                None => return,
            }
        }
    }

    /// Pauses before the next attempt (see [`Store::pause`]), answering requests meanwhile,
    /// and doubles `backoff` up to [`BACKOFF_MAX`]; false on shutdown.
    async fn back_off(&self, backoff: &mut Duration) -> bool {
        let pause = tokio::time::sleep(self.pause(*backoff));
        if self.refusing_requests_during(pause).await.is_none() {
            return false;
        }
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        true
    }

    fn connect_failed(&mut self, error: StoreError) {
        self.shared
            .stats
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        let error = error.to_string();
        if error != self.last_error {
            log::warn!("cannot connect to PostgreSQL (retrying): {error}");
        }
        self.last_error = error;
    }

    /// A new connection, made fit to serve: the count read, the in-doubt batch settled.
    /// `None` (the connection dropped) when either fails.
    async fn make_ready(&self, connection: Connection) -> Option<Connection> {
        self.shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        // Connected (and so ready) promises a known count: read it first, or a GET right
        // after /ready turned 200 could still get 503.
        if !self.refresh(&connection).await {
            connection.abandon();
            return None;
        }
        if let Err(error) = self.settle_in_doubt(&connection).await {
            log::warn!("settling an in-doubt batch: {error}; reconnecting");
            connection.abandon();
            return None;
        }
        Some(connection)
    }

    /// Serves on a ready connection, marked connected (for `/ready`) meanwhile.
    async fn serve_until_lost(&mut self, connection: Connection) -> Served {
        self.outage_since.set(None);
        self.shared.connected.store(true, Ordering::Release);
        log::info!("connected to PostgreSQL");
        let served = self.serve(connection).await;
        self.shared.connected.store(false, Ordering::Release);
        if let Served::Lost = served {
            self.outage_since.set(Some(Instant::now()));
            self.shared
                .stats
                .disconnects
                .fetch_add(1, Ordering::Relaxed);
            self.last_error = "connection to PostgreSQL lost; reconnecting".into();
        }
        served
    }

    /// Serves requests, refreshes and sweeps on `connection`; closes it politely on shutdown,
    /// drops it at once when lost (its state is unknown).
    async fn serve(&self, mut connection: Connection) -> Served {
        let served = self.serve_on(&mut connection).await;
        match served {
            Served::Lost => connection.abandon(),
            Served::ShutDown => connection.close().await,
        }
        served
    }

    async fn serve_on(&self, connection: &mut Connection) -> Served {
        let mut refresh = tokio::time::interval(self.config.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // What waited for this connection goes first, in the order it arrived; then a
            // request taken off the queue while gathering reads.
            let held = self.held.borrow_mut().pop_front();
            if let Some(add) = held {
                if !self.run_add(connection, add).await {
                    return Served::Lost;
                }
                continue;
            }
            let stashed = self.stashed.borrow_mut().take();
            if let Some(request) = stashed {
                if let Some(served) = self.serve_request(connection, request).await {
                    return served;
                }
                continue;
            }
            // Biased: a dead connection is noticed first, and a waiting commit goes before a
            // refresh (commits return the row's count anyway).
            tokio::select! {
                biased;
                _ = &mut connection.closed => {
                    log::warn!("connection to PostgreSQL closed");
                    return Served::Lost;
                }
                request = self.queue.recv_async() => match request {
                    Ok(request) => {
                        if let Some(served) = self.serve_request(connection, request).await {
                            return served;
                        }
                    }
                    Err(_) => return Served::ShutDown,
                },
                _ = refresh.tick() => {
                    if !self.refresh(connection).await {
                        return Served::Lost;
                    }
                }
                _ = prune.tick() => match self.prune(connection).await {
                    None => return Served::Lost,
                    // More expired rows are waiting: prune again after the next commit.
                    Some(true) => prune.reset_immediately(),
                    Some(false) => {}
                },
            }
        }
    }

    /// Serves one request from the queue; `Some` when serving on this connection ends.
    async fn serve_request(&self, connection: &Connection, request: Request) -> Option<Served> {
        match request {
            Request::Add(add) => (!self.run_add(connection, add).await).then_some(Served::Lost),
            Request::ReadNamed { names, reply } => self.serve_reads(connection, names, reply).await,
            Request::DeleteNamed { name, reply } => {
                let deleted = self.delete_named(connection, &name).await;
                let lost = deleted
                    .as_ref()
                    .is_err_and(CommitError::leaves_connection_unusable);
                let _ = reply.send(deleted);
                lost.then_some(Served::Lost)
            }
            Request::Shutdown => Some(Served::ShutDown),
        }
    }

    /// Serves a read of named counters with every read queued behind it, in one statement
    /// (up to [`READS_AT_ONCE`] requests); the first other request taken off the queue waits
    /// in `stashed` and goes next.
    async fn serve_reads(
        &self,
        connection: &Connection,
        names: Vec<Box<str>>,
        reply: Option<NamedCountsReply>,
    ) -> Option<Served> {
        let mut reads = vec![(names, reply)];
        while reads.len() < READS_AT_ONCE {
            match self.queue.try_recv() {
                Ok(Request::ReadNamed { names, reply }) => reads.push((names, reply)),
                Ok(other) => {
                    *self.stashed.borrow_mut() = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let mut all: Vec<Box<str>> = reads
            .iter()
            .flat_map(|(names, _)| names.iter().cloned())
            .collect();
        all.sort_unstable();
        all.dedup();
        let read = self.read_named(connection, &all).await;
        let lost = read
            .as_ref()
            .is_err_and(CommitError::leaves_connection_unusable);
        for (names, reply) in reads {
            let Some(reply) = reply else { continue };
            let answer = match &read {
                Ok(counts) => Ok(names
                    .iter()
                    .map(|name| {
                        all.binary_search(name)
                            .ok()
                            .and_then(|at| counts.get(at).copied())
                            .unwrap_or(0)
                    })
                    .collect()),
                Err(error) => Err(error.clone()),
            };
            let _ = reply.send(answer);
        }
        lost.then_some(Served::Lost)
    }

    /// Reads the row (a named store: the number of named counters, now and then); false when
    /// the connection should be dropped.
    async fn refresh(&self, connection: &Connection) -> bool {
        if self.config.named.is_some() {
            let recount = self.recount_named(connection);
            return match tokio::time::timeout(self.config.commit_timeout, recount).await {
                Ok(Ok(())) => true,
                Ok(Err(error)) => {
                    log::warn!("counting the named counters: {error}");
                    false
                }
                Err(_elapsed) => false,
            };
        }
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
}
