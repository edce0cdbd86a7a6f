//! The durable counter: per-core batching, the owner core's group commit, and the values each
//! request gets back.
//!
//! ```text
//!  core k: POST -> CounterCore::increment -> joins the core's open Batch, gets a Ticket
//!          batcher task: sends each closed Batch as one CoreBatch message ----------+
//!                                                                                    v
//!  owner core: run_owner: gathers every queued CoreBatch, ONE transaction  -> store (side runtime)
//!          UPDATE .. SET count = count + sum RETURNING count                 <- new count
//!          replies to each core, in order, with the base its batch starts at
//!  core k: reply task resolves the Batch; each Ticket yields base + its own running offset
//! ```
//! Nothing waits on a timer: a transaction starts as soon as the previous one finished, and
//! whatever arrived meanwhile forms the next one. A request is answered 200 only after
//! PostgreSQL confirmed the commit of the transaction holding its increment. Knows no sockets.
//!
//! No ticket waits on a dead owner: the owner core holds an [`OwnerLease`] on its thread's
//! stack. However that thread ends (a panic in any of its tasks included), dropping the lease
//! disconnects a channel every core's reply task watches; they fail their batches in flight at
//! once and refuse new ones, and readiness turns false.
//!
//! Where things are:
//! - `wiring`: the channels between cores and owner, and the messages on them;
//! - `batch`: a core's side, [`CounterCore`]; `ticket`: what a request awaits, and the `Batch`
//!   its increments join and its tickets wait on;
//! - `owner`: the owner loop ([`run_owner`]) and its [`OwnerLease`];
//! - `shared`: [`CounterShared`], the instance-wide state; `metrics`: its `/metrics` lines;
//! - [`store`]: the only code that speaks to PostgreSQL, on its own thread.

pub mod store;

/// TLS to PostgreSQL lives beside the connecting code, in `store::tls`; the old path stays.
pub use store::tls;

mod batch;
mod batcher;
mod metrics;
pub mod named;
mod owner;
mod shared;
mod ticket;
mod wiring;

#[cfg(test)]
mod batching_tests;

pub use batch::CounterCore;
pub use owner::{run_owner, OwnerLease};
pub use shared::CounterShared;
pub use store::{key_digest, CommitError, KeyOutcome, KeyedIncrement, StoreHandle};
pub use ticket::{KeyedTicket, Ticket};
pub use wiring::{wire, CorePort, OwnerPort, Wiring};

/// Largest `by` an increment may add (docs/api.md, "Endpoints": 1 <= n <= 2^31-1).
pub const MAX_BY: i64 = i32::MAX as i64;
