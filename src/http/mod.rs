//! HTTP/1.1 on bytes: [`request`] frames requests out of a read buffer, [`response`] appends
//! responses to a write buffer. This module knows nothing of sockets, routes, counters or keys.

pub mod request;
pub mod response;
pub mod status;

#[cfg(test)]
mod tests;

pub use request::{parse, BodyFraming, BodyLocation, Head, HttpError, Limits, Method, Parsed};
pub use response::{write_response, HttpDate, Persistence, ResponseHead};
pub use status::Status;
