//! The listening sockets: one per core on the same address, with `SO_REUSEPORT` so the kernel
//! spreads connections across cores. Built with socket2 rather than glommio's `bind` to choose
//! the backlog (glommio fixes it at 1024).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener whose accepted sockets start with the options every connection needs: Linux
/// copies TCP_NODELAY and TCP_USER_TIMEOUT from the listener, so they cost no system call per
/// connection (checked by the test below).
pub fn bind(addr: SocketAddr, request_timeout: Duration) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Responses leave as soon as they are written.
    socket.set_nodelay(true)?;
    // A client that stops taking its responses (a zero receive window) leaves them in the
    // kernel's send buffer, up to tcp_wmem's maximum (4 MiB by default), where no write of ours
    // is waiting to time out: the connection would then live until the idle timeout.
    // TCP_USER_TIMEOUT makes the kernel reset it once sent data stayed unacknowledged, or
    // unsent behind a zero window, for the request timeout (Linux counts zero-window probes
    // since 5.11).
    socket.set_tcp_user_timeout(Some(request_timeout.max(Duration::from_secs(1))))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_and_the_user_timeout() {
        let fd = bind("127.0.0.1:0".parse().expect("addr"), Duration::from_secs(7)).expect("bind");
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(false).expect("blocking");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let accepted = socket2::SockRef::from(&accepted);
        assert!(accepted.nodelay().expect("TCP_NODELAY"));
        assert_eq!(
            accepted.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(Duration::from_secs(7))
        );
    }
}
