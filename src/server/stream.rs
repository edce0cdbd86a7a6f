//! What a connection reads from and writes to: glommio's `TcpStream` (`--io glommio`) or a
//! socket on tally's own ring (`--io uring`, [`super::tally_ring::RingStream`]). The connection
//! logic in `conn` is written once against this trait.
//!
//! May touch: the connection's socket only.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

pub trait Stream {
    /// Whether a read copies bytes that already arrived (the ring's) rather than waiting with
    /// the caller's buffer (glommio's): such a connection needs no read buffer between
    /// requests.
    const WAITS_WITHOUT_BUFFER: bool = false;

    /// Reads what the client sent next; 0 at end of input.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// What `read` would return, if it would return without waiting and without a system
    /// call; `None` otherwise. Lets a connection skip setting up a wait (and the race with
    /// its deadline) when the bytes are already there.
    fn read_now(&mut self, _buf: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }

    /// Reads right after a batch that waited for a commit (see `GlommioStream`).
    async fn read_after_commit(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Sends FIN: no more responses.
    async fn shutdown_write(&mut self) -> io::Result<()>;

    fn raw_fd(&self) -> RawFd;

    /// Resolves once a read would not wait (bytes, end of input or an error are there),
    /// without holding a buffer meanwhile.
    async fn readable(&mut self) -> io::Result<()>;

    /// Gives back memory held for the connection while it idles.
    fn trim(&mut self) {}
}

/// glommio's socket path: an optimistic recv/send system call per request, and a one-shot
/// io_uring poll on glommio's ring when the socket is not ready.
pub struct GlommioStream(pub glommio::net::TcpStream);

impl Stream for GlommioStream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).await
    }

    /// glommio's read arms a one-shot io_uring poll whenever the socket is empty; its
    /// completion arrives as task work that interrupts the running core (an IPI), which
    /// profiles showed as the largest cost after a commit, when every connection of the batch
    /// is answered at once and their next requests arrive together. So after such a batch,
    /// first let the other woken connections write their answers, then try a plain
    /// non-blocking recv(2): the next request is usually there, and no poll is needed.
    /// `BASELINE_ARGS="--io glommio" bench/run.sh counter` (256 connections POSTing) measures
    /// what it saves (docs/benchmarks.md). For lookups, where connections wake one at a time,
    /// the same trick measured no better than glommio's read, so it is not used there.
    async fn read_after_commit(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        futures_lite::future::yield_now().await;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and the descriptor is this
        // connection's open socket.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(err);
        }
        self.0.read(buf).await
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf).await
    }

    async fn readable(&mut self) -> io::Result<()> {
        self.0.peek(&mut [0; 1]).await?;
        Ok(())
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.close().await
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
