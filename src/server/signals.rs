//! SIGTERM/SIGINT: glommio has no signal API, so a plain thread waits for them. `main` installs
//! it before any start-up work, so a stop during start-up (`docker stop` while initdb runs) is
//! seen too: the first signal sets a flag that start-up polls, and tells every core attached so
//! far to stop (cores attached later are told at once); a second signal exits at once.
//!
//! SIGHUP asks for a key/value reload ([`reload_on_hangup`]), on its own thread so a reload
//! request never waits behind a stop and the reverse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::ServerError;

/// The installed handlers; dropping it ends the signal thread.
pub struct Shutdown {
    state: Arc<State>,
    handle: signal_hook::iterator::Handle,
}

struct State {
    /// Set by the first signal, before `cores` is read (see [`Shutdown::attach`]).
    requested: AtomicBool,
    /// The cores' stop senders, once [`super::run`] made them.
    cores: Mutex<Vec<flume::Sender<()>>>,
}

impl Shutdown {
    /// Installs the handlers and starts the signal thread, pinned to `cpu` if given (it sleeps
    /// until a signal arrives).
    pub fn install(cpu: Option<usize>) -> Result<Shutdown, ServerError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ServerError::Signals)?;
        let handle = signals.handle();
        let state = Arc::new(State {
            requested: AtomicBool::new(false),
            cores: Mutex::new(Vec::new()),
        });
        let name = "tally-signals";
        let thread_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                pin_current_thread(name, cpu);
                let mut received = 0;
                for signal in signals.forever() {
                    received += 1;
                    if received == 1 {
                        log::info!("signal {signal}: stopping");
                        thread_state.requested.store(true, Ordering::SeqCst);
                        stop_all(&thread_state.lock_cores());
                    } else {
                        log::warn!("second signal {signal}: exiting now");
                        std::process::exit(1);
                    }
                }
            })
            .map_err(|source| ServerError::Thread {
                name: name.into(),
                source,
            })?;
        Ok(Shutdown { state, handle })
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.state.requested.load(Ordering::SeqCst)
    }

    /// The flag behind [`requested`](Self::requested), for start-up work that polls it (the
    /// embedded cluster's initdb and start).
    pub fn flag(&self) -> &AtomicBool {
        &self.state.requested
    }

    /// From now on a signal stops these cores; if one came already, they are told now. The
    /// signal thread sets the flag before it takes the lock, so whichever of the two takes the
    /// lock second sends.
    pub(super) fn attach(&self, stops: &[flume::Sender<()>]) {
        let mut cores = self.state.lock_cores();
        cores.extend_from_slice(stops);
        if self.requested() {
            stop_all(&cores);
        }
    }
}

impl State {
    fn lock_cores(&self) -> std::sync::MutexGuard<'_, Vec<flume::Sender<()>>> {
        // A panic while holding it leaves a plain Vec, still usable.
        self.cores.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Tells every core to stop accepting and drain (a core already told is left as it is).
pub fn stop_all(stops: &[flume::Sender<()>]) {
    for tx in stops {
        let _ = tx.try_send(());
    }
}

/// Installs the SIGHUP handler (from now on SIGHUP no longer ends tally) and a thread, pinned to
/// `cpu` if given, that calls `on_hangup` for each SIGHUP. It runs on that thread, so it must
/// not block for long: the dataset's reload only queues a request.
pub fn on_hangup(
    on_hangup: impl Fn() + Send + 'static,
    cpu: Option<usize>,
) -> Result<(), ServerError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(ServerError::Signals)?;
    let name = "tally-sighup";
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            pin_current_thread(name, cpu);
            for _ in signals.forever() {
                on_hangup();
            }
        })
        .map(drop)
        .map_err(|source| ServerError::Thread {
            name: name.into(),
            source,
        })
}

/// Pins the calling thread (`name`, for the log) to `cpu`, if one is given; these threads
/// sleep until a signal, so failing to pin costs nothing but a debug line.
fn pin_current_thread(name: &str, cpu: Option<usize>) {
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            log::debug!("{name}: could not pin to CPU {id}");
        }
    }
}
