//! glommio's socket path (`--io glommio`, and where tally's ring cannot be set up): the
//! [`Stream`] over glommio's `TcpStream`.
//!
//! May touch: the connection's socket only.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::stream::Stream;

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
