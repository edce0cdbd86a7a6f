//! The listening sockets: one per core on the same address, with `SO_REUSEPORT` so the kernel
//! spreads connections across cores. Built with socket2 rather than glommio's `bind` to choose
//! the backlog (glommio fixes it at 1024).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

pub fn bind(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit it: responses leave as soon as they are written.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
