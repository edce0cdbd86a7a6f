//! One core's copy of the new replica, made on a SCHED_IDLE thread of its own and sent to that
//! core as a [`Swap`]. Touches the original replica (shared, read-only) and the core's swap
//! channel.

use std::sync::Arc;
use std::time::Instant;

use super::idle::run_when_idle;
use super::swap::{Swap, Swapped};
use crate::kv::Replica;

/// One core's copy of the new replica, made on its own thread.
pub(super) struct ReplicaCopy {
    pub(super) core: usize,
    /// Where the copy runs (see [`copy_cpus`](super::idle::copy_cpus)).
    pub(super) cpus: Vec<usize>,
    pub(super) original: Arc<Replica>,
    /// Dropped once `original` is: the reload thread then owns it alone.
    pub(super) copied: flume::Sender<()>,
    pub(super) swaps: flume::Sender<Swap>,
    pub(super) done: flume::Sender<Swapped>,
}

/// Copies the new replica for `copy.core` on a thread of its own and sends it to the core.
pub(super) fn spawn_copy(copy: ReplicaCopy) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("tally-kv-copy-{}", copy.core))
        .spawn(move || {
            let ReplicaCopy {
                core,
                cpus,
                original,
                copied,
                swaps,
                done,
            } = copy;
            let _idle = run_when_idle("a replica copier", &cpus);
            let started = Instant::now();
            let replica = Replica::clone(&original);
            drop(original);
            drop(copied);
            log::debug!(
                "key/value reload: core {core}'s replica copied in {:?}",
                started.elapsed()
            );
            // A core that stopped has dropped its receiver; the reload thread then times out.
            let _ = swaps.send(Swap { replica, done });
        })
        .map(drop)
}
