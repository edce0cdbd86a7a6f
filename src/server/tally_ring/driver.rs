//! The driver: one task per core that hands the ring's completions to their owners (the
//! accept queue, a socket's receive or send, the park's polls), and the ring's end.
//!
//! Invariants: the driver runs only when kicked (a park or poll found completions, buffers
//! came back for a starved receive, or the ring is finishing), and it never waits in the
//! kernel: it enters it only to flush an overflowed completion queue (and `push` when the
//! submission queue is full). It ends after [`Ring::finish`], once the table is empty.
//!
//! May touch: the completion queue, the kick, and every owner's completion handler.

use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use io_uring::{opcode, types};

use super::park::ParkHookGuard;
use super::receive::MAX_HELD_BUFFERS;
use super::{
    user_data, Ring, INDEX_MASK, OP_ACCEPT, OP_IGNORED, OP_PARK_POLL, OP_RECV, OP_SEND, OP_SHIFT,
};

/// How long `finish` waits for the kernel to answer the cancellations before the core gives
/// up on it (the buffers are then leaked rather than freed under the kernel).
pub const FINISH_WAIT: Duration = Duration::from_secs(1);

impl Ring {
    /// The driver: hands completions to the streams. Installs the ring as this core's park
    /// hook for as long as it runs, so glommio sleeps on this ring. Ends after
    /// [`Ring::finish`] once nothing is in flight.
    pub async fn drive(self: Rc<Self>) {
        let _hook = ParkHookGuard::install(self.clone());
        loop {
            let reaped = self.reap();
            if self.stopping.get() && self.sockets.borrow().iter().all(Option::is_none) {
                // The last closes are queued, not yet submitted: no park will do it now.
                self.submit_queued();
                break;
            }
            if reaped > 0 {
                // Let the woken connections run (and queue their sends) before the next pass.
                futures_lite::future::yield_now().await;
                continue;
            }
            // Nothing completed: wait for the next park or poll that finds completions.
            std::future::poll_fn(|cx| {
                if self.kicked.replace(false) {
                    return Poll::Ready(());
                }
                self.driver.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
        }
        log::debug!(
            "ring driver done: {} io_uring_enter calls ({} parks, {} busy polls), {} receives \
             out of buffers, {} cancelled for holding {MAX_HELD_BUFFERS} buffers, {} late \
             send completions",
            self.enters.get(),
            self.parks.get(),
            self.polls.get(),
            self.starvations.get(),
            self.held_cancels.get(),
            self.late_sends.get()
        );
    }

    /// Wakes the driver for a pass (once, however often it is kicked before it runs).
    pub(super) fn kick(&self) {
        if !self.kicked.replace(true) {
            if let Some(waker) = self.driver.take() {
                waker.wake();
            }
        }
    }

    /// One pass: every posted completion handled. Enters the kernel only when completions
    /// overflowed the queue (they are flushed by an enter); parks and polls do the rest.
    fn reap(&self) -> usize {
        self.kicked.set(false);
        if self.uring.borrow_mut().submission().cq_overflow() {
            self.submit();
        }
        let mut reaped = 0;
        // Completions are copied out before they are handled: handling one may queue SQEs,
        // which needs the ring. The copy's buffer is reused from pass to pass.
        let mut batch = self.completions.take();
        loop {
            batch.clear();
            {
                let mut uring = self.uring.borrow_mut();
                let mut cq = uring.completion();
                cq.sync();
                batch.extend(cq.take(256).map(|c| (c.user_data(), c.result(), c.flags())));
            }
            if batch.is_empty() {
                break;
            }
            reaped += batch.len();
            for &(data, result, flags) in &batch {
                self.complete(data, result, flags);
            }
        }
        self.completions.set(batch);
        reaped += self.settle_quiet_sends();
        self.buffers.publish();
        self.rearm_starved();
        reaped
    }

    /// Hands one completion to its owner, by the operation in its `user_data`.
    fn complete(&self, data: u64, result: i32, flags: u32) {
        let index = (data & INDEX_MASK) as usize;
        match data >> OP_SHIFT {
            OP_ACCEPT => self.accept_completed(result, flags),
            OP_PARK_POLL => self.park_poll_completed(index),
            OP_RECV => {
                if let Some(socket) = self.socket(index) {
                    self.recv_completed(&mut socket.borrow_mut(), result, flags);
                }
            }
            OP_SEND => {
                if let Some(socket) = self.socket(index) {
                    self.send_completed(&mut socket.borrow_mut(), result);
                }
            }
            _ => {}
        }
    }

    /// Cancels everything still in flight and lets the driver end once the kernel has
    /// answered (bounded by the caller, [`FINISH_WAIT`]). The buffers are freed with the ring
    /// after that.
    pub fn finish(&self) {
        self.stopping.set(true);
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(OP_IGNORED, 0));
        self.push(entry);
        self.kick();
    }
}
