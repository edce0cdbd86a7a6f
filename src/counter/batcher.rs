//! What a core's batcher task waits for ([`next_open`]): the batches opened since it last
//! sent, handed over all at once after the core's current round of work; and what an owner's
//! loop waits for ([`gather`]): every batch sent meanwhile. The single counter and named
//! counters share both.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
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

/// The owner's side: with `queue` empty, waits for a batch; then takes every batch already
/// sent. False once every core has dropped its sender and nothing is queued: the owner's loop
/// is done.
pub(crate) async fn gather<B>(queue: &mut VecDeque<B>, batches: &flume::Receiver<B>) -> bool {
    if queue.is_empty() {
        match batches.recv_async().await {
            Ok(batch) => queue.push_back(batch),
            Err(_) => return false,
        }
    }
    queue.extend(batches.try_iter());
    true
}
