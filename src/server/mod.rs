//! The executors: one glommio `LocalExecutor` per core, pinned, each with its own
//! `SO_REUSEPORT` listener, accept loop and connections. Core 0 is also the counter's owner.
//!
//! - [`run`] (this file): bind every listener first (so a bad address fails before anything
//!   starts), start one thread per core, hand their stop channels to the [`Shutdown`] that
//!   `main` installed before start-up, wait for them all.
//! - `executor`: one core's thread and executor, its life in named steps: build its
//!   [`App`](crate::api::App) from the parts [`CoreApps`] gave, serve, drain, finish.
//! - `config`, `error`: what the server is told ([`ServerConfig`], [`CoreApps`]) and why it
//!   fails ([`ServerError`]).
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
//! pinned to the last CPU (docs/architecture.md, "Threads").

mod accept;
mod config;
mod conn;
mod context;
mod error;
mod executor;
pub mod glommio_ring_flags;
mod glommio_stream;
pub mod io_uring_support;
mod listener;
mod registry;
mod signals;
mod stream;
mod tally_ring;

pub use config::{CoreApps, IoPath, ServerConfig};
pub use error::ServerError;
pub use signals::{on_hangup, Shutdown};
pub use tally_ring::TaskRun;

use std::os::fd::OwnedFd;

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
