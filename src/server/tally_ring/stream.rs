//! [`RingStream`]: a connection's [`Stream`] on tally's ring, what `server::conn` reads from
//! and writes to on `--io uring`.
//!
//! Invariants: a read copies bytes the socket already holds (it never lends the caller's
//! buffer to the kernel), and a write copies into the socket's own send buffer, so dropping
//! either future at any point leaves the kernel nothing of the caller's. Dropping the stream
//! releases the socket (`sockets`); it is closed once the kernel is done with it.
//!
//! May touch: its socket, through the ring's receive, send and release.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::Poll;

use super::super::stream::Stream;
use super::sockets::{Recv, Socket};
use super::Ring;

/// A connection on tally's ring: what [`super::super::conn`] reads from and writes to.
pub struct RingStream {
    ring: Rc<Ring>,
    socket: Rc<RefCell<Socket>>,
}

impl Ring {
    /// Takes an accepted socket into the table and starts receiving on it.
    pub fn stream(self: &Rc<Self>, fd: OwnedFd) -> RingStream {
        let socket = self.insert_socket(fd.into_raw_fd());
        self.arm_recv(&mut socket.borrow_mut());
        RingStream::new(self.clone(), socket)
    }
}

impl RingStream {
    /// The stream of `socket`, just taken into `ring`'s table.
    pub(super) fn new(ring: Rc<Ring>, socket: Rc<RefCell<Socket>>) -> RingStream {
        RingStream { ring, socket }
    }

    async fn wait_send(&self) {
        std::future::poll_fn(|cx| {
            let mut socket = self.socket.borrow_mut();
            if socket.sending {
                socket.writer = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

impl Stream for RingStream {
    const WAITS_WITHOUT_BUFFER: bool = true;

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            if let Some(read) = self.read_now(buf) {
                return Poll::Ready(read);
            }
            let mut socket = self.socket.borrow_mut();
            if socket.recv == Recv::Idle {
                self.ring.arm_recv(&mut socket);
            }
            socket.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn read_now(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let mut socket = self.socket.borrow_mut();
        let n = self.ring.take_held(&mut socket, buf);
        if n > 0 || buf.is_empty() {
            return Some(Ok(n));
        }
        if let Some(errno) = socket.error {
            return Some(Err(io::Error::from_raw_os_error(errno)));
        }
        socket.eof.then_some(Ok(0))
    }

    async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut socket = self.socket.borrow_mut();
            if !socket.held.is_empty() || socket.eof {
                return Poll::Ready(Ok(()));
            }
            if socket.recv == Recv::Idle {
                self.ring.arm_recv(&mut socket);
            }
            socket.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // A send left in flight by a dropped write still owns the buffer: wait for it.
        self.wait_send().await;
        {
            let mut socket = self.socket.borrow_mut();
            socket.send_buf.clear();
            socket.send_buf.extend_from_slice(data);
            socket.sent = 0;
            socket.send_error = None;
        }
        let mut quiet = true;
        loop {
            {
                let mut socket = self.socket.borrow_mut();
                if let Some(errno) = socket.send_error.take() {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                if socket.sent >= socket.send_buf.len() {
                    return Ok(());
                }
                self.ring.send(&mut socket, quiet);
            }
            quiet = false;
            self.wait_send().await;
        }
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        let fd = self.socket.borrow().fd;
        // SAFETY: the socket is open while this stream exists.
        if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.socket.borrow().fd
    }

    /// Gives the socket's send buffer back while the connection idles.
    fn trim(&mut self) {
        let mut socket = self.socket.borrow_mut();
        if !socket.sending && socket.send_buf.capacity() > 0 {
            socket.send_buf = Vec::new();
        }
        if socket.held.is_empty() && socket.held.capacity() > 0 {
            socket.held = VecDeque::new();
        }
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        self.ring.release(&mut self.socket.borrow_mut());
    }
}
