//! tally: a thread-per-core io_uring HTTP/1.1 server with a durable PostgreSQL counter and
//! read-only UUID key/value lookups.
//!
//! Where a byte goes:
//! - [`compose`] puts one instance together: the [`api::Instance`] the cores share, the
//!   dataset's reload thread, the counter's wiring, and each core's [`api::App`], built on
//!   its core; `main` only starts what it needs (PostgreSQL, the store) and calls it.
//! - [`server`] owns the executors (one per core), their listeners and the connection loop;
//!   it serves the `App` it is given and knows nothing of kv or counters.
//! - [`http`] turns bytes into requests and responses into bytes; it knows no routes.
//! - [`api`] maps method + path to an endpoint, which reads its request JSON, asks the
//!   domain and writes its response JSON.
//! - [`kv`] holds the dataset and the per-core lookup replicas (no sockets).
//! - [`counter`] batches increments per core, commits them from the owner core through
//!   [`counter::store`], the only code that speaks to PostgreSQL, on a side runtime.
//! - [`postgres`] runs the embedded PostgreSQL cluster used when no database URL is given.

pub mod api;
pub mod compose;
pub mod config;
pub mod counter;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod postgres;
pub mod server;
