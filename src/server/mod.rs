//! The executors: one glommio `LocalExecutor` per core, pinned, each with its own
//! `SO_REUSEPORT` listener, accept loop, connections, key/value replica and counter batcher.
//! Core 0 is also the counter's owner core.
//!
//! Start-up and shutdown live here: [`run`] binds every listener first (so a bad address fails
//! before anything starts), starts the executors, forwards SIGTERM/SIGINT to them, and returns
//! once every core has drained its connections and the owner has committed the last batch.

mod conn;
mod listener;
mod registry;
pub mod uring;

use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt as _;
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::ServeArgs;
use crate::counter::{self, CorePort, CounterCore, CounterShared, OwnerPort};
use crate::http::{HttpDate, Limits};
use crate::kv::{Dataset, LookupScratch, Replica};
use crate::metrics::{self, CoreMetrics};
use registry::Registry;

/// Locked memory glommio gets for its registered I/O buffers. Sockets do not use them, and a
/// small value keeps tally inside the default 8 MiB `ulimit -l` of most systems.
const IO_MEMORY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot determine the CPUs this process may run on: {0}")]
    Affinity(std::io::Error),
    #[error(transparent)]
    IoUring(#[from] uring::UringError),
    #[error("core {core} failed to start: {reason}")]
    Executor { core: usize, reason: String },
}

/// State shared by every core (read-mostly; counters are per-core).
pub struct Instance {
    pub cores: usize,
    pub metrics: Vec<CoreMetrics>,
    pub counter: Arc<CounterShared>,
    /// Cores whose key/value replica is built.
    kv_ready_cores: AtomicUsize,
    /// Cores still serving; the owner core waits for zero before its last commit.
    serving_cores: AtomicUsize,
    /// Time since start-up, for `/metrics`.
    started: Instant,
}

impl Instance {
    pub fn kv_ready(&self) -> bool {
        self.kv_ready_cores.load(Ordering::Acquire) == self.cores
    }
}

/// One core's state, built on that core and used only there.
pub struct Core {
    pub id: usize,
    pub instance: Arc<Instance>,
    pub limits: Limits,
    pub request_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub date: RefCell<HttpDate>,
    pub replica: Replica,
    pub kv_scratch: RefCell<LookupScratch>,
    pub counter: Rc<CounterCore>,
    registry: Registry,
    pub shutting_down: Cell<bool>,
}

impl Core {
    pub fn metrics(&self) -> &CoreMetrics {
        &self.instance.metrics[self.id]
    }

    /// `/metrics`: every core's HTTP metrics plus the counter's.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(8192);
        metrics::render_cores(&self.instance.metrics, &mut out);
        self.instance.counter.render_metrics(&mut out);
        metrics::write_single(
            &mut out,
            "tally_uptime_seconds",
            "gauge",
            "Seconds since start-up.",
            self.instance.started.elapsed().as_secs(),
        );
        out
    }
}

/// Everything [`run`] needs besides the configuration.
pub struct Services {
    pub dataset: Arc<Dataset>,
    pub counter: Arc<CounterShared>,
    pub wiring: counter::Wiring,
}

/// The CPUs this process may run on (respects `taskset` and container cpusets).
pub fn allowed_cpus() -> Result<Vec<usize>, ServerError> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(ServerError::Affinity(std::io::Error::last_os_error()));
    }
    // SAFETY: CPU_ISSET reads the set filled in above, for indices below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Runs the server until SIGTERM/SIGINT and a graceful drain.
pub fn run(cfg: &ServeArgs, services: Services, cpus: &[usize]) -> Result<(), ServerError> {
    let Services {
        dataset,
        counter,
        wiring,
    } = services;
    let cores = cpus.len();
    let listeners = (0..cores)
        .map(|_| listener::bind(cfg.listen))
        .collect::<Result<Vec<OwnedFd>, _>>()
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;

    let instance = Arc::new(Instance {
        cores,
        metrics: (0..cores).map(|_| CoreMetrics::default()).collect(),
        counter,
        kv_ready_cores: AtomicUsize::new(0),
        serving_cores: AtomicUsize::new(cores),
        started: Instant::now(),
    });

    let (stop_txs, stop_rxs): (Vec<_>, Vec<_>) =
        (0..cores).map(|_| flume::bounded::<()>(1)).unzip();
    let signals = spawn_signal_forwarder(stop_txs.clone())?;

    let (started_tx, started_rx) = flume::unbounded::<Result<usize, ServerError>>();
    let mut owner_port = Some(wiring.owner);
    let mut threads = Vec::with_capacity(cores);
    for (((id, listener), port), stop) in listeners
        .into_iter()
        .enumerate()
        .zip(wiring.cores)
        .zip(stop_rxs)
    {
        let cpu = cpus[id];
        let ctx = CoreStart {
            id,
            instance: instance.clone(),
            dataset: dataset.clone(),
            limits: cfg.limits(),
            request_timeout_secs: cfg.request_timeout().as_secs(),
            idle_timeout_secs: cfg.idle_timeout().as_secs(),
            max_connections: cfg.max_connections_per_core.max(1),
            grace: cfg.shutdown_grace(),
            port,
            owner: if id == 0 { owner_port.take() } else { None },
            stop,
            listener,
        };
        let started = started_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tally-core-{id}"))
            .spawn(move || {
                let executor = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                    .name(&format!("tally-core-{id}"))
                    .io_memory(IO_MEMORY_BYTES)
                    .make();
                match executor {
                    Ok(executor) => executor.run(core_main(ctx, started)),
                    Err(err) => {
                        let _ = started.send(Err(ServerError::Executor {
                            core: id,
                            reason: format!("{err} ({})", uring::HINT),
                        }));
                    }
                }
            })
            .map_err(|err| ServerError::Executor {
                core: id,
                reason: err.to_string(),
            })?;
        threads.push(thread);
    }
    drop(started_tx);
    // The cores hold their own references until their replicas are built; once the last one
    // is, the parsed dataset is freed (at 10M pairs that is ~0.4 GB per copy).
    let pairs = dataset.len();
    drop(dataset);

    let mut failure = None;
    for _ in 0..cores {
        match started_rx.recv() {
            Ok(Ok(id)) => log::debug!("core {id} serving"),
            Ok(Err(err)) => {
                failure.get_or_insert(err);
            }
            Err(_) => break,
        }
    }
    if failure.is_some() {
        for tx in &stop_txs {
            let _ = tx.try_send(());
        }
    } else {
        log::info!(
            "tally listening on {} with {cores} core(s) (CPUs {cpus:?}), {} key/value pairs",
            cfg.listen,
            pairs
        );
    }
    for thread in threads {
        if thread.join().is_err() {
            failure.get_or_insert(ServerError::Executor {
                core: usize::MAX,
                reason: "an executor thread panicked".into(),
            });
        }
    }
    signals.close();
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// A plain thread that turns the first SIGTERM/SIGINT into a stop message for every core; a
/// second signal exits at once.
fn spawn_signal_forwarder(
    stops: Vec<flume::Sender<()>>,
) -> Result<signal_hook::iterator::Handle, ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|err| {
        ServerError::Executor {
            core: usize::MAX,
            reason: format!("cannot install signal handlers: {err}"),
        }
    })?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("tally-signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    log::info!("signal {signal}: stopping accepting, draining connections");
                    for tx in &stops {
                        let _ = tx.try_send(());
                    }
                } else {
                    log::warn!("second signal {signal}: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .map_err(|err| ServerError::Executor {
            core: usize::MAX,
            reason: format!("cannot start the signal thread: {err}"),
        })?;
    Ok(handle)
}

/// What a core thread receives from [`run`].
struct CoreStart {
    id: usize,
    instance: Arc<Instance>,
    dataset: Arc<Dataset>,
    limits: Limits,
    request_timeout_secs: u64,
    idle_timeout_secs: u64,
    max_connections: usize,
    grace: Duration,
    port: CorePort,
    owner: Option<OwnerPort>,
    stop: flume::Receiver<()>,
    listener: OwnedFd,
}

/// One core's life: build its replica, serve until told to stop, drain, and (on the owner
/// core) commit what the other cores still send.
async fn core_main(start: CoreStart, started: flume::Sender<Result<usize, ServerError>>) {
    let CoreStart {
        id,
        instance,
        dataset,
        limits,
        request_timeout_secs,
        idle_timeout_secs,
        max_connections,
        grace,
        port,
        owner,
        stop,
        listener,
    } = start;

    let owner_task =
        owner.map(|port| glommio::spawn_local(counter::run_owner(port, instance.counter.clone())));

    let built = Instant::now();
    let replica = Replica::build(&dataset);
    drop(dataset);
    log::info!(
        "core {id}: key/value replica of {} pairs, {} bytes, built in {:?}",
        replica.len(),
        replica.memory_bytes(),
        built.elapsed()
    );
    let metrics = &instance.metrics[id];
    metrics.kv_replica_bytes.set(replica.memory_bytes() as u64);
    metrics.kv_replica_pairs.set(replica.len() as u64);
    instance.kv_ready_cores.fetch_add(1, Ordering::AcqRel);

    let counter_core = CounterCore::new(port, instance.counter.max_batch);
    let core = Rc::new(Core {
        id,
        instance: instance.clone(),
        limits,
        request_timeout_secs,
        idle_timeout_secs,
        date: RefCell::new(HttpDate::new()),
        replica,
        kv_scratch: RefCell::new(LookupScratch::new()),
        counter: counter_core.clone(),
        registry: Registry::new(),
        shutting_down: Cell::new(false),
    });
    glommio::spawn_local(counter_core.clone().run_batcher()).detach();
    glommio::spawn_local(counter_core.clone().run_replies()).detach();
    glommio::spawn_local(sweep(core.clone())).detach();

    // SAFETY: the fd is a listening TCP socket we own; ownership moves to the listener.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let _ = started.send(Ok(id));
    drop(started);

    accept_loop(&core, &listener, &stop, max_connections).await;
    drop(listener);

    // Drain: idle connections close now, the others after their current requests.
    core.shutting_down.set(true);
    core.registry.close_idle();
    let deadline = Instant::now() + grace;
    while !core.registry.is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if !core.registry.is_empty() {
        log::warn!(
            "core {id}: {} connection(s) still open after the grace period; closing them",
            core.registry.len()
        );
        core.registry.close_all_reading();
    }
    counter_core.close();
    // Answers for increments already sent still arrive until the owner finishes.
    while counter_core.in_flight() > 0 && Instant::now() < deadline + grace {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    drop(core);
    instance.serving_cores.fetch_sub(1, Ordering::AcqRel);

    if let Some(owner_task) = owner_task {
        // The owner ends once every core has closed its CounterCore (dropping its sender).
        // Bounded, so a core that died without closing cannot keep the process alive.
        let give_up = deadline + grace + grace;
        while instance.serving_cores.load(Ordering::Acquire) > 0 && Instant::now() < give_up {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let finished = futures_lite::future::or(
            async {
                owner_task.await;
                true
            },
            async {
                glommio::timer::sleep(give_up.saturating_duration_since(Instant::now())).await;
                false
            },
        )
        .await;
        if !finished {
            log::error!("the counter's owner did not finish draining; exiting anyway");
        }
    }
}

/// Accepts until told to stop. A connection beyond the per-core cap gets a 503 and is closed,
/// so the client learns why instead of waiting in the kernel's backlog.
async fn accept_loop(
    core: &Rc<Core>,
    listener: &glommio::net::TcpListener,
    stop: &flume::Receiver<()>,
    max_connections: usize,
) {
    use futures_lite::future;
    enum Event {
        Accepted(glommio::Result<glommio::net::TcpStream, ()>),
        Stop,
    }
    loop {
        let event = future::or(async { Event::Accepted(listener.accept().await) }, async {
            let _ = stop.recv_async().await;
            Event::Stop
        })
        .await;
        match event {
            Event::Stop => return,
            Event::Accepted(Ok(stream)) => {
                let metrics = core.metrics();
                metrics.accepted_connections.add(1);
                if core.registry.len() >= max_connections {
                    metrics.refused_connections.add(1);
                    glommio::spawn_local(conn::refuse(core.clone(), stream)).detach();
                    continue;
                }
                if let Err(err) = stream.set_nodelay(true) {
                    log::debug!("TCP_NODELAY: {err}");
                }
                // A bug that panics while serving one connection must cost only that
                // connection, not the core (glommio would unwind through its executor).
                let served = std::panic::AssertUnwindSafe(conn::serve(core.clone(), stream));
                glommio::spawn_local(async move {
                    if served.catch_unwind().await.is_err() {
                        log::error!("a connection task panicked; its connection was closed");
                    }
                })
                .detach();
            }
            Event::Accepted(Err(err)) => {
                // EMFILE, ENOBUFS and friends: back off rather than spin.
                log::warn!("core {}: accept failed: {err}", core.id);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Once a second: advance the coarse clock, refresh the Date header, close connections past
/// their deadline.
async fn sweep(core: Rc<Core>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        core.date.borrow_mut().refresh(std::time::SystemTime::now());
        core.registry.sweep();
    }
}
