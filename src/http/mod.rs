//! HTTP/1.1 on bytes. This module knows nothing of sockets, routes, counters or keys.
//!
//! - [`request`]: the framer's entry, [`parse`]: bytes in, complete / need more / error out.
//! - `limits`, `error`: what bounds a request ([`Limits`]) and what goes wrong ([`HttpError`]).
//! - `head`: the request line and header fields, and the framing they decide (RFC 9112).
//! - `chunked`: the chunked body decoder (RFC 9112 §7.1). `token`: grammar both read.
//! - [`response`]: appends responses to a write buffer.
//! - [`status`]: the one table of status codes tally sends (writer and metrics read it).

mod chunked;
mod error;
mod head;
mod limits;
pub mod request;
pub mod response;
pub mod status;
mod token;

#[cfg(test)]
mod tests;

pub use error::HttpError;
pub use head::{BodyFraming, Head, Method};
pub use limits::{
    Limits, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_URI_BYTES, MAX_HEADERS_CAP,
};
pub use request::{parse, BodyLocation, Parsed, RequestState};
pub use response::{write_response, HttpDate, Persistence, ResponseHead};
pub use status::Status;
