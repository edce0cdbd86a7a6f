//! One core's executor thread, its life in the order it happens: build the core's [`App`]
//! (with the parts the composition root gave), accept and serve until told to stop, drain its
//! connections, close the App (its last increments go to the owner), and let it finish (on the
//! owner core: wait for the owner to commit what every core sent).

use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::api::App;
use crate::http::HttpDate;

use super::context::ConnContext;
use super::registry::Registry;
use super::tally_ring::{self, Ring};
use super::{accept, io_uring_support, CoreApps, IoPath, ServerConfig, ServerError};

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
struct CoreStart<P> {
    id: usize,
    config: ServerConfig,
    parts: P,
    build: fn(P, usize) -> Rc<App>,
    stop: flume::Receiver<()>,
    listener: OwnedFd,
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
pub fn spawn_all<G: Send + 'static, P: Send + 'static>(
    config: &ServerConfig,
    apps: CoreApps<G, P>,
    listeners: Vec<OwnedFd>,
    stops: Vec<flume::Receiver<()>>,
) -> Result<Cores, ServerError> {
    let (started_tx, started) = flume::unbounded();
    let mut threads = Vec::with_capacity(config.cpus.len());
    let per_core = apps.starts.into_iter().zip(listeners).zip(stops);
    for (id, (((guard, parts), listener), stop)) in per_core.enumerate() {
        let start = CoreStart {
            id,
            config: config.clone(),
            parts,
            build: apps.build,
            stop,
            listener,
        };
        let thread = spawn_core(guard, start, config.cpus[id], started_tx.clone())?;
        threads.push((id, thread));
    }
    Ok(Cores { threads, started })
}

/// Starts core `start.id`'s thread; `guard` stays on its stack until the thread ends.
fn spawn_core<G: Send + 'static, P: Send + 'static>(
    guard: G,
    start: CoreStart<P>,
    cpu: usize,
    started: Started,
) -> Result<JoinHandle<()>, ServerError> {
    let id = start.id;
    let name = format!("tally-core-{id}");
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Dropped however the thread ends: glommio leaks the tasks of an executor that
            // panicked, so what must be released then cannot live in a task.
            let _guard = guard;
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

async fn core_main<P>(start: CoreStart<P>, started: Started) {
    let CoreStart {
        id,
        config,
        parts,
        build,
        stop,
        listener,
    } = start;
    let app = build(parts, id);
    let ctx = Rc::new(connection_context(app.clone(), &config));
    glommio::spawn_local(ctx.clone().run_sweeper()).detach();

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
    // Bounded, so a core that died without closing cannot keep the process alive.
    app.finish(2 * config.shutdown_grace).await;
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

fn connection_context(app: Rc<App>, config: &ServerConfig) -> ConnContext {
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

/// Closes idle connections now and lets busy ones finish their requests within the grace
/// period; then closes those still waiting to read, closes the App (this core's last
/// increments go to the owner), and waits (bounded again) for the answers to go out.
async fn drain(ctx: &ConnContext, grace: Duration) {
    ctx.shutting_down.set(true);
    ctx.registry.close_idle();
    if !all_closed_within(
        ctx,
        grace,
        "still open after the grace period; closing them",
    )
    .await
    {
        ctx.registry.close_all_reading();
    }
    ctx.app.close();
    all_closed_within(ctx, grace, "still waiting for their answers; leaving them").await;
}

/// Whether every connection closed within `limit`; if not, says how many are `left`.
async fn all_closed_within(ctx: &ConnContext, limit: Duration, left: &str) -> bool {
    let closed = within(limit, ctx.registry.until_empty()).await.is_some();
    if !closed {
        log::warn!(
            "core {}: {} connection(s) {left}",
            ctx.app.core,
            ctx.registry.len()
        );
    }
    closed
}

/// `fut`'s output, or `None` if it takes longer than `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}
