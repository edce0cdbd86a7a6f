//! What a connection reads from and writes to: glommio's `TcpStream` (`--io glommio`,
//! [`super::glommio_stream::GlommioStream`]) or a socket on tally's own ring (`--io uring`,
//! [`super::tally_ring::RingStream`]). The connection logic in `conn` is written once against
//! this trait.

use std::io;
use std::os::fd::RawFd;

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
