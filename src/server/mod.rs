//! The executors: one glommio `LocalExecutor` per core, pinned, each with its own
//! `SO_REUSEPORT` listener, accept loop and connections. Core 0 is also the counter's owner.
//!
//! - [`run`] (this file): bind every listener first (so a bad address fails before anything
//!   starts), start one thread per core, hand their stop channels to the [`Shutdown`] that
//!   `main` installed before start-up, wait for them all.
//! - `executor`: one core's thread and executor, its life in named steps: build its
//!   [`App`](crate::api::App) from the parts [`CoreApps`] gave, serve, drain, finish.
//! - `accept`: the accept loop and the connection cap. `conn`: one connection.
//! - `context`: what connections on a core share (limits, timeouts, Date, registry).
//! - `registry`: open connections and their deadlines. `listener`, `signals`: the listening
//!   socket, SIGTERM/SIGINT ([`Shutdown`]).
//! - `stream`: the `Stream` trait a connection reads and writes through; behind it,
//!   `glommio_stream` (glommio's sockets, `--io glommio`) or `tally_ring`: tally's own
//!   io_uring ring per core (`--io uring`, the default) with its buffers, socket table,
//!   stream, driver and park hook.
//! - `io_uring_support`: whether this process may use io_uring at all, checked before any
//!   executor starts. `glommio_ring_flags`: the COOP_TASKRUN setup flags added to glommio's
//!   own rings (not tally's).
//!
//! Threads: core `i` runs on `cpus[i]` (glommio pins it). The store thread (tokio-postgres)
//! is pinned by `main` next to the owner core; the signal thread sleeps in `sigwaitinfo` and is
//! pinned to the last CPU (README.md, Architecture).

mod accept;
mod conn;
mod context;
mod executor;
pub mod glommio_ring_flags;
mod glommio_stream;
pub mod io_uring_support;
mod listener;
mod registry;
mod signals;
mod stream;
mod tally_ring;

pub use signals::{on_hangup, Shutdown};
pub use tally_ring::TaskRun;

/// Which sockets connections use (`--io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoPath {
    /// tally's own io_uring ring per core (`ring`).
    Uring,
    /// glommio's `TcpStream`.
    Glommio,
}

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use crate::api::{AdminToken, App};
use crate::http::Limits;

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

/// The CPUs this process may run on (respects `taskset` and container cpusets), ascending.
pub fn allowed_cpus() -> Result<Vec<usize>, ServerError> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .ok_or(ServerError::NoCpus)?
        .into_iter()
        .map(|core| core.id)
        .collect();
    cpus.sort_unstable();
    if cpus.is_empty() {
        return Err(ServerError::NoCpus);
    }
    Ok(cpus)
}

/// Runs the server until `shutdown` sees SIGTERM/SIGINT (at once if it saw one already) and a
/// graceful drain.
pub fn run<G: Send + 'static, P: Send + 'static>(
    config: &ServerConfig,
    apps: CoreApps<G, P>,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    let listeners = bind_listeners(config)?;
    let (stop_senders, stop_receivers): (Vec<_>, Vec<_>) =
        config.cpus.iter().map(|_| flume::bounded::<()>(1)).unzip();
    shutdown.attach(&stop_senders);
    glommio_ring_flags::set_enabled(config.ring_taskrun_flags);
    let cores = executor::spawn_all(config, apps, listeners, stop_receivers)?;
    let mut failure = cores.wait_started();
    match &failure {
        None => {
            log::info!(
                "tally listening on {} with {} core(s) (CPUs {:?})",
                config.listen,
                config.cpus.len(),
                config.cpus,
            );
            log_ring_flags(config.ring_taskrun_flags);
        }
        Some(_) => signals::stop_all(&stop_senders),
    }
    if let Err(err) = cores.join() {
        failure.get_or_insert(err);
    }
    failure.map_or(Ok(()), Err)
}

/// Says which setup flags glommio's rings got, and why not when the kernel refused them.
fn log_ring_flags(requested: bool) {
    let (with_flags, refused) = glommio_ring_flags::ring_counts();
    if !requested {
        log::info!("io_uring rings without COOP_TASKRUN (--io-ring-taskrun-flags false)");
    } else if refused > 0 {
        log::warn!(
            "the kernel refused COOP_TASKRUN|TASKRUN_FLAG (Linux < 5.19?) on {refused} ring(s); \
             they run without them ({with_flags} ring(s) got them)"
        );
    } else {
        log::info!("io_uring rings with COOP_TASKRUN|TASKRUN_FLAG: {with_flags}");
    }
}

/// One listener per core, all on the same address.
fn bind_listeners(config: &ServerConfig) -> Result<Vec<OwnedFd>, ServerError> {
    config
        .cpus
        .iter()
        .map(|_| listener::bind(config.listen, config.request_timeout))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })
}
