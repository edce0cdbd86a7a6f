//! Named counters (`/api/v1/counters/{name}`): many counters, each owned by one core.
//!
//! ```text
//!  core k: POST name -> Core::increment -> joins core k's open batch for owner(name)
//!          batcher task: sends each closed batch to its owner -------------------+
//!                                                                                v
//!  owner o (every core owns the names that hash to it): run_owner merges every queued
//!          batch, ONE transaction on its own store: rows upserted in name order -> counts
//!          replies to each core, in order, with where each of its names starts
//!  core k: reply task resolves the batch; each ticket yields base + its own running offset
//! ```
//! The owners commit in parallel, each on its own store connection; the values one name hands
//! out are unique and contiguous, as for the single counter (`counter`), and an in-doubt batch
//! is settled the same way (`store::named`). GET reads what the owner's store last committed
//! or read (bounded, see `store::view`), or reads through it.
//!
//! Where things are: `name` (what a name may be, its owner), `wiring` (channels, messages),
//! `core` (a core's side, [`Core`]), `owner` ([`run_owner`]), `shared` ([`Shared`], metrics).

mod core;
mod name;
mod owner;
mod shared;
mod wiring;

pub use self::core::{
    Core, Counted, Delete, Get, KeyedCounted, NamedKeyedTicket, NamedTicket, Read,
};
pub use name::{counter_name, owner_of, MAX_NAME_BYTES, NAME_RULE};
pub use owner::run_owner;
pub use shared::Shared;
pub use wiring::{wire, CorePort, Lease, OwnerPort, Wiring};

/// For unit tests of the layers above: one core's side of named counters over `store`, with
/// no owner running (an increment waits forever; a GET reads through the store).
#[cfg(test)]
pub fn unowned_core(
    store: crate::counter::StoreHandle,
) -> (std::sync::Arc<Shared>, std::rc::Rc<Core>) {
    let shared = std::sync::Arc::new(Shared::new(
        vec![store],
        std::sync::Arc::new(crate::counter::store::NamedLimit::new(10)),
        0,
        std::time::Duration::from_millis(200),
    ));
    let mut wiring = wire(1);
    let port = wiring.cores.pop().expect("one core's port");
    // The owner's port is kept alive with the core, so its lease never reports it gone.
    std::mem::forget(wiring.owners);
    (shared.clone(), Core::new(port, shared))
}
