//! A core's side of named counters ([`Core`]): each increment joins this core's open batch for
//! the name's owner; the batcher task sends closed batches to their owners, the reply task
//! resolves them in order, per owner. GET is answered from what the owner's store last saw,
//! or by a read through it. Lives on one core; knows nothing of PostgreSQL.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::counter::batcher::next_open;
use crate::counter::store::NamedKeyed;
use crate::counter::ticket::{Outcome, Resolves, Ticket};
use crate::counter::{CommitError, KeyOutcome};

use super::name::owner_of;
use super::wiring::{BatchAnswer, BatchReply, CoreBatch, CorePort};
use super::Shared;

/// Increments one core gathered for one owner between two sends.
pub struct Batch {
    owner: usize,
    requests: Cell<u32>,
    /// Each name's place in `deltas`.
    index: RefCell<HashMap<Box<str>, u32>>,
    deltas: RefCell<Vec<i64>>,
    /// Keyed increments (`name` indexes `deltas`); `keys` holds each (name, key) once.
    keyed: RefCell<Vec<NamedKeyed>>,
    keys: RefCell<HashSet<(u32, Box<str>)>>,
    outcome: Outcome<BatchAnswer>,
}

impl Batch {
    /// `name`'s entry in this batch, added (with no delta yet) if it has none.
    fn entry(&self, name: &str) -> u32 {
        let mut index = self.index.borrow_mut();
        if let Some(&entry) = index.get(name) {
            return entry;
        }
        let mut deltas = self.deltas.borrow_mut();
        let entry = deltas.len() as u32;
        index.insert(name.into(), entry);
        deltas.push(0);
        entry
    }

    fn has_key(&self, name: &str, key: &str) -> bool {
        let Some(&entry) = self.index.borrow().get(name) else {
            return false;
        };
        let keys = self.keys.borrow();
        // Allocates only to look up a key that may repeat; keyed increments allocate anyway.
        keys.contains(&(entry, key.into()))
    }
}

impl Resolves for Batch {
    type Answer = BatchAnswer;

    fn outcome(&self) -> &Outcome<BatchAnswer> {
        &self.outcome
    }
}

/// An increment's place in its batch: its name's entry, and the sum of that name's deltas in
/// the batch up to and including its own.
pub struct NamedPlace {
    entry: u32,
    offset: i64,
}

/// What became of an increment of a named counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The count right after this increment.
    Count(i64),
    /// Not counted: the counter did not exist and the counter limit (`--max-counters`) is
    /// reached.
    LimitReached { limit: i64 },
}

impl crate::counter::ticket::Place for NamedPlace {
    type Batch = Batch;
    type Value = Counted;

    fn read(&self, answer: &BatchAnswer) -> Result<Counted, CommitError> {
        match answer.bases.get(self.entry as usize) {
            Some(Some(base)) => Ok(Counted::Count(base + self.offset)),
            Some(None) => Ok(Counted::LimitReached {
                limit: answer.limit,
            }),
            None => Err(CommitError::Unknown(
                "the owner answered fewer names than it was sent".into(),
            )),
        }
    }
}

/// A request's claim on its named increment's outcome.
pub type NamedTicket = Ticket<NamedPlace>;

/// What became of a keyed increment of a named counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyedCounted {
    Outcome(KeyOutcome),
    /// Not counted: the counter did not exist and the counter limit is reached.
    LimitReached {
        limit: i64,
    },
}

/// A keyed increment's place among its batch's keyed increments.
pub struct NamedKeyIndex(usize);

impl crate::counter::ticket::Place for NamedKeyIndex {
    type Batch = Batch;
    type Value = KeyedCounted;

    fn read(&self, answer: &BatchAnswer) -> Result<KeyedCounted, CommitError> {
        match answer.keyed.get(self.0) {
            Some(Some(outcome)) => Ok(KeyedCounted::Outcome(*outcome)),
            Some(None) => Ok(KeyedCounted::LimitReached {
                limit: answer.limit,
            }),
            None => Err(CommitError::Unknown(
                "the owner answered fewer keys than it was sent".into(),
            )),
        }
    }
}

/// A keyed request's claim on what became of its key.
pub type NamedKeyedTicket = Ticket<NamedKeyIndex>;

/// A read whose answer is not in memory: a query through the owner's store.
pub type Read = Pin<Box<dyn Future<Output = Result<i64, CommitError>>>>;

/// A deletion through the owner's store: the counter's last count, `None` if it had none.
pub type Delete = Pin<Box<dyn Future<Output = Result<Option<i64>, CommitError>>>>;

/// What a GET gets: the count now, or a read to await.
pub enum Get {
    Now(i64),
    Later(Read),
}

/// A core's side of named counters; lives on that core only.
pub struct Core {
    port: CorePort,
    shared: Arc<Shared>,
    /// Batches not yet sent; an increment joins the last one for its owner while it has room.
    open: RefCell<Vec<Rc<Batch>>>,
    /// Per owner: batches sent and not yet answered, in the order they were sent.
    in_flight: RefCell<Vec<VecDeque<Rc<Batch>>>>,
    batcher: Cell<Option<Waker>>,
    /// Per owner: set once its lease is gone (nothing sent to it would be answered).
    owner_gone: Vec<Cell<bool>>,
}

impl Core {
    pub fn new(port: CorePort, shared: Arc<Shared>) -> Rc<Core> {
        let owners = port.owners_alive.len();
        Rc::new(Core {
            port,
            shared,
            open: RefCell::new(Vec::new()),
            in_flight: RefCell::new((0..owners).map(|_| VecDeque::new()).collect()),
            batcher: Cell::new(None),
            owner_gone: (0..owners).map(|_| Cell::new(false)).collect(),
        })
    }

    fn owner(&self, name: &str) -> usize {
        owner_of(name, self.owner_gone.len())
    }

    /// Adds `by` to the counter `name` (a valid name: `counter_name`). The ticket resolves
    /// once its owner committed it.
    pub fn increment(&self, name: &str, by: i64) -> NamedTicket {
        let batch = self.open_batch(name, None);
        let entry = batch.entry(name);
        let mut deltas = batch.deltas.borrow_mut();
        let offset = deltas[entry as usize] + by;
        deltas[entry as usize] = offset;
        drop(deltas);
        Ticket::new(batch, NamedPlace { entry, offset })
    }

    /// Adds a keyed increment to the counter `name` (in a new batch if the open one already
    /// has this key for this name). The ticket resolves once its owner committed it: counted,
    /// replayed or a mismatch.
    pub fn increment_keyed(&self, name: &str, by: i64, key: &str) -> NamedKeyedTicket {
        let batch = self.open_batch(name, Some(key));
        let entry = batch.entry(name);
        batch.keys.borrow_mut().insert((entry, key.into()));
        let mut keyed = batch.keyed.borrow_mut();
        let index = keyed.len();
        keyed.push(NamedKeyed {
            name: entry,
            key: key.into(),
            by,
        });
        drop(keyed);
        Ticket::new(batch, NamedKeyIndex(index))
    }

    /// The open batch for `name`'s owner an increment joins (counted in it), a new one if the
    /// last is full or already has `key` for `name`; wakes the batcher.
    fn open_batch(&self, name: &str, key: Option<&str>) -> Rc<Batch> {
        let owner = self.owner(name);
        let max_batch = self.shared.max_batch;
        let mut open = self.open.borrow_mut();
        let found = open.iter().rposition(|b| b.owner == owner);
        let batch = match found {
            Some(at)
                if (max_batch == 0 || (open[at].requests.get() as usize) < max_batch)
                    && !key.is_some_and(|key| open[at].has_key(name, key)) =>
            {
                open[at].clone()
            }
            _ => {
                let batch = Rc::new(Batch {
                    owner,
                    requests: Cell::new(0),
                    index: RefCell::new(HashMap::new()),
                    deltas: RefCell::new(Vec::new()),
                    keyed: RefCell::new(Vec::new()),
                    keys: RefCell::new(HashSet::new()),
                    outcome: Outcome::default(),
                });
                open.push(batch.clone());
                batch
            }
        };
        batch.requests.set(batch.requests.get() + 1);
        if let Some(waker) = self.batcher.take() {
            waker.wake();
        }
        batch
    }

    /// The count of `name` (0 for a counter never incremented): what its owner's store last
    /// committed or read (refreshed in the background when older than `fresh_for`), else read
    /// through that store. Never below a count this instance answered: the store records each
    /// commit before it is answered, and a read runs after the commits sent before it.
    pub fn get(&self, name: &str) -> Get {
        let store = &self.shared.stores[self.owner(name)];
        if let Some(count) = store.named_count(name, self.shared.fresh_for) {
            self.shared.reads_cached.fetch_add(1, Relaxed);
            return Get::Now(count);
        }
        self.shared.reads_queried.fetch_add(1, Relaxed);
        let store = store.clone();
        let name: Box<str> = name.into();
        Get::Later(Box::pin(async move {
            let counts = store.read_named(vec![name]).await?;
            counts
                .first()
                .copied()
                .ok_or_else(|| CommitError::Unknown("the store read no count".into()))
        }))
    }

    /// Deletes the counter `name`: its last count, `None` if it did not exist.
    pub fn delete(&self, name: &str) -> Delete {
        let store = self.shared.stores[self.owner(name)].clone();
        let name: Box<str> = name.into();
        Box::pin(async move { store.delete_named(name).await })
    }

    /// Sends open batches to their owners once this core's current round of work is done.
    pub async fn run_batcher(self: Rc<Self>) {
        loop {
            let batches = next_open(&self.open, &self.batcher).await;
            self.send(batches);
        }
    }

    fn send(&self, batches: Vec<Rc<Batch>>) {
        let to_owners = self.port.to_owners.borrow();
        for batch in batches {
            let owner = batch.owner;
            if self.owner_gone[owner].get() {
                batch.outcome.resolve(Err(CommitError::Unavailable(
                    "the owner core of this counter has stopped".into(),
                )));
                continue;
            }
            let deltas = batch.deltas.take();
            let mut names: Vec<(Box<str>, i64)> = vec![(Box::default(), 0); deltas.len()];
            for (name, entry) in batch.index.take() {
                names[entry as usize] = (name, deltas[entry as usize]);
            }
            drop(batch.keys.take());
            let msg = CoreBatch {
                core: self.port.id,
                requests: batch.requests.get(),
                names,
                keyed: batch.keyed.take(),
            };
            match to_owners.get(owner).map(|tx| tx.send(msg)) {
                Some(Ok(())) => self.in_flight.borrow_mut()[owner].push_back(batch),
                _ => batch.outcome.resolve(Err(CommitError::Unavailable(
                    "named counters are shutting down".into(),
                ))),
            }
        }
    }

    /// Resolves batches as the owners' replies arrive; fails what was sent to an owner whose
    /// lease is gone, and makes later sends to it fail at once.
    pub async fn run_replies(self: Rc<Self>) {
        let mut watches: Vec<Option<flume::r#async::RecvFut<'static, std::convert::Infallible>>> =
            self.port
                .owners_alive
                .iter()
                .map(|alive| Some(alive.clone().into_recv_async()))
                .collect();
        loop {
            // Replies first: one sent just before an owner died is still delivered.
            let event = futures_lite::future::or(
                async { Event::Reply(self.port.replies.recv_async().await.ok()) },
                std::future::poll_fn(|cx| poll_gone(&mut watches, cx)),
            )
            .await;
            match event {
                Event::Reply(Some((owner, reply))) => self.resolve(owner, reply),
                Event::Reply(None) => break,
                Event::OwnerGone(owner) => {
                    self.owner_gone[owner].set(true);
                    let orphans = std::mem::take(&mut self.in_flight.borrow_mut()[owner]);
                    for batch in orphans {
                        batch.outcome.resolve(Err(CommitError::Unknown(
                            "the owner core of this counter stopped before answering".into(),
                        )));
                    }
                }
            }
        }
    }

    fn resolve(&self, owner: usize, reply: BatchReply) {
        let batch = self
            .in_flight
            .borrow_mut()
            .get_mut(owner)
            .and_then(VecDeque::pop_front);
        match batch {
            Some(batch) => batch.outcome.resolve(reply),
            None => log::error!("named counter reply from core {owner} without a batch in flight"),
        }
    }

    /// Sends any increment still open, then drops this core's senders so the owners can finish
    /// once every core is done. Replies to what was sent keep arriving.
    pub fn close(&self) {
        let open = std::mem::take(&mut *self.open.borrow_mut());
        self.send(open);
        self.port.to_owners.borrow_mut().clear();
    }

    /// Batches sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.borrow().iter().map(VecDeque::len).sum()
    }
}

enum Event {
    Reply(Option<(usize, BatchReply)>),
    OwnerGone(usize),
}

/// Ready with the first owner whose lease is gone (each reported once).
fn poll_gone(
    watches: &mut [Option<flume::r#async::RecvFut<'static, std::convert::Infallible>>],
    cx: &mut Context<'_>,
) -> Poll<Event> {
    for (owner, watch) in watches.iter_mut().enumerate() {
        let Some(fut) = watch else { continue };
        if Pin::new(fut).poll(cx).is_ready() {
            *watch = None;
            return Poll::Ready(Event::OwnerGone(owner));
        }
    }
    Poll::Pending
}
