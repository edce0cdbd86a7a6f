//! What the server is told: its configuration ([`ServerConfig`], [`IoPath`]) and what it
//! serves on each core ([`CoreApps`]), from the composition root.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::api::{AdminToken, App};
use crate::http::Limits;

use super::tally_ring::TaskRun;

/// Which sockets connections use (`--io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoPath {
    /// tally's own io_uring ring per core (`ring`).
    Uring,
    /// glommio's `TcpStream`.
    Glommio,
}

/// What the server is told to do; built from the command line by `config`, or by a test.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// One core per CPU, in this order; core 0 (on `cpus[0]`) owns the counter.
    pub cpus: Vec<usize>,
    pub limits: Limits,
    /// Open connections per core; one beyond it gets 503 and is closed.
    pub max_connections_per_core: usize,
    /// A client has this long to send a whole request once it started one (408 after).
    pub request_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
    /// In-flight requests get this long to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Create glommio's rings with COOP_TASKRUN | TASKRUN_FLAG (see `glommio_ring_flags`).
    pub ring_taskrun_flags: bool,
    /// Which sockets the connections use.
    pub io: IoPath,
    /// How tally's ring (`IoPath::Uring`) runs completions.
    pub io_taskrun: TaskRun,
    /// Opens the admin routes to requests that present it.
    pub admin_token: Option<AdminToken>,
}

/// What the cores serve, from the composition root (`compose`): the server starts a thread
/// and an executor per core and builds each core's [`App`] there, knowing nothing of what it
/// holds.
pub struct CoreApps<G, P> {
    /// One per core, in core order: a guard the core's thread keeps on its stack until it ends
    /// (so it is released however the thread ends, a panic included), and the parts its
    /// [`App`] is built from.
    pub starts: Vec<(G, P)>,
    /// Builds core `core`'s App from its parts, on its executor, starting the application's
    /// own tasks there.
    pub build: fn(P, usize) -> Rc<App>,
}
