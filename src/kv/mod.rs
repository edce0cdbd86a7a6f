//! Read-only UUID key/value lookups: the dataset (loaded once from a file, or the built-in
//! sample) and the per-core replicas built from it. Knows nothing of sockets, HTTP or request
//! bodies: `api::kv` parses `/get_value` and asks a [`Replica`].
//!
//! - [`load`] reads `.json`, `.jsonl`/`.ndjson` and `.csv` files into a [`Dataset`];
//!   [`sample`] generates one; [`write`] writes one back out.
//! - [`Replica::build`] runs on each core's thread; [`Replica::get`] answers from it with no
//!   allocation and no cross-core traffic.
//! - `reload`: a new dataset while serving ([`Reloader`], [`ReloadTrigger`]): parsed on its
//!   own thread, a replica built for each core and swapped in between requests; [`watch`]
//!   asks for one when the file is replaced (`--kv-watch`).

#[cfg(test)]
mod bench;
mod dataset;
mod json;
mod load;
mod reload;
mod replica;
mod sample;
#[cfg(test)]
mod test_files;
mod uuid_v4;
mod watch;
mod write;

pub use dataset::{Dataset, MAX_VALUE_BYTES};
pub use json::write_json_string;
pub use load::{load, LoadError, Position};
pub use reload::{
    end_idle_priority, reload_channel, reload_peak_bytes, ReloadError, ReloadReason,
    ReloadRequests, ReloadStatus, ReloadTrigger, Reloader, Requested, Swap, Swapped,
};
pub use replica::Replica;
pub use sample::{sample, DEFAULT_SAMPLE_PAIRS, DEFAULT_SEED, MAX_SAMPLE_PAIRS};
#[cfg(test)]
pub(crate) use uuid_v4::format_uuid;
pub use uuid_v4::parse_uuid_v4;
pub use watch::{watch, WatchError};
pub use write::{write, write_jsonl};

/// The dataset is shared by reference across cores; a replica may be built on one thread and
/// moved to another.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Dataset>();
    shared::<Replica>();
};
