//! Why the server could not start or run.

use std::net::SocketAddr;

use super::io_uring_support;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The cause is the `source`, not part of the message: `main` prints the whole chain, and a
    /// message that repeated it would say it twice.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot determine the CPUs this process may run on")]
    NoCpus,
    #[error(transparent)]
    IoUring(#[from] io_uring_support::UringError),
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start thread {name}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
    #[error("core {core} failed to start: {reason}")]
    Executor { core: usize, reason: String },
    #[error("core {core}'s thread panicked")]
    CorePanicked { core: usize },
}
