//! Reloading the dataset while tally serves: parse and validate the file on the reload thread
//! (never on a serving core's thread), turn the parsed arrays into the last core's new
//! [`Replica`](crate::kv::Replica) (no copy), copy it for the other cores on one thread each,
//! and hand each core its replica, which the core swaps in between two requests (a pointer
//! swap). A lookup therefore sees the old or the new dataset, never a mix, and a core never
//! stops serving while a replica is built.
//!
//! Every thread of a reload runs SCHED_IDLE ([`idle::run_when_idle`]): it gets only CPU time
//! that no serving core, and nothing else on the machine, wants, so a reload costs lookups no
//! latency and takes longer only on a busy machine. It runs on the CPUs tally may use but
//! serves on none of (`taskset` wider than `--cores`) when there are any; otherwise in the
//! serving CPUs' idle time, each copy on its own core's CPU (its memory first touched there,
//! as at start-up).
//!
//! Memory: the old replicas are freed on the reload thread once every core has swapped. The
//! peak is the old replicas plus the new dataset being parsed (the file's bytes and the
//! dataset, each at most the file's size) or plus the new replicas (each at most the file's
//! size): at most `old + file size x (1 + cores)`, checked against `max_bytes` before anything
//! is read.
//!
//! Requests (SIGHUP, the file watcher, the admin endpoint) go through a [`ReloadTrigger`]; one
//! reload runs at a time and requests that arrive meanwhile are folded into one more.
//!
//! Touches the dataset file, threads and their scheduling, and the cores' swap channels; never
//! a socket or a serving core's state. One file per part:
//! - `trigger`: asking for a reload ([`ReloadTrigger`], [`ReloadReason`], [`Requested`]).
//! - `reloader`: the reload thread ([`Reloader`]): memory check, parse, replicas, outcome.
//! - `copy`: one core's replica copy on its own thread; `swap`: the hand-over to a core.
//! - `idle`: SCHED_IDLE and the CPUs reload threads run on; `status`: `/metrics`;
//!   `error`: [`ReloadError`].

mod copy;
mod error;
mod idle;
mod reloader;
mod status;
mod swap;
mod trigger;

pub use error::ReloadError;
pub use idle::end_idle_priority;
pub use reloader::{reload_peak_bytes, Reloader};
pub use status::ReloadStatus;
pub use swap::{Swap, Swapped};
pub use trigger::{reload_channel, ReloadReason, ReloadRequests, ReloadTrigger, Requested};
