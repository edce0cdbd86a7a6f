//! The ring's socket table: each accepted connection's [`Socket`] (its fd, what it received
//! and what it sends), and the rules that say when the kernel is done with one.
//!
//! Rules (the ownership rule of the module, made exact):
//!
//! - `in_flight` counts the requests in the kernel that will still post a completion for the
//!   socket: +1 when a receive is armed (`receive`) or a send queued (`send`), -1 at that
//!   request's last completion (a receive's completion without MORE; a send's completion, or
//!   the kernel entry that issued a quiet send). Cancellations and the close are not counted:
//!   their completions are ignored.
//! - `released` is set once, when the [`RingStream`](super::RingStream) is dropped
//!   ([`Ring::release`]): its held buffers go back at once, what is in flight is cancelled, and
//!   no receive is armed again.
//! - A socket is closed, and its table slot freed, only when it is released and nothing is in
//!   flight ([`Ring::maybe_close`]): until then the kernel may still use its fd and its send
//!   buffer, so both stay here whatever became of the stream.
//!
//! May touch: the table, a socket's state, the buffer ring (to give held buffers back) and
//! the submission queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;

use io_uring::{opcode, types};

use super::{user_data, Ring, OP_IGNORED};

/// A received buffer not yet copied out by its connection.
pub(super) struct Held {
    pub(super) bid: u16,
    pub(super) len: usize,
    pub(super) read: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Recv {
    /// No receive in the kernel: the connection's next read arms one.
    Idle,
    Armed,
    /// Cancelled (too many buffers held); its last completion has not arrived yet.
    Cancelling,
    /// The pool ran dry (ENOBUFS): re-armed when buffers come back.
    Starved,
}

/// A connection's socket and everything the kernel may still use for it.
pub(super) struct Socket {
    pub(super) fd: RawFd,
    pub(super) index: usize,
    pub(super) held: VecDeque<Held>,
    pub(super) recv: Recv,
    /// The connection once held `MAX_HELD_BUFFERS`: it receives one buffer per request from
    /// now on. A multishot receive runs up to 32 times in a row inside the kernel while its
    /// socket has data (`MULTISHOT_MAX_RETRY` in the kernel's io_uring/net.c), and again
    /// within the same kernel entry when it is re-queued, so a client that sends far ahead of
    /// what its connection reads could take the whole pool between two looks at the
    /// completions.
    pub(super) capped: bool,
    /// The peer closed (a receive of 0 bytes), or receiving failed.
    pub(super) eof: bool,
    pub(super) error: Option<i32>,
    pub(super) reader: Option<Waker>,
    /// What a send in flight sends from: owned here so it outlives a dropped writer.
    pub(super) send_buf: Vec<u8>,
    /// Bytes of `send_buf` the kernel has taken.
    pub(super) sent: usize,
    pub(super) sending: bool,
    /// The send in flight is quiet (see [`Ring::send`]), queued before submission `epoch`.
    pub(super) quiet_epoch: Option<u64>,
    pub(super) send_error: Option<i32>,
    pub(super) writer: Option<Waker>,
    /// Requests in the kernel that will still post a completion for this socket.
    pub(super) in_flight: u32,
    /// The stream was dropped: close once `in_flight` reaches zero.
    pub(super) released: bool,
}

impl Ring {
    /// Takes an accepted socket into the table (ownership of `fd` moves into it).
    pub(super) fn insert_socket(&self, fd: RawFd) -> Rc<RefCell<Socket>> {
        let index = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut sockets = self.sockets.borrow_mut();
            sockets.push(None);
            sockets.len() - 1
        });
        let socket = Rc::new(RefCell::new(Socket {
            fd,
            index,
            held: VecDeque::new(),
            recv: Recv::Idle,
            capped: false,
            eof: false,
            error: None,
            reader: None,
            send_buf: Vec::new(),
            sent: 0,
            sending: false,
            quiet_epoch: None,
            send_error: None,
            writer: None,
            in_flight: 0,
            released: false,
        }));
        self.sockets.borrow_mut()[index] = Some(socket.clone());
        socket
    }

    /// The socket at `index`, if it is still in the table (a completion may name one that
    /// was closed since).
    pub(super) fn socket(&self, index: usize) -> Option<Rc<RefCell<Socket>>> {
        self.sockets.borrow().get(index).and_then(Clone::clone)
    }

    /// The stream let go of `socket`: gives its buffers back, cancels what is in flight, and
    /// closes it now if nothing is.
    pub(super) fn release(&self, socket: &mut Socket) {
        socket.released = true;
        socket.reader = None;
        socket.writer = None;
        self.give_back_held(socket);
        if socket.in_flight > 0 {
            let fd = socket.fd;
            let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
                .build()
                .user_data(user_data(OP_IGNORED, 0));
            self.push(entry);
        }
        self.maybe_close(socket);
    }

    /// Puts every buffer `socket` holds back in the ring.
    pub(super) fn give_back_held(&self, socket: &mut Socket) {
        for held in socket.held.drain(..) {
            self.buffers.push(held.bid);
        }
        self.buffers.publish();
    }

    /// Closes a released socket once the kernel is done with it, and frees its table slot.
    pub(super) fn maybe_close(&self, socket: &mut Socket) {
        if socket.released && socket.in_flight == 0 && socket.fd >= 0 {
            let entry = opcode::Close::new(types::Fd(socket.fd))
                .build()
                .user_data(user_data(OP_IGNORED, 0));
            socket.fd = -1;
            self.sockets.borrow_mut()[socket.index] = None;
            self.free.borrow_mut().push(socket.index);
            self.push(entry);
        }
    }

    /// Sockets in the table (open, or closing with requests in flight).
    #[cfg(test)]
    pub(super) fn open_sockets(&self) -> usize {
        self.sockets.borrow().iter().flatten().count()
    }
}
