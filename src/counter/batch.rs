//! A core's side of the counter ([`CounterCore`]): increments join the core's open
//! [`Batch`] (defined beside the tickets that wait on it, in `ticket`); the batcher task sends
//! closed batches to the owner, the reply task resolves them in order. Lives on one core;
//! knows nothing of PostgreSQL.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::task::Waker;

use super::batcher::next_open;
use super::ticket::{Batch, KeyIndex, KeyedTicket, Offset, Ticket};
use super::wiring::{CoreBatch, CorePort};
use super::{CommitError, KeyedIncrement};

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
        let ticket = Ticket::new(batch.clone(), Offset(offset));
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
        let ticket = KeyedTicket::new(batch.clone(), KeyIndex(index));
        if let Some(waker) = self.batcher.take() {
            waker.wake();
        }
        ticket
    }

    /// Sends open batches to the owner as soon as this core's current round of work is done
    /// (the batcher is woken by `increment`, and runs after the tasks already queued).
    pub async fn run_batcher(self: Rc<Self>) {
        loop {
            let batches = next_open(&self.open, &self.batcher).await;
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
