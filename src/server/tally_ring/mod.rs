//! tally's own io_uring ring, one per core, for connection I/O (`--io uring`).
//!
//! glommio stays the executor (it pins the core, runs the connection tasks, timers and the
//! owner-core channels); this ring does the sockets the way the kernel offers for servers:
//!
//! - one multishot accept per listener: one SQE for every connection it will ever accept;
//! - one multishot recv per connection into a ring of provided buffers ([`BufferRing`]): no
//!   poll is re-armed per request, and an idle connection holds no read buffer (the kernel
//!   picks one only when bytes arrive);
//! - sends as SQEs, queued by every connection that answered during a pass and submitted with
//!   one `io_uring_enter` for all of them, which also reaps the completions.
//!
//! One event loop per core: glommio runs the tasks, and when it has nothing to run it sleeps
//! on this ring, through the park hook of tally's patch of glommio
//! (`vendor/glommio/TALLY-PATCH.md`, [`ParkHook`](glommio::ParkHook)). Parking submits
//! everything the tasks queued, arms a one-shot poll on each of glommio's rings (so glommio's
//! own I/O, its timers and the eventfd other threads write to wake it still end the sleep)
//! and waits, all in one `io_uring_enter`. Between parks, the hook's `poll` submits only when
//! tasks are still runnable (so a busy core does not wait for a park to send). The
//! [`Ring::drive`] task hands completions to the streams; it never enters the kernel itself
//! except to flush a full submission queue or an overflowed completion queue.
//!
//! Ownership rule: the kernel may use a connection's socket and send buffer until the last
//! completion of its requests arrives, so both live in a [`Socket`] kept in the ring's table
//! until then, whatever became of the task that used it. Dropping a [`RingStream`] cancels
//! what is in flight; the socket is closed when the last completion arrives.
//!
//! The files, by what they own (all `impl Ring` blocks on the one [`Ring`] below):
//!
//! - this file: the [`Ring`] and its submission queue: every SQE goes through
//!   [`Ring::push`], and every kernel entry is counted by [`Ring::entered`];
//! - `setup`: creating the ring (DEFER or COOP task run), the kernel features it needs;
//! - `buffers`: the receive buffers handed to the kernel: every `unsafe` block about them;
//! - `sockets`: the socket table, and the in-flight / released rules that close a socket;
//! - `receive` and `send`: a socket's receives (held buffers, the cap, starved receives) and
//!   sends (quiet first sends and how they are settled);
//! - `multishot_accept`: the accept on the core's listener;
//! - `stream`: [`RingStream`], the connection's [`Stream`](super::stream::Stream);
//! - `driver`: the task that hands completions to their owners, and the ring's end;
//! - `park`: the [`ParkHook`](glommio::ParkHook): the core sleeps here.
//!
//! What it may touch: the kernel (this ring, the sockets it accepted, glommio's ring fds
//! through one-shot polls) and glommio's park hook; nothing of HTTP.

mod buffers;
mod driver;
mod multishot_accept;
mod park;
mod receive;
mod send;
mod setup;
mod sockets;
mod stream;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::task::Waker;

use io_uring::{squeue, IoUring};

use buffers::BufferRing;
pub use driver::FINISH_WAIT;
pub use setup::TaskRun;
use sockets::Socket;
#[cfg(test)]
pub use stream::RingStream;

/// `user_data`: the operation in the top bits, the socket's table index below.
const OP_SHIFT: u32 = 56;
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
/// Cancellations and closes whose completions need no handling.
const OP_IGNORED: u64 = 4;
/// The park's poll on one of glommio's rings; the index is its slot in `Ring::park_polls`.
const OP_PARK_POLL: u64 = 5;
const INDEX_MASK: u64 = (1 << OP_SHIFT) - 1;

fn user_data(op: u64, index: usize) -> u64 {
    (op << OP_SHIFT) | index as u64
}

/// One core's ring, shared (Rc) by the driver task, the accept loop and the streams. Each
/// group of fields is owned by the file named beside it.
pub struct Ring {
    uring: RefCell<IoUring>,
    taskrun: TaskRun,
    /// `buffers`.
    buffers: BufferRing,
    /// `sockets`: sockets by index; `None` is free.
    sockets: RefCell<Vec<Option<Rc<RefCell<Socket>>>>>,
    free: RefCell<Vec<usize>>,
    /// `receive`: sockets whose receive ended with ENOBUFS, re-armed as buffers come back.
    starved: RefCell<VecDeque<usize>>,
    /// `multishot_accept`: accepted sockets (or accept errors) waiting for the accept loop.
    accepted: RefCell<VecDeque<Result<OwnedFd, io::Error>>>,
    acceptor: Cell<Option<Waker>>,
    /// The listener with a multishot accept in the kernel (and whether it is armed).
    listener: Cell<Option<RawFd>>,
    accept_armed: Cell<bool>,
    /// `driver`: it waits for a kick: completions to hand out (from a park or a poll), buffers
    /// back for starved receives, or the end.
    kicked: Cell<bool>,
    driver: Cell<Option<Waker>>,
    stopping: Cell<bool>,
    /// This file: kernel entries after which the submission queue was empty: a request
    /// queued while this was `n` has been issued once it is past `n`.
    submitted: Cell<u64>,
    /// `send`: quiet sends (socket index, `submitted` when queued) not yet known to be done.
    quiet_sends: RefCell<Vec<(usize, u64)>>,
    /// `park`: glommio's ring fds with a one-shot poll in this ring (slots of `OP_PARK_POLL`).
    park_polls: [Cell<Option<RawFd>>; 2],
    /// `driver`: reused by each pass to hold the completions it handles.
    completions: Cell<Vec<(u64, i32, u32)>>,
    /// Diagnostics, logged when the driver ends: kernel entries, parks, receives that ran out
    /// of buffers (ENOBUFS) and receives cancelled for holding too many.
    enters: Cell<u64>,
    parks: Cell<u64>,
    polls: Cell<u64>,
    late_sends: Cell<u64>,
    starvations: Cell<u64>,
    held_cancels: Cell<u64>,
}

impl Ring {
    pub fn taskrun(&self) -> TaskRun {
        self.taskrun
    }

    /// Queues an SQE, submitted by the core's next park or busy poll ([`park`]).
    fn push(&self, entry: squeue::Entry) {
        let mut uring = self.uring.borrow_mut();
        // SAFETY: every entry tally queues points only at memory that outlives the request:
        // a socket's send buffer (kept in the table until its completion, see `sockets`), the
        // buffer ring (freed only after the ring, see `buffers`).
        while unsafe { uring.submission().push(&entry) }.is_err() {
            // A full submission queue: hand it to the kernel now.
            let submitted = uring.submit();
            self.entered(&mut uring);
            if let Err(err) = submitted {
                log::error!("io_uring submit failed: {err}");
                break;
            }
        }
    }

    /// Counts a kernel entry, and a submission once the kernel has taken every queued SQE.
    fn entered(&self, uring: &mut IoUring) {
        self.enters.set(self.enters.get() + 1);
        let mut sq = uring.submission();
        sq.sync();
        if sq.is_empty() {
            self.submitted.set(self.submitted.get() + 1);
        }
    }

    /// Submits what is queued, without waiting (`submit` adds GETEVENTS when the TASKRUN
    /// flag says task work is pending: that runs deferred completions and flushes overflow).
    fn submit(&self) {
        let mut uring = self.uring.borrow_mut();
        let submitted = uring.submit();
        self.entered(&mut uring);
        if let Err(err) = submitted {
            if !matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) {
                log::error!("io_uring submit failed: {err}");
            }
        }
    }

    /// Submits what is queued, if anything.
    fn submit_queued(&self) {
        if !self.uring.borrow_mut().submission().is_empty() {
            self.submit();
        }
    }
}

#[cfg(test)]
mod tests;
