//! What a request holds while its increment commits: a [`Ticket`] (the count right after its
//! increment) or a [`KeyedTicket`] (what became of its key), both resolved by their
//! [`Batch`], which lives here too: the increments one core gathers between two sends, and
//! the answer and wakers its tickets share. `batch` fills and resolves it.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::wiring::{BatchAnswer, BatchReply};
use super::{CommitError, KeyOutcome, KeyedIncrement};

/// Increments gathered on one core between two sends to the owner.
#[derive(Default)]
pub struct Batch {
    pub(super) requests: Cell<u32>,
    pub(super) delta: Cell<i64>,
    /// Keyed increments, no key twice; a [`KeyedTicket`] holds its index here.
    pub(super) keyed: RefCell<Vec<KeyedIncrement>>,
    /// A hash of each key in `keyed`, so a repeat is found without comparing against every
    /// key of the batch: that scan made a core's batch of n keys cost n^2/2 comparisons, and a
    /// core gathers hundreds of keys per pass under load (measured in commit ece5077).
    pub(super) key_hashes: RefCell<HashSet<u64>>,
    pub(super) outcome: Outcome<BatchAnswer>,
}

impl Batch {
    pub(super) fn resolve(&self, reply: BatchReply) {
        self.outcome.resolve(reply);
    }
}

impl Resolves for Batch {
    type Answer = BatchAnswer;

    fn outcome(&self) -> &Outcome<BatchAnswer> {
        &self.outcome
    }
}

/// A batch's answer, once the owner gave it, and the tickets waiting for it.
pub struct Outcome<A> {
    result: RefCell<Option<Result<A, CommitError>>>,
    waiters: RefCell<Vec<Waker>>,
}

impl<A> Default for Outcome<A> {
    fn default() -> Self {
        Outcome {
            result: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
        }
    }
}

impl<A> Outcome<A> {
    pub(crate) fn resolve(&self, result: Result<A, CommitError>) {
        *self.result.borrow_mut() = Some(result);
        for waker in self.waiters.take() {
            waker.wake();
        }
    }
}

/// A batch its tickets wait on: where its [`Outcome`] is.
pub trait Resolves {
    type Answer;
    fn outcome(&self) -> &Outcome<Self::Answer>;
}

/// A request's claim on its batch's answer, resolved once the batch is: by default (a plain
/// increment) to the count right after its own increment; as a [`KeyedTicket`], to what became
/// of its key. `P` is the request's place in the batch, which says what it gets.
pub struct Ticket<P: Place = Offset> {
    batch: Rc<P::Batch>,
    place: P,
    /// Whether this ticket's waker is among the batch's waiters (the batch wakes each once,
    /// when it resolves, so registering once is enough).
    registered: bool,
}

/// A keyed request's claim: resolves to what became of its key.
pub type KeyedTicket = Ticket<KeyIndex>;

impl<P: Place> Ticket<P> {
    pub(crate) fn new(batch: Rc<P::Batch>, place: P) -> Self {
        Ticket {
            batch,
            place,
            registered: false,
        }
    }
}

impl<P: Place + Unpin> Future for Ticket<P> {
    type Output = Result<P::Value, CommitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = self.batch.outcome();
        if let Some(reply) = outcome.result.borrow().as_ref() {
            return Poll::Ready(match reply {
                Ok(answer) => self.place.read(answer),
                Err(error) => Err(error.clone()),
            });
        }
        if !self.registered {
            outcome.waiters.borrow_mut().push(cx.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}

/// A request's place in its batch: what part of the owner's answer is its own. The two below
/// are the single counter's; `named` has its own.
pub trait Place {
    /// The batch the request joined.
    type Batch: Resolves;
    type Value;
    fn read(&self, answer: &<Self::Batch as Resolves>::Answer) -> Result<Self::Value, CommitError>;
}

/// A plain increment's place: the sum of the batch's deltas up to and including its own.
pub struct Offset(pub(super) i64);

impl Place for Offset {
    type Batch = Batch;
    type Value = i64;

    fn read(&self, answer: &BatchAnswer) -> Result<i64, CommitError> {
        Ok(answer.base + self.0)
    }
}

/// A keyed increment's place among the batch's keyed increments (and the answer's outcomes).
pub struct KeyIndex(pub(super) usize);

impl Place for KeyIndex {
    type Batch = Batch;
    type Value = KeyOutcome;

    fn read(&self, answer: &BatchAnswer) -> Result<KeyOutcome, CommitError> {
        answer.keyed.get(self.0).copied().ok_or_else(|| {
            CommitError::Unknown("the store answered fewer keys than it was sent".into())
        })
    }
}
