//! Start-up only: read the configuration, install the SIGTERM/SIGINT handling, load the
//! dataset, start (or connect to) PostgreSQL, run the server, and tear down in reverse order.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use tally::config::{self, Cli, Command, SampleArgs, ServeArgs};
use tally::counter::{self, store, CounterShared};
use tally::postgres::{EmbeddedError, EmbeddedPostgres};
use tally::{compose, kv, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.serve.log)
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Some(Command::Sample(args)) => sample(&args),
        None => serve(&cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tally: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn sample(args: &SampleArgs) -> anyhow::Result<()> {
    let dataset = kv::sample(args.pairs, args.seed);
    match &args.output {
        Some(path) => {
            kv::write(&dataset, path).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match kv::write_jsonl(&dataset, &mut out).and_then(|()| out.flush()) {
                // `tally sample | head` closes the pipe early; that is not an error.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                result => Ok(result?),
            }
        }
    }
}

fn serve(cfg: &ServeArgs) -> anyhow::Result<()> {
    // A URL that cannot parse never works: say so now instead of retrying it forever. A server
    // that is down is another matter; the store retries it.
    if let Some(url) = &cfg.database_url {
        config::check_database_url(url)?;
    }
    if cfg
        .admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        bail!("--admin-token / TALLY_ADMIN_TOKEN is empty: an empty token would let anyone in");
    }
    raise_open_file_limit();
    server::io_uring_support::check()?;
    let cpus = choose_cpus(cfg.cores)?;
    let owner_cpu = cpus[0];
    // Before any start-up work: `docker stop` during a first start (initdb can take seconds)
    // must stop what was started and exit, not kill tally half-way. The signal thread sleeps
    // on the last CPU.
    let shutdown = server::Shutdown::install(cpus.last().copied())?;
    // SIGHUP reloads the dataset; handled from here on, so one during start-up does not kill
    // tally (it is served once the cores run).
    let (reload_trigger, reload_requests) = kv::reload_channel(cfg.kv_data.as_deref());
    let on_hangup = reload_trigger.clone();
    server::on_hangup(
        move || {
            on_hangup.request(kv::ReloadReason::Signal);
        },
        cpus.last().copied(),
    )?;
    let load_started = Instant::now();
    let dataset = Arc::new(load_dataset(cfg.kv_data.as_deref())?);
    let kv_status = Arc::new(kv::ReloadStatus::initial(
        dataset.len(),
        load_started.elapsed(),
    ));
    // After the load, so a bad --kv-data is reported as such; a change in between is missed
    // only if it lands in the microseconds before the watch is added.
    if let (true, Some(path)) = (cfg.kv_watch, &cfg.kv_data) {
        kv::watch(path, reload_trigger.clone())?;
    }
    if shutdown.requested() {
        log::info!("stopped during start-up");
        return Ok(());
    }
    let embedded = match &cfg.database_url {
        Some(_) => None,
        None => match start_embedded_postgres(&cfg.data_dir.join("pg"), shutdown.flag())? {
            Some(pg) => Some(pg),
            None => {
                log::info!("stopped during start-up, before PostgreSQL was up");
                return Ok(());
            }
        },
    };
    let url = match (&cfg.database_url, &embedded) {
        (Some(url), _) => url.clone(),
        (None, Some(pg)) => pg.url().to_owned(),
        (None, None) => unreachable!("the embedded cluster was started above"),
    };
    // The store thread shares the owner core's CPU: the owner waits while it commits, and
    // their messages stay in that CPU's cache.
    let store_config = store::StoreConfig {
        url,
        commit_timeout: cfg.commit_timeout(),
        refresh_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(5),
        cpu: Some(owner_cpu),
        idempotency_retention: cfg.idempotency_retention(),
        named: None,
    };
    // Named counters: one store per core, on that core's CPU, for the names it owns.
    let named_config = store::NamedConfig {
        limit: Arc::new(store::NamedLimit::new(cfg.max_counters)),
        view_capacity: store::DEFAULT_NAMED_VIEW_CAPACITY,
    };
    let named_stores = cpus
        .iter()
        .map(|&cpu| {
            store::spawn(store::StoreConfig {
                cpu: Some(cpu),
                named: Some(named_config.clone()),
                ..store_config.clone()
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("starting the named counters' store threads")?;
    let store = store::spawn(store_config).context("starting the store thread")?;
    let counter = Arc::new(CounterShared::new(store.clone(), cfg.max_batch));
    let services = compose::Services {
        dataset,
        counter,
        wiring: counter::wire(cpus.len()),
        named: Arc::new(counter::named::Shared::new(
            named_stores.clone(),
            named_config.limit.clone(),
            cfg.max_batch,
            Duration::from_millis(200),
        )),
        named_wiring: counter::named::wire(cpus.len()),
        kv_reload: compose::KvReload {
            path: cfg.kv_data.clone(),
            max_bytes: cfg.kv_reload_max_bytes,
            trigger: reload_trigger,
            requests: reload_requests,
            status: kv_status,
        },
    };
    // A signal that came meanwhile stops the cores as soon as they start.
    let served = compose::run(&cfg.server_config(cpus), services, &shutdown);
    // A reload still running must not hold up the exit (see `end_idle_priority`).
    kv::end_idle_priority();
    store.shutdown();
    for named in &named_stores {
        named.shutdown();
    }
    if let Some(pg) = embedded {
        if let Err(err) = pg.stop() {
            log::warn!("stopping the embedded PostgreSQL: {err}");
        }
    }
    served?;
    log::info!("stopped");
    Ok(())
}

/// The CPUs to run on: the first `cores` of those this process may use (all by default).
fn choose_cpus(cores: Option<usize>) -> anyhow::Result<Vec<usize>> {
    let mut allowed = server::allowed_cpus()?;
    match cores {
        Some(0) => bail!("--cores must be at least 1"),
        Some(n) if n > allowed.len() => log::warn!(
            "--cores {n}: only {} CPUs are available to this process; using them all",
            allowed.len()
        ),
        Some(n) => allowed.truncate(n),
        None => {}
    }
    Ok(allowed)
}

/// The running cluster, or `None` if `stop` was set before it was up (nothing is left running).
fn start_embedded_postgres(
    dir: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<Option<EmbeddedPostgres>> {
    let started = Instant::now();
    let pg = match EmbeddedPostgres::start_interruptible(dir, stop) {
        Ok(pg) => pg,
        Err(EmbeddedError::Interrupted) => return Ok(None),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("starting the embedded PostgreSQL in {}", dir.display()))
        }
    };
    log::info!(
        "embedded PostgreSQL up in {:?} ({})",
        started.elapsed(),
        dir.display()
    );
    Ok(Some(pg))
}

fn load_dataset(path: Option<&Path>) -> anyhow::Result<kv::Dataset> {
    let started = Instant::now();
    let dataset = match path {
        Some(path) => kv::load(path)?,
        None => kv::sample(kv::DEFAULT_SAMPLE_PAIRS, kv::DEFAULT_SEED),
    };
    log::info!(
        "key/value dataset: {} pairs ({} raw bytes) from {} in {:?}",
        dataset.len(),
        dataset.raw_bytes(),
        path.map_or("the built-in sample".into(), |p| p.display().to_string()),
        started.elapsed()
    );
    Ok(dataset)
}

/// Raises the soft open-file limit to the hard limit: every connection is a descriptor.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            log::info!("open file limit: {} (was {before})", limit.rlim_cur);
        } else {
            log::warn!(
                "open file limit stays at {before}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
