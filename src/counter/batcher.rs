//! What a core's batcher task waits for ([`next_open`]): the batches opened since it last
//! sent, handed over all at once after the core's current round of work. The single counter's
//! cores and named counters' share it.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

/// Waits until `open` holds a batch, then takes them all. An increment that opens or joins a
/// batch wakes the waker left in `batcher`; the task then runs after the tasks already queued,
/// so a round of requests forms one batch.
pub(crate) async fn next_open<B>(open: &RefCell<Vec<B>>, batcher: &Cell<Option<Waker>>) -> Vec<B> {
    std::future::poll_fn(|cx| {
        let mut open = open.borrow_mut();
        if open.is_empty() {
            batcher.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(std::mem::take(&mut *open))
        }
    })
    .await
}
