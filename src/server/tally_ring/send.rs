//! A socket's sends: queuing one (quiet on a response's first attempt), its completion, and
//! settling the quiet sends that posted none.
//!
//! Invariants: a socket has at most one send in the kernel (`sending`), from its own
//! `send_buf`, which is not touched until the send ended. `Ring::quiet_sends` is in the order
//! the sends were queued, so in `submitted` order: the issued ones are a prefix.
//!
//! May touch: a socket's send state, the quiet-send list, the submission queue.

use io_uring::{opcode, squeue, types};

use super::sockets::Socket;
use super::{user_data, Ring, OP_SEND};

impl Ring {
    /// Queues a send of what `socket` has left to send.
    ///
    /// A quiet send (a response's first attempt) is `MSG_DONTWAIT | MSG_WAITALL` with
    /// `IOSQE_CQE_SKIP_SUCCESS`: the kernel issues it while it takes the SQE, and DONTWAIT
    /// makes a socket without room fail it at once (EAGAIN, or the bytes it took) instead of
    /// waiting in the kernel, so once the kernel entry that took it has returned the send is
    /// over, and only a failure or a short send posts a completion. A response then costs
    /// no completion and no wake-up of its own: the core's one kernel entry per request both
    /// sends it and waits for the next. The rest after a short send goes as a plain send,
    /// which waits for room in the kernel and posts its completion.
    pub(super) fn send(&self, socket: &mut Socket, quiet: bool) {
        let rest = &socket.send_buf[socket.sent..];
        let mut flags = libc::MSG_NOSIGNAL;
        if quiet {
            flags |= libc::MSG_DONTWAIT | libc::MSG_WAITALL;
        }
        let mut entry = opcode::Send::new(types::Fd(socket.fd), rest.as_ptr(), rest.len() as u32)
            .flags(flags)
            .build()
            .user_data(user_data(OP_SEND, socket.index));
        if quiet {
            entry = entry.flags(squeue::Flags::SKIP_SUCCESS);
            let epoch = self.submitted.get();
            socket.quiet_epoch = Some(epoch);
            self.quiet_sends.borrow_mut().push((socket.index, epoch));
        } else {
            socket.quiet_epoch = None;
        }
        socket.sending = true;
        socket.in_flight += 1;
        self.push(entry);
    }

    /// A send's completion: a quiet one that failed or stopped short, or a plain one.
    pub(super) fn send_completed(&self, socket: &mut Socket, result: i32) {
        if !socket.sending {
            // Cannot happen: a quiet send ends with the entry that issued it.
            self.late_sends.set(self.late_sends.get() + 1);
            return;
        }
        let quiet = socket.quiet_epoch.is_some();
        if result > 0 {
            socket.sent += result as usize;
        } else if result < 0 && !(quiet && result == -libc::EAGAIN) {
            // A quiet send that found no room is sent again, waiting for room.
            socket.send_error = Some(-result);
        }
        self.send_ended(socket);
    }

    /// Ends the quiet sends that were issued and posted no failure: they sent everything.
    /// Returns how many it took off the list (which is in `submitted` order).
    pub(super) fn settle_quiet_sends(&self) -> usize {
        let submitted = self.submitted.get();
        let mut quiet_sends = self.quiet_sends.borrow_mut();
        let issued = quiet_sends.partition_point(|&(_, epoch)| epoch < submitted);
        for (index, epoch) in quiet_sends.drain(..issued) {
            if let Some(socket) = self.socket(index) {
                let mut socket = socket.borrow_mut();
                if socket.sending && socket.quiet_epoch == Some(epoch) {
                    socket.sent = socket.send_buf.len();
                    self.send_ended(&mut socket);
                }
            }
        }
        issued
    }

    /// Whether the last kernel entry issued a quiet send not yet settled.
    pub(super) fn has_issued_quiet_sends(&self) -> bool {
        self.quiet_sends
            .borrow()
            .first()
            .is_some_and(|&(_, epoch)| epoch < self.submitted.get())
    }

    fn send_ended(&self, socket: &mut Socket) {
        socket.in_flight -= 1;
        socket.sending = false;
        socket.quiet_epoch = None;
        if let Some(waker) = socket.writer.take() {
            waker.wake();
        }
        self.maybe_close(socket);
    }
}
