//! One core's life, in the order it happens: build the core's [`App`] (its key/value replica
//! and its side of the counter), start its background tasks, accept and serve until told to
//! stop, drain its connections, hand its last increments to the owner, and (on the owner
//! core) wait for the owner to commit what every core sent.

use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::app::{App, Shared};
use crate::counter::{self, CorePort, CounterCore, OwnerPort, Wiring};
use crate::http::HttpDate;
use crate::kv::{Dataset, Replica, Swap, Swapped};

use super::context::ConnContext;
use super::registry::Registry;
use super::tally_ring::{self, Ring};
use super::{accept, io_uring_support, IoPath, ServerConfig, ServerError};

/// Locked memory glommio gets for its registered I/O buffers. Sockets do not use them, and a
/// small value keeps tally inside the default 8 MiB `ulimit -l` of most systems.
const IO_MEMORY_BYTES: usize = 64 * 1024;

/// How long the tasks of a core run before glommio looks at its own ring again (timers, the
/// store thread's replies, other cores' messages) even though tasks are still runnable.
/// glommio's default is 100 ms, and a flood of pipelined requests can keep tasks runnable for
/// long stretches: a counter POST then waited up to the whole 100 ms for its commit's reply
/// (`bench/post_under_flood.sh` measures it). With tally's park hook the timer is armed only
/// when none is pending (vendor/glommio/TALLY-PATCH.md), so it costs at most one kernel entry
/// per period while the core is busy and none while it sleeps.
pub(crate) const PREEMPT_TIMER: std::time::Duration = std::time::Duration::from_millis(2);

/// What a core thread receives from [`spawn_all`].
struct CoreStart {
    id: usize,
    config: ServerConfig,
    shared: Arc<Shared>,
    dataset: Arc<Dataset>,
    port: CorePort,
    /// Core 0 only: the counter's owner side.
    owner: Option<OwnerPort>,
    stop: flume::Receiver<()>,
    listener: OwnedFd,
    /// New replicas from the key/value reload thread.
    swaps: flume::Receiver<Swap>,
}

type Started = flume::Sender<Result<usize, ServerError>>;

/// The running core threads.
pub struct Cores {
    threads: Vec<(usize, JoinHandle<()>)>,
    started: flume::Receiver<Result<usize, ServerError>>,
}

impl Cores {
    /// Waits until every core serves or has failed to start; returns the first failure.
    pub fn wait_started(&self) -> Option<ServerError> {
        let mut failure = None;
        for _ in 0..self.threads.len() {
            match self.started.recv() {
                Ok(Ok(id)) => log::debug!("core {id} serving"),
                Ok(Err(err)) => {
                    failure.get_or_insert(err);
                }
                Err(_) => break,
            }
        }
        failure
    }

    /// Waits for every core thread to end.
    pub fn join(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (core, thread) in self.threads {
            if thread.join().is_err() && result.is_ok() {
                result = Err(ServerError::CorePanicked { core });
            }
        }
        result
    }
}

/// Starts one pinned executor thread per configured CPU.
pub fn spawn_all(
    config: &ServerConfig,
    shared: &Arc<Shared>,
    dataset: Arc<Dataset>,
    wiring: Wiring,
    listeners: Vec<OwnedFd>,
    stops: Vec<flume::Receiver<()>>,
    swaps: Vec<flume::Receiver<Swap>>,
) -> Result<Cores, ServerError> {
    let (started_tx, started) = flume::unbounded();
    let mut owner = Some(wiring.owner);
    let mut threads = Vec::with_capacity(config.cpus.len());
    let per_core = listeners
        .into_iter()
        .zip(wiring.cores)
        .zip(stops)
        .zip(swaps);
    for (id, (((listener, port), stop), swaps)) in per_core.enumerate() {
        let start = CoreStart {
            id,
            config: config.clone(),
            shared: shared.clone(),
            dataset: dataset.clone(),
            port,
            owner: if id == 0 { owner.take() } else { None },
            stop,
            listener,
            swaps,
        };
        let thread = spawn_core(start, config.cpus[id], started_tx.clone())?;
        threads.push((id, thread));
    }
    Ok(Cores { threads, started })
}

fn spawn_core(
    mut start: CoreStart,
    cpu: usize,
    started: Started,
) -> Result<JoinHandle<()>, ServerError> {
    let id = start.id;
    let name = format!("tally-core-{id}");
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // On this thread's stack, so however the thread ends (a panic in any task
            // included) the other cores stop waiting for the owner (`counter::OwnerLease`).
            let _owner_lease = start
                .owner
                .as_mut()
                .map(|port| port.lease(&start.shared.counter));
            let executor = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&name)
                .io_memory(IO_MEMORY_BYTES)
                .preempt_timer(PREEMPT_TIMER)
                .make();
            match executor {
                Ok(executor) => executor.run(core_main(start, started)),
                Err(err) => {
                    let _ = started.send(Err(ServerError::Executor {
                        core: id,
                        reason: format!("{err} ({})", io_uring_support::HINT),
                    }));
                }
            }
        })
        .map_err(|source| ServerError::Thread {
            name: format!("tally-core-{id}"),
            source,
        })
}

async fn core_main(start: CoreStart, started: Started) {
    let CoreStart {
        id,
        config,
        shared,
        dataset,
        port,
        owner,
        stop,
        listener,
        swaps,
    } = start;
    let owner =
        owner.map(|port| glommio::spawn_local(counter::run_owner(port, shared.counter.clone())));
    let app = build_app(id, shared, dataset, port);
    let ctx = Rc::new(connection_context(app, &config));
    start_background_tasks(&ctx);
    glommio::spawn_local(swap_replicas(ctx.clone(), swaps)).detach();

    let io = CoreIo::open(id, &config, listener);
    let _ = started.send(Ok(id));
    drop(started);

    match &io {
        CoreIo::Glommio(listener) => accept::serve_until_stopped(&ctx, listener, &stop).await,
        CoreIo::Ring { ring, listener, .. } => {
            accept::serve_on_ring(&ctx, ring, listener, &stop).await
        }
    }
    drain(&ctx, config.shutdown_grace).await;
    io.close(id).await;
    drop(ctx);
    if let Some(owner) = owner {
        // The owner ends once every core has closed its CounterCore (dropping its sender).
        // Bounded, so a core that died without closing cannot keep the process alive.
        if within(2 * config.shutdown_grace, owner).await.is_none() {
            log::error!("the counter's owner did not finish draining; exiting anyway");
        }
    }
}

/// How this core's connections do their I/O (`--io`), with what must be closed after them.
enum CoreIo {
    Glommio(glommio::net::TcpListener),
    Ring {
        ring: Rc<Ring>,
        driver: glommio::Task<()>,
        listener: OwnedFd,
    },
}

impl CoreIo {
    /// Sets up tally's ring when asked to, or glommio's sockets (also when the ring cannot be
    /// set up here: an older kernel, a seccomp profile that refuses an opcode).
    fn open(id: usize, config: &ServerConfig, listener: OwnedFd) -> CoreIo {
        if config.io == IoPath::Uring {
            match Ring::new(config.io_taskrun) {
                Ok(ring) => {
                    log::info!(
                        "core {id}: connections on tally's io_uring ring ({:?} task run)",
                        ring.taskrun()
                    );
                    let driver = glommio::spawn_local(ring.clone().drive());
                    return CoreIo::Ring {
                        ring,
                        driver,
                        listener,
                    };
                }
                Err(err) => log::warn!("core {id}: {err}; using glommio's sockets (--io glommio)"),
            }
        } else {
            log::info!("core {id}: connections on glommio's sockets (--io glommio)");
        }
        // SAFETY: the fd is a listening TCP socket we own; ownership moves to the listener.
        CoreIo::Glommio(unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) })
    }

    /// After the drain: closes the listener; on the ring, cancels what is still in flight and
    /// waits (bounded) for the kernel to let go of the buffers. If it does not, the ring and
    /// its buffers are leaked rather than freed under the kernel.
    async fn close(self, id: usize) {
        if let CoreIo::Ring {
            ring,
            driver,
            listener,
        } = self
        {
            drop(listener);
            ring.finish();
            if within(tally_ring::FINISH_WAIT, driver).await.is_none() {
                log::warn!("core {id}: the ring still had requests in flight at exit");
                std::mem::forget(ring);
            }
        }
    }
}

/// Builds this core's replica (on this core's thread, so its memory is local to it) and its
/// side of the counter. The core's reference to the parsed dataset is dropped here.
fn build_app(id: usize, shared: Arc<Shared>, dataset: Arc<Dataset>, port: CorePort) -> App {
    let started = Instant::now();
    let replica = Replica::build(&dataset);
    drop(dataset);
    log::info!(
        "core {id}: key/value replica of {} pairs, {} bytes, built in {:?}",
        replica.len(),
        replica.memory_bytes(),
        started.elapsed()
    );
    let counter = CounterCore::new(port, shared.counter.max_batch);
    App::new(id, shared, replica, counter)
}

fn connection_context(app: App, config: &ServerConfig) -> ConnContext {
    ConnContext {
        app,
        limits: config.limits,
        request_timeout_secs: config.request_timeout.as_secs().max(1),
        idle_timeout_secs: config.idle_timeout.as_secs().max(1),
        max_connections: config.max_connections_per_core.max(1),
        date: std::cell::RefCell::new(HttpDate::new()),
        registry: Registry::new(),
        shutting_down: std::cell::Cell::new(false),
        read_buffers: std::cell::RefCell::new(Vec::new()),
        lingering_refusals: std::cell::Cell::new(0),
    }
}

/// The counter's batcher and reply tasks, and the once-a-second sweeper.
fn start_background_tasks(ctx: &Rc<ConnContext>) {
    let counter = &ctx.app.counter;
    glommio::spawn_local(counter.clone().run_batcher()).detach();
    glommio::spawn_local(counter.clone().run_replies()).detach();
    glommio::spawn_local(ctx.clone().run_sweeper()).detach();
}

/// Swaps in each replica the reload thread sends, between two requests (this task runs only
/// when no handler does), and hands the old one back to be freed off this core. Ends with the
/// core: a replica sent during the drain is dropped with the channel, and shutdown does not
/// wait for it.
async fn swap_replicas(ctx: Rc<ConnContext>, swaps: flume::Receiver<Swap>) {
    while let Ok(Swap { replica, done }) = swaps.recv_async().await {
        let (pairs, bytes) = (replica.len(), replica.memory_bytes());
        let old = ctx.app.swap_replica(replica);
        log::info!(
            "core {}: key/value replica of {pairs} pairs, {bytes} bytes swapped in",
            ctx.app.core
        );
        // If the reload thread gave up waiting, the old replica comes back and is freed here.
        let _ = done.send(Swapped {
            core: ctx.app.core,
            old,
        });
    }
}

/// Closes idle connections now and lets busy ones finish their requests within the grace
/// period; then closes those still waiting to read, sends this core's last increments to the
/// owner, and waits (bounded again) for the answers to go out.
async fn drain(ctx: &ConnContext, grace: Duration) {
    ctx.shutting_down.set(true);
    ctx.registry.close_idle();
    if within(grace, ctx.registry.until_empty()).await.is_none() {
        log::warn!(
            "core {}: {} connection(s) still open after the grace period; closing them",
            ctx.app.core,
            ctx.registry.len()
        );
        ctx.registry.close_all_reading();
    }
    ctx.app.counter.close();
    if within(grace, ctx.registry.until_empty()).await.is_none() {
        log::warn!(
            "core {}: {} connection(s) still waiting for the counter; leaving them",
            ctx.app.core,
            ctx.registry.len()
        );
    }
}

/// `fut`'s output, or `None` if it takes longer than `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
