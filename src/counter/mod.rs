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
mod metrics;
mod owner;
mod shared;
mod ticket;
mod wiring;

#[cfg(test)]
mod batching_tests;

pub use batch::CounterCore;
pub use owner::{run_owner, OwnerLease};
pub use shared::CounterShared;
pub use store::{CommitError, KeyOutcome, KeyedIncrement, StoreHandle};
pub use ticket::{KeyedTicket, Ticket};
pub use wiring::{wire, CorePort, OwnerPort, Wiring};

/// Largest `by` a request may ask for (README.md, "API": 1 <= n <= 2^31-1).
pub const MAX_BY: i64 = i32::MAX as i64;

/// Parses a POST /api/v1/counter body: empty means 1; otherwise a JSON object whose optional
/// `by` is an integer in 1..=2^31-1 (other fields are ignored).
pub fn parse_by(body: &mut [u8]) -> Result<i64, &'static str> {
    use simd_json::prelude::*;
    if body.is_empty() {
        return Ok(1);
    }
    let value = simd_json::to_borrowed_value(body).map_err(|_| "body is not valid JSON")?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    let Some(by) = object.get("by") else {
        return Ok(1);
    };
    let n = by
        .as_i64()
        .filter(|_| by.is_i64() || by.is_u64())
        .ok_or("by must be an integer")?;
    if !(1..=MAX_BY).contains(&n) {
        return Err("by must be an integer from 1 to 2147483647");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(s: &str) -> Result<i64, &'static str> {
        parse_by(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn empty_body_and_empty_object_increment_by_one() {
        assert_eq!(by(""), Ok(1));
        assert_eq!(by("{}"), Ok(1));
        assert_eq!(by(r#"{"other": true}"#), Ok(1));
    }

    #[test]
    fn by_accepts_one_to_i32_max() {
        assert_eq!(by(r#"{"by": 1}"#), Ok(1));
        assert_eq!(by(r#"{"by": 2147483647}"#), Ok(2_147_483_647));
    }

    #[test]
    fn by_rejects_zero_negative_too_large_and_non_integers() {
        for body in [
            r#"{"by": 0}"#,
            r#"{"by": -1}"#,
            r#"{"by": 2147483648}"#,
            r#"{"by": 1.5}"#,
            r#"{"by": 1.0}"#,
            r#"{"by": "3"}"#,
            r#"{"by": null}"#,
            r#"{"by": 18446744073709551615}"#,
            "[1]",
            "7",
            "{",
            " ",
        ] {
            assert!(by(body).is_err(), "{body} was accepted");
        }
    }
}
