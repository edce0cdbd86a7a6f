//! The accept loop of one core. A connection beyond the per-core cap gets a 503 and is closed,
//! so the client learns why instead of waiting in the kernel's backlog.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt as _;
use glommio::net::{TcpListener, TcpStream};

use super::conn;
use super::context::ConnContext;

/// Pause after a failed accept (EMFILE, ENOBUFS and friends) rather than spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts and serves connections until a stop message arrives.
pub async fn serve_until_stopped(
    ctx: &Rc<ConnContext>,
    listener: &TcpListener,
    stop: &flume::Receiver<()>,
) {
    enum Event {
        Accepted(glommio::Result<TcpStream, ()>),
        Stop,
    }
    loop {
        let event =
            futures_lite::future::or(async { Event::Accepted(listener.accept().await) }, async {
                let _ = stop.recv_async().await;
                Event::Stop
            })
            .await;
        match event {
            Event::Stop => return,
            Event::Accepted(Ok(stream)) => admit(ctx, stream),
            Event::Accepted(Err(err)) => {
                log::warn!("core {}: accept failed: {err}", ctx.app.core);
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Starts serving an accepted connection on its own task, or refuses it at the cap.
fn admit(ctx: &Rc<ConnContext>, stream: TcpStream) {
    let metrics = ctx.app.metrics();
    metrics.accepted_connections.add(1);
    if ctx.registry.len() >= ctx.max_connections {
        metrics.refused_connections.add(1);
        glommio::spawn_local(conn::refuse(ctx.clone(), stream)).detach();
        return;
    }
    if let Err(err) = stream.set_nodelay(true) {
        log::debug!("TCP_NODELAY: {err}");
    }
    limit_unsent_output(ctx, &stream);
    // A bug that panics while serving one connection must cost only that connection, not the
    // core (glommio would unwind through its executor).
    let served = std::panic::AssertUnwindSafe(conn::serve(ctx.clone(), stream));
    glommio::spawn_local(async move {
        if served.catch_unwind().await.is_err() {
            log::error!("a connection task panicked; its connection was closed");
        }
    })
    .detach();
}

/// A client that stops taking its responses (a zero receive window) leaves them in the kernel's
/// send buffer, up to tcp_wmem's maximum (4 MiB by default), where no write of ours is waiting
/// to time out: the connection then lives until the idle timeout. TCP_USER_TIMEOUT makes the
/// kernel reset it once sent data stayed unacknowledged, or unsent behind a zero window, for
/// the request timeout (Linux counts zero-window probes since 5.11). One setsockopt per
/// connection, like TCP_NODELAY.
fn limit_unsent_output(ctx: &ConnContext, stream: &TcpStream) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor is the accepted socket, open while `stream` is, which outlives
    // this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let timeout = Duration::from_secs(ctx.request_timeout_secs.max(1));
    if let Err(err) = socket2::SockRef::from(&fd).set_tcp_user_timeout(Some(timeout)) {
        log::debug!("TCP_USER_TIMEOUT: {err}");
    }
}
