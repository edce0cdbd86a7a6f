//! The composition root: what one tally instance is made of, put together in one place. From
//! the pieces `main` started (the dataset, the counter's store, the reload channel) it builds
//! the [`Instance`] every core shares, starts the dataset's reload thread, wires the counter's
//! cores to its owner, and gives [`server::run`] one start value per core from which each
//! core builds its [`App`] on its own thread. `server` knows nothing of kv or counters.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::api::{App, Instance, Route};
use crate::counter::{self, named, CorePort, CounterCore, CounterShared, OwnerPort, Wiring};
use crate::kv::{
    Dataset, ReloadRequests, ReloadStatus, ReloadTrigger, Reloader, Replica, Swap, Swapped,
};
use crate::metrics::CoreMetrics;
use crate::server::{self, CoreApps, ServerConfig, ServerError, Shutdown};

/// What `main` started, for [`run`] to serve.
pub struct Services {
    pub dataset: Arc<Dataset>,
    pub counter: Arc<CounterShared>,
    pub wiring: Wiring,
    /// Named counters: what every core shares (each owner's store), and their channels.
    pub named: Arc<named::Shared>,
    pub named_wiring: named::Wiring,
    pub kv_reload: KvReload,
}

/// How the key/value dataset is reloaded while serving (`kv::reload`).
pub struct KvReload {
    /// The `--kv-data` file; `None` for the built-in sample (nothing to reload).
    pub path: Option<PathBuf>,
    /// `--kv-reload-max-bytes`.
    pub max_bytes: Option<u64>,
    pub trigger: ReloadTrigger,
    pub requests: ReloadRequests,
    pub status: Arc<ReloadStatus>,
}

/// Serves `services` until `shutdown` sees SIGTERM/SIGINT and the cores have drained.
pub fn run(
    config: &ServerConfig,
    services: Services,
    shutdown: &Shutdown,
) -> Result<(), ServerError> {
    let Services {
        dataset,
        counter,
        wiring,
        named,
        named_wiring,
        kv_reload,
    } = services;
    let instance = Arc::new(
        Instance::new(
            config
                .cpus
                .iter()
                .map(|_| CoreMetrics::new(Route::METRIC_LABELS))
                .collect(),
            counter,
            named,
        )
        .with_kv_reload(kv_reload.status.clone(), kv_reload.trigger.clone())
        .with_admin_token(config.admin_token.clone()),
    );
    let (swap_senders, swap_receivers): (Vec<_>, Vec<_>) =
        config.cpus.iter().map(|_| flume::bounded(1)).unzip();
    start_reloader(
        config,
        kv_reload,
        Replica::bytes_for(&dataset),
        swap_senders,
    )?;
    let Wiring { owner, cores } = wiring;
    let mut owner = Some(owner);
    let named::Wiring {
        owners: named_owners,
        cores: named_cores,
    } = named_wiring;
    let starts = cores
        .into_iter()
        .zip(swap_receivers)
        .zip(named_owners.into_iter().zip(named_cores))
        .enumerate()
        .map(|(core, ((port, swaps), (mut named_owner, named_port)))| {
            let mut owner = if core == 0 { owner.take() } else { None };
            // On the core thread's stack for its whole life: however the thread ends (a panic
            // in any task included), the other cores stop waiting for the owners.
            let lease = owner.as_mut().map(|port| port.lease(&instance.counter));
            let named_lease = named_owner.lease();
            let parts = CoreParts {
                instance: instance.clone(),
                dataset: dataset.clone(),
                port,
                owner,
                named_port,
                named_owner,
                swaps,
            };
            ((lease, named_lease), parts)
        })
        .collect();
    // The cores hold the only references to the parsed dataset now; it is freed once the last
    // replica is built.
    drop(dataset);
    server::run(
        config,
        CoreApps {
            starts,
            build: CoreParts::build,
        },
        shutdown,
    )
}

/// What one core's thread takes along to build its [`App`].
struct CoreParts {
    instance: Arc<Instance>,
    /// Dropped once this core's replica is built.
    dataset: Arc<Dataset>,
    port: CorePort,
    /// Core 0 only: the counter's owner side.
    owner: Option<OwnerPort>,
    /// This core's side of named counters, and its owner side (every core owns some names).
    named_port: named::CorePort,
    named_owner: named::OwnerPort,
    /// New replicas from the key/value reload thread.
    swaps: flume::Receiver<Swap>,
}

impl CoreParts {
    /// On core `core`'s executor: builds its replica (on this thread, so its memory is local
    /// to it) and its side of the counter, and starts the counter's tasks (and, on core 0, the
    /// owner's loop) and the replica swaps.
    fn build(self, core: usize) -> Rc<App> {
        let CoreParts {
            instance,
            dataset,
            port,
            owner,
            named_port,
            named_owner,
            swaps,
        } = self;
        let shared = &instance.counter;
        let owner =
            owner.map(|port| glommio::spawn_local(counter::run_owner(port, shared.clone())));
        let replica = build_replica(core, &dataset);
        drop(dataset);
        let counter = CounterCore::new(port, shared.max_batch);
        glommio::spawn_local(counter.clone().run_batcher()).detach();
        glommio::spawn_local(counter.clone().run_replies()).detach();
        let named_owner =
            glommio::spawn_local(named::run_owner(named_owner, instance.named.clone()));
        let named = named::Core::new(named_port, instance.named.clone());
        glommio::spawn_local(named.clone().run_batcher()).detach();
        glommio::spawn_local(named.clone().run_replies()).detach();
        let app = Rc::new(App::new(
            core,
            instance,
            replica,
            counter,
            owner,
            (named, Some(named_owner)),
        ));
        glommio::spawn_local(swap_replicas(app.clone(), swaps)).detach();
        app
    }
}

fn build_replica(core: usize, dataset: &Dataset) -> Replica {
    let started = Instant::now();
    let replica = Replica::build(dataset);
    log::info!(
        "core {core}: key/value replica of {} pairs, {} bytes, built in {:?}",
        replica.len(),
        replica.memory_bytes(),
        started.elapsed()
    );
    replica
}

/// Swaps in each replica the reload thread sends, between two requests (this task runs only
/// when no request is being answered), and hands the old one back to be freed off this core.
/// Ends with the core: a replica sent during the drain is dropped with the channel, and
/// shutdown does not wait for it.
async fn swap_replicas(app: Rc<App>, swaps: flume::Receiver<Swap>) {
    while let Ok(Swap { replica, done }) = swaps.recv_async().await {
        let (pairs, bytes) = (replica.len(), replica.memory_bytes());
        let old = app.swap_replica(replica);
        log::info!(
            "core {}: key/value replica of {pairs} pairs, {bytes} bytes swapped in",
            app.core
        );
        // If the reload thread gave up waiting, the old replica comes back and is freed here.
        let _ = done.send(Swapped {
            core: app.core,
            old,
        });
    }
}

/// Starts the key/value reload thread, if there is a file to reload. Requests made before it
/// runs (a SIGHUP during start-up) wait in the channel and are served first.
fn start_reloader(
    config: &ServerConfig,
    kv_reload: KvReload,
    replica_bytes: usize,
    swaps: Vec<flume::Sender<Swap>>,
) -> Result<(), ServerError> {
    let Some(path) = kv_reload.path else {
        return Ok(());
    };
    Reloader {
        path,
        max_bytes: kv_reload.max_bytes,
        cpus: config.cpus.clone(),
        cores: swaps,
        status: kv_reload.status,
        replica_bytes: replica_bytes as u64,
    }
    .spawn(kv_reload.requests)
    .map_err(|source| ServerError::Thread {
        name: "tally-kv-reload".into(),
        source,
    })
}
