//! SIGTERM/SIGINT: glommio has no signal API, so a plain thread waits for them and turns the
//! first into a stop message for every core; a second signal exits at once.

use super::ServerError;

/// Starts the signal thread, pinned to `cpu` if given (it sleeps until a signal arrives).
pub fn spawn_forwarder(
    stops: Vec<flume::Sender<()>>,
    cpu: Option<usize>,
) -> Result<signal_hook::iterator::Handle, ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ServerError::Signals)?;
    let handle = signals.handle();
    let name = "tally-signals";
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(id) = cpu {
                if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                    log::debug!("{name}: could not pin to CPU {id}");
                }
            }
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    log::info!("signal {signal}: stopping accepting, draining connections");
                    stop_all(&stops);
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
    Ok(handle)
}

/// Tells every core to stop accepting and drain (a core already told is left as it is).
pub fn stop_all(stops: &[flume::Sender<()>]) {
    for tx in stops {
        let _ = tx.try_send(());
    }
}
