//! The accept loop of one core. A connection beyond the per-core cap gets a 503 and is closed,
//! so the client learns why instead of waiting in the kernel's backlog.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt as _;
use glommio::net::TcpListener;

use super::conn;
use super::context::ConnContext;
use super::glommio_stream::GlommioStream;
use super::stream::Stream;
use super::tally_ring::Ring;

/// Pause after a failed accept (EMFILE, ENOBUFS and friends) rather than spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts (glommio's sockets) and serves connections until a stop message arrives.
pub async fn serve_until_stopped(
    ctx: &Rc<ConnContext>,
    listener: &TcpListener,
    stop: &flume::Receiver<()>,
) {
    loop {
        match until_stopped(stop, listener.accept()).await {
            None => return,
            Some(Ok(stream)) => admit(ctx, GlommioStream(stream)),
            Some(Err(err)) => {
                log::warn!("core {}: accept failed: {err}", ctx.app.core);
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accepts through tally's ring (one multishot accept) and serves connections until a stop
/// message arrives; the accept is cancelled then.
pub async fn serve_on_ring(
    ctx: &Rc<ConnContext>,
    ring: &Rc<Ring>,
    listener: &OwnedFd,
    stop: &flume::Receiver<()>,
) {
    ring.start_accepting(listener.as_raw_fd());
    loop {
        match until_stopped(stop, ring.accept()).await {
            None => break,
            Some(Ok(fd)) => admit(ctx, ring.stream(fd)),
            Some(Err(err)) => {
                log::warn!("core {}: accept failed: {err}", ctx.app.core);
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
                ring.resume_accepting();
            }
        }
    }
    ring.stop_accepting();
}

/// `accept`'s output, or `None` once a stop message arrives.
async fn until_stopped<T>(
    stop: &flume::Receiver<()>,
    accept: impl Future<Output = T>,
) -> Option<T> {
    futures_lite::future::or(async { Some(accept.await) }, async {
        let _ = stop.recv_async().await;
        None
    })
    .await
}

/// Starts serving an accepted connection on its own task, or refuses it at the cap.
fn admit<S: Stream + 'static>(ctx: &Rc<ConnContext>, stream: S) {
    let metrics = ctx.app.metrics();
    metrics.accepted_connections.add(1);
    if ctx.registry.len() >= ctx.max_connections {
        metrics.refused_connections.add(1);
        glommio::spawn_local(conn::refuse(ctx.clone(), stream)).detach();
        return;
    }
    // TCP_NODELAY and TCP_USER_TIMEOUT come from the listener (`listener::bind`).
    glommio::spawn_local(connection_task(ctx.clone(), stream)).detach();
}

/// A connection's task. A bug that panics while serving one connection must cost only that
/// connection, not the core (glommio would unwind through its executor).
///
/// The connection's future is made here, inside the task's own: a future made by the caller
/// and captured by an `async` block would be held twice (a captured variable keeps its own
/// slot in the state after it is moved into the awaited future): 1,704 bytes per connection
/// instead of 880.
async fn connection_task<S: Stream>(ctx: Rc<ConnContext>, stream: S) {
    let served = std::panic::AssertUnwindSafe(conn::serve(ctx, stream));
    if served.catch_unwind().await.is_err() {
        log::error!("a connection task panicked; its connection was closed");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tally_ring::RingStream;
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection holds its task: 10,000 idle ones must fit in 20 MB with room for
    /// their bookkeeping (docs/api.md, "Memory per connection"), and a flood past the cap must not
    /// cost a buffer per refused connection.
    #[test]
    fn connection_tasks_stay_small() {
        for (task, size, limit) in [
            (
                "serve (ring)",
                future_size(connection_task::<RingStream>),
                1024,
            ),
            (
                "serve (glommio)",
                future_size(connection_task::<GlommioStream>),
                1280,
            ),
            (
                "refuse (ring)",
                future_size(conn::refuse::<RingStream>),
                512,
            ),
            (
                "refuse (glommio)",
                future_size(conn::refuse::<GlommioStream>),
                768,
            ),
        ] {
            assert!(size <= limit, "{task}: {size} bytes, more than {limit}");
        }
    }
}
