//! Durable counter.
pub mod store;
