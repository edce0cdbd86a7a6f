//! A socket's receives: the multishot receive into provided buffers, its completions (each a
//! buffer the socket now holds), copying held bytes out to the connection, the cap on what one
//! connection may hold, and receives that found the pool empty (starved).
//!
//! Invariants: a socket has at most one receive in the kernel (`Recv::Armed` or
//! `Cancelling`); none is armed for a released socket or after the end of input; a starved
//! socket is in `Ring::starved` until re-armed. Every buffer a socket holds goes back to the
//! ring once its bytes are copied out, or when the socket is released (`sockets`).
//!
//! May touch: a socket's receive state and held buffers, the buffer ring, the submission
//! queue, the driver's kick.

use io_uring::{cqueue, opcode, squeue, types};

use super::buffers::BUFFER_GROUP;
use super::sockets::{Held, Recv, Socket};
use super::{user_data, Ring, OP_IGNORED, OP_RECV};

/// A connection that is not reading (answering, writing to a slow client) while its client
/// keeps sending has its receive cancelled once it holds this many buffers, so one client
/// cannot take the pool from the others; reading re-arms it.
pub(super) const MAX_HELD_BUFFERS: usize = 8;

impl Ring {
    /// Arms a receive on `socket` if it has none and may still receive: multishot, or one
    /// buffer at a time once the socket was capped.
    pub(super) fn arm_recv(&self, socket: &mut Socket) {
        if socket.recv != Recv::Idle || socket.eof || socket.released {
            return;
        }
        socket.recv = Recv::Armed;
        socket.in_flight += 1;
        let entry = if socket.capped {
            opcode::Recv::new(types::Fd(socket.fd), std::ptr::null_mut(), 0)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(types::Fd(socket.fd), BUFFER_GROUP).build()
        }
        .user_data(user_data(OP_RECV, socket.index));
        self.push(entry);
    }

    pub(super) fn recv_completed(&self, socket: &mut Socket, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            socket.in_flight -= 1;
        }
        if result > 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                socket.held.push_back(Held {
                    bid,
                    len: result as usize,
                    read: 0,
                });
            }
        } else if result == 0 {
            socket.eof = true;
        } else if result == -libc::ENOBUFS {
            if !more {
                self.starvations.set(self.starvations.get() + 1);
                socket.recv = Recv::Starved;
                self.starved.borrow_mut().push_back(socket.index);
            }
        } else if result != -libc::ECANCELED {
            socket.error = Some(-result);
            socket.eof = true;
        }
        if !more && !matches!(socket.recv, Recv::Starved) {
            socket.recv = Recv::Idle;
        }
        if more
            && socket.recv == Recv::Armed
            && socket.held.len() >= MAX_HELD_BUFFERS
            && !socket.released
        {
            socket.recv = Recv::Cancelling;
            socket.capped = true;
            self.held_cancels.set(self.held_cancels.get() + 1);
            self.cancel(user_data(OP_RECV, socket.index));
            // At once, not at the next park: the kernel keeps filling buffers meanwhile. Rare
            // (a client that sends far ahead of what is read), so worth its kernel entry.
            self.submit();
        }
        if let Some(waker) = socket.reader.take() {
            waker.wake();
        }
        if socket.released {
            self.give_back_held(socket);
        }
        self.maybe_close(socket);
    }

    fn cancel(&self, target: u64) {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(OP_IGNORED, 0));
        self.push(entry);
    }

    /// Re-arms receives that ran out of buffers, now that some came back.
    pub(super) fn rearm_starved(&self) {
        loop {
            let Some(index) = self.starved.borrow_mut().pop_front() else {
                return;
            };
            if let Some(socket) = self.socket(index) {
                let mut socket = socket.borrow_mut();
                if socket.recv == Recv::Starved {
                    socket.recv = Recv::Idle;
                    if socket.held.is_empty() {
                        self.arm_recv(&mut socket);
                    } else if let Some(waker) = socket.reader.take() {
                        // Its reader re-arms once it has taken what it holds.
                        waker.wake();
                    }
                }
            }
        }
    }

    /// Copies what `socket` holds into `buf`, giving emptied buffers back.
    pub(super) fn take_held(&self, socket: &mut Socket, buf: &mut [u8]) -> usize {
        let mut copied = 0;
        while copied < buf.len() {
            let Some(held) = socket.held.front_mut() else {
                break;
            };
            let data = &self.buffers.buffer(held.bid)[held.read..held.len];
            let n = data.len().min(buf.len() - copied);
            buf[copied..copied + n].copy_from_slice(&data[..n]);
            copied += n;
            held.read += n;
            if held.read == held.len {
                let bid = held.bid;
                socket.held.pop_front();
                self.buffers.push(bid);
            }
        }
        if copied > 0 {
            self.buffers.publish();
            if !self.starved.borrow().is_empty() {
                self.kick();
            }
        }
        copied
    }
}
