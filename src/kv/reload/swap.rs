//! The hand-over between the reload thread and a serving core: a new [`Replica`] goes to the
//! core in a [`Swap`], the old one comes back in a [`Swapped`], and [`SWAP_WAIT`] bounds the
//! wait. Plain messages; the core's side is the composition root's swap task.

use std::time::Duration;

use crate::kv::Replica;

/// How long the reload thread waits for every core to swap before it reports the reload as
/// finished anyway (a core that is draining for shutdown never swaps).
pub(super) const SWAP_WAIT: Duration = Duration::from_secs(30);

/// A new replica for one core, and where to say it is in.
pub struct Swap {
    pub replica: Replica,
    /// The core sends its id and its old replica once the new one serves: the reload thread
    /// frees the old ones, after every core has swapped (unmapping a large replica is a pause
    /// no serving core should take; the size at 10M pairs is in commit c23bb00).
    pub done: flume::Sender<Swapped>,
}

/// A core's answer to a [`Swap`].
pub struct Swapped {
    pub core: usize,
    pub old: Replica,
}
