//! The core's one multishot accept: a single SQE that accepts every connection on the core's
//! listener, and the queue of accepted sockets the accept loop (`server::accept`) takes from.
//!
//! Invariants: at most one accept is in the kernel (`accept_armed`); none is armed once the
//! ring is stopping or accepting was stopped. The listener stays open (the caller's) until
//! `stop_accepting` was called.
//!
//! May touch: the accept state, the accepted queue and its waker, the submission queue.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::task::Poll;

use io_uring::{cqueue, opcode, types};

use super::{user_data, Ring, OP_ACCEPT, OP_IGNORED};

impl Ring {
    /// Starts a multishot accept on `listener` (kept open by the caller until `stop_accepting`
    /// has been awaited).
    pub fn start_accepting(&self, listener: RawFd) {
        self.listener.set(Some(listener));
        self.arm_accept();
    }

    fn arm_accept(&self) {
        if let Some(fd) = self.listener.get() {
            if !self.stopping.get() && !self.accept_armed.replace(true) {
                let entry = opcode::AcceptMulti::new(types::Fd(fd))
                    .flags(libc::SOCK_CLOEXEC)
                    .build()
                    .user_data(user_data(OP_ACCEPT, 0));
                self.push(entry);
            }
        }
    }

    /// The next accepted socket, or the error an accept failed with.
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        std::future::poll_fn(|cx| match self.accepted.borrow_mut().pop_front() {
            Some(result) => Poll::Ready(result),
            None => {
                self.acceptor.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Re-arms the accept after a failure that ended it (called after a back-off).
    pub fn resume_accepting(&self) {
        self.arm_accept();
    }

    /// Cancels the accept; connections that arrive later stay in the backlog and are reset
    /// when the listener closes.
    pub fn stop_accepting(&self) {
        if self.accept_armed.get() {
            let entry = opcode::AsyncCancel::new(user_data(OP_ACCEPT, 0))
                .build()
                .user_data(user_data(OP_IGNORED, 0));
            self.push(entry);
        }
        self.listener.set(None);
    }

    pub(super) fn accept_completed(&self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed.set(false);
        }
        let item = if result >= 0 {
            // SAFETY: the kernel just created this descriptor for us.
            Ok(unsafe { OwnedFd::from_raw_fd(result) })
        } else if result == -libc::ECANCELED {
            return;
        } else {
            Err(io::Error::from_raw_os_error(-result))
        };
        let failed = item.is_err();
        self.accepted.borrow_mut().push_back(item);
        if let Some(waker) = self.acceptor.take() {
            waker.wake();
        }
        // A multishot accept that ended without an error (the kernel may end one at any
        // time) is re-armed at once; after an error the accept loop backs off first.
        if !failed && !cqueue::more(flags) {
            self.arm_accept();
        }
    }
}
