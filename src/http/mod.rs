//! HTTP/1.1 on bytes. This module knows nothing of sockets, routes, counters or keys.
//!
//! - [`request`]: the framer's entry, [`parse`]: bytes in, complete / need more / error out,
//!   with its [`Limits`] and [`HttpError`].
//! - `head`: the request line and header fields, and the framing they decide (RFC 9112).
//! - `chunked`: the chunked body decoder (RFC 9112 §7.1).
//! - [`response`]: appends responses to a write buffer.
//! - [`status`]: the one table of status codes tally sends (writer and metrics read it).

mod chunked;
mod head;
pub mod request;
pub mod response;
pub mod status;

#[cfg(test)]
mod tests;

pub use head::{BodyFraming, Head, Method};
pub use request::{
    parse, BodyLocation, HttpError, Limits, Parsed, RequestState, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_URI_BYTES, MAX_HEADERS_CAP,
};
pub use response::{write_response, HttpDate, Persistence, ResponseHead};
pub use status::Status;
