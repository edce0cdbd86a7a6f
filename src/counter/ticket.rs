//! What a request holds while its increment commits: a [`Ticket`] (the count right after its
//! increment) or a [`KeyedTicket`] (what became of its key), both resolved by their batch.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::batch::Batch;
use super::{CommitError, KeyOutcome};

/// A request's claim on a value: resolves to the count right after its own increment.
pub struct Ticket {
    pub(super) batch: Rc<Batch>,
    /// Sum of the batch's deltas up to and including this request's.
    pub(super) offset: i64,
    pub(super) registered: bool,
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
    pub(super) batch: Rc<Batch>,
    /// Its place in the batch's keyed increments (and in the answer's outcomes).
    pub(super) index: usize,
    pub(super) registered: bool,
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
