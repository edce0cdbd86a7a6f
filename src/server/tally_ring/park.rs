//! Where the core sleeps: the ring as glommio's [`ParkHook`] (tally's patch of glommio,
//! `vendor/glommio/TALLY-PATCH.md`).
//!
//! Invariants: a park enters the kernel once (one `io_uring_enter` that submits what the
//! tasks queued and waits for a completion or glommio's next timer), or only to submit when
//! the driver already has work; a busy poll enters it only when tasks are still runnable and
//! something is queued or task work is pending. (`Ring::push` adds an entry only when the
//! submission queue is full.) Either kicks the driver when completions are there, so they
//! are handled by a task, never inside glommio's run loop. Each of glommio's ring fds has at
//! most one one-shot poll in this ring (`Ring::park_polls`), so glommio's own wake-ups (its
//! I/O, timers and the eventfd other threads write) end the sleep.
//!
//! May touch: the submission and completion queues (to look, not to reap), the park polls,
//! the driver's kick.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use glommio::ParkHook;
use io_uring::{opcode, types};

use super::{user_data, Ring, OP_PARK_POLL};

/// The core sleeps here: see the module's documentation.
impl ParkHook for Ring {
    fn park(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<()> {
        self.arm_park_polls(fds);
        self.parks.set(self.parks.get() + 1);
        if self.has_completions() {
            // Work for the driver already: hand the queue to the kernel, without waiting.
            self.submit_queued();
            self.kick();
            return Ok(());
        }
        let timespec = timeout.map(types::Timespec::from);
        let mut args = types::SubmitArgs::new();
        if let Some(timespec) = &timespec {
            args = args.timespec(timespec);
        }
        let waited = {
            let mut uring = self.uring.borrow_mut();
            let waited = uring.submitter().submit_with_args(1, &args);
            self.entered(&mut uring);
            waited
        };
        match waited {
            Ok(_) => {}
            // The timeout passed, a signal arrived, or the completion queue is full: all are
            // ends of the sleep.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(err) => return Err(err),
        }
        if self.has_completions() {
            self.kick();
        }
        Ok(())
    }

    fn poll(&self, runnable: bool) {
        if runnable {
            let pending = {
                let mut uring = self.uring.borrow_mut();
                let sq = uring.submission();
                !sq.is_empty() || sq.taskrun()
            };
            if pending {
                self.polls.set(self.polls.get() + 1);
                self.submit();
            }
        }
        if self.has_completions() {
            self.kick();
        }
    }
}

impl Ring {
    /// Whether the driver has something to hand out: posted completions, an overflow, or
    /// quiet sends the last kernel entry issued.
    fn has_completions(&self) -> bool {
        if self.has_issued_quiet_sends() {
            return true;
        }
        let mut uring = self.uring.borrow_mut();
        if uring.submission().cq_overflow() {
            return true;
        }
        let mut cq = uring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Arms a one-shot poll for readability on each of glommio's ring fds that has none in
    /// flight. A ring's fd is readable while its completion queue holds anything.
    fn arm_park_polls(&self, fds: &[RawFd]) {
        for (index, (slot, &fd)) in self.park_polls.iter().zip(fds).enumerate() {
            if slot.get() != Some(fd) {
                slot.set(Some(fd));
                let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(user_data(OP_PARK_POLL, index));
                self.push(entry);
            }
        }
    }

    /// glommio's ring had a completion (or the poll was cancelled): re-armed by the next
    /// park. glommio reaps its own ring itself.
    pub(super) fn park_poll_completed(&self, index: usize) {
        if let Some(slot) = self.park_polls.get(index) {
            slot.set(None);
        }
    }
}

/// Keeps the ring installed as the park hook of this thread's executor while the driver runs.
pub(super) struct ParkHookGuard;

impl ParkHookGuard {
    pub(super) fn install(ring: Rc<Ring>) -> ParkHookGuard {
        glommio::set_park_hook(Some(ring));
        ParkHookGuard
    }
}

impl Drop for ParkHookGuard {
    fn drop(&mut self) {
        glommio::set_park_hook(None);
    }
}
