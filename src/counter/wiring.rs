//! The channels between the cores and the owner core, made once at start-up ([`wire`]), and
//! the messages on them: a core's closed batch ([`CoreBatch`]) and the owner's reply.

use std::cell::RefCell;
use std::convert::Infallible;

use super::{CommitError, KeyOutcome, KeyedIncrement};

/// The channels between the cores and the owner, made once at start-up.
pub struct Wiring {
    pub owner: OwnerPort,
    pub cores: Vec<CorePort>,
}

/// What the owner core needs: the queue of batches and a reply channel to every core.
pub struct OwnerPort {
    pub(super) batches: flume::Receiver<CoreBatch>,
    pub(super) replies: Vec<flume::Sender<BatchReply>>,
    /// The only sender of every core's `owner_alive`; moves into the
    /// [`OwnerLease`](super::OwnerLease).
    pub(super) alive: Option<flume::Sender<Infallible>>,
}

/// What each core needs: a way to the owner and its own reply queue.
pub struct CorePort {
    pub(super) id: usize,
    /// Taken (dropped) by [`CounterCore::close`](super::CounterCore::close), so the owner knows
    /// when every core is done.
    pub(super) to_owner: RefCell<Option<flume::Sender<CoreBatch>>>,
    pub(super) replies: flume::Receiver<BatchReply>,
    /// Nothing is ever sent: it disconnects when the owner's lease (or port) is dropped.
    pub(super) owner_alive: flume::Receiver<Infallible>,
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

/// One core's batch of increments, as sent to the owner.
#[derive(Debug)]
pub(super) struct CoreBatch {
    pub(super) core: usize,
    pub(super) requests: u32,
    /// The unkeyed increments' sum.
    pub(super) delta: i64,
    /// Increments with an Idempotency-Key, no key twice (usually empty: no allocation).
    pub(super) keyed: Vec<KeyedIncrement>,
}

/// The owner's answer for one CoreBatch.
pub(super) type BatchReply = Result<BatchAnswer, CommitError>;

/// The owner's answer for a committed CoreBatch. `pub` only so that the tickets' `Place` can
/// name it; this module is private, so it goes no further than `counter`.
#[derive(Debug, Clone)]
pub struct BatchAnswer {
    /// The count just before the batch's first unkeyed increment.
    pub(super) base: i64,
    /// What became of each keyed increment, in order.
    pub(super) keyed: Vec<KeyOutcome>,
}
