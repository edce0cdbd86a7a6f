//! What a request holds while its increment commits: a [`Ticket`] (the count right after its
//! increment) or a [`KeyedTicket`] (what became of its key), both resolved by their batch.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::batch::Batch;
use super::wiring::BatchAnswer;
use super::{CommitError, KeyOutcome};

/// A request's claim on its batch's answer, resolved once the batch is: by default (a plain
/// increment) to the count right after its own increment; as a [`KeyedTicket`], to what became
/// of its key. `P` is the request's place in the batch, which says what it gets.
pub struct Ticket<P: Place = Offset> {
    batch: Rc<Batch>,
    place: P,
    /// Whether this ticket's waker is among the batch's waiters (the batch wakes each once,
    /// when it resolves, so registering once is enough).
    registered: bool,
}

/// A keyed request's claim: resolves to what became of its key.
pub type KeyedTicket = Ticket<KeyIndex>;

impl<P: Place> Ticket<P> {
    pub(super) fn new(batch: Rc<Batch>, place: P) -> Self {
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
        if let Some(reply) = self.batch.result.borrow().as_ref() {
            return Poll::Ready(match reply {
                Ok(answer) => self.place.read(answer),
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

/// A request's place in its batch: what part of the owner's answer is its own. Sealed (this
/// module is private): the two places below are all there are.
pub trait Place {
    type Value;
    fn read(&self, answer: &BatchAnswer) -> Result<Self::Value, CommitError>;
}

/// A plain increment's place: the sum of the batch's deltas up to and including its own.
pub struct Offset(pub(super) i64);

impl Place for Offset {
    type Value = i64;

    fn read(&self, answer: &BatchAnswer) -> Result<i64, CommitError> {
        Ok(answer.base + self.0)
    }
}

/// A keyed increment's place among the batch's keyed increments (and the answer's outcomes).
pub struct KeyIndex(pub(super) usize);

impl Place for KeyIndex {
    type Value = KeyOutcome;

    fn read(&self, answer: &BatchAnswer) -> Result<KeyOutcome, CommitError> {
        answer.keyed.get(self.0).copied().ok_or_else(|| {
            CommitError::Unknown("the store answered fewer keys than it was sent".into())
        })
    }
}
