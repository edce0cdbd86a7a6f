//! The channels between every core and every owner core ([`wire`]), and the messages on them:
//! a core's batch for one owner ([`CoreBatch`]) and the owner's answer ([`BatchAnswer`]).

use std::cell::RefCell;
use std::convert::Infallible;

use crate::counter::store::NamedKeyed;
use crate::counter::{CommitError, KeyOutcome};

/// The channels of named counters, made once at start-up: one [`OwnerPort`] and one
/// [`CorePort`] per core (every core owns the names that hash to it).
pub struct Wiring {
    pub owners: Vec<OwnerPort>,
    pub cores: Vec<CorePort>,
}

/// What an owner core needs: its queue of batches and a reply channel to every core.
pub struct OwnerPort {
    pub(super) core: usize,
    pub(super) batches: flume::Receiver<CoreBatch>,
    pub(super) replies: Vec<flume::Sender<(usize, BatchReply)>>,
    /// The only sender of every core's `owners_alive[core]`; moves into the [`Lease`].
    pub(super) alive: Option<flume::Sender<Infallible>>,
}

/// What each core needs: a way to every owner, and its own reply queue.
pub struct CorePort {
    pub(super) id: usize,
    /// Per owner; taken (dropped) by `close`, so each owner knows when every core is done.
    pub(super) to_owners: RefCell<Vec<flume::Sender<CoreBatch>>>,
    /// `(owner, reply)`, each owner's replies in the order this core sent it batches.
    pub(super) replies: flume::Receiver<(usize, BatchReply)>,
    /// Per owner: nothing is sent; it disconnects when that owner's [`Lease`] is dropped.
    pub(super) owners_alive: Vec<flume::Receiver<Infallible>>,
}

/// An owner core's proof of life, kept on its thread's stack (see `counter::OwnerLease`, the
/// single counter's): once dropped, every core fails what it sent that owner.
pub struct Lease {
    _alive: Option<flume::Sender<Infallible>>,
}

impl OwnerPort {
    pub fn lease(&mut self) -> Lease {
        Lease {
            _alive: self.alive.take(),
        }
    }
}

pub fn wire(cores: usize) -> Wiring {
    let (to_owner, batches): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded()).unzip();
    let (alive, owners_alive): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(0)).unzip();
    let (replies, reply_queues): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::unbounded()).unzip();
    Wiring {
        owners: batches
            .into_iter()
            .zip(alive)
            .enumerate()
            .map(|(core, (batches, alive))| OwnerPort {
                core,
                batches,
                replies: replies.clone(),
                alive: Some(alive),
            })
            .collect(),
        cores: reply_queues
            .into_iter()
            .enumerate()
            .map(|(id, replies)| CorePort {
                id,
                to_owners: RefCell::new(to_owner.clone()),
                replies,
                owners_alive: owners_alive.clone(),
            })
            .collect(),
    }
}

/// One core's increments for the names one owner owns.
#[derive(Debug)]
pub(super) struct CoreBatch {
    pub(super) core: usize,
    pub(super) requests: u32,
    /// Unique names, each with the sum of this core's unkeyed increments to it (0 for a name
    /// with keyed increments only).
    pub(super) names: Vec<(Box<str>, i64)>,
    /// Keyed increments (`name` indexes `names`), no (name, key) twice.
    pub(super) keyed: Vec<NamedKeyed>,
}

/// The owner's answer for one [`CoreBatch`].
pub(super) type BatchReply = Result<BatchAnswer, CommitError>;

/// A committed [`CoreBatch`]: per name, in its order, the count just before its first
/// increment, or `None` when the counter limit refused to create that counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAnswer {
    pub(super) bases: Vec<Option<i64>>,
    /// Per keyed increment, in order: what became of it (`None`: its name was refused).
    pub(super) keyed: Vec<Option<KeyOutcome>>,
    /// `--max-counters`, for the message of a refused name.
    pub(super) limit: i64,
}
