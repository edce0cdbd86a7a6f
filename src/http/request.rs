//! Request framing: bytes in, one of "complete request", "need more bytes" or "error" out.
//!
//! Pure code, no I/O: the connection loop calls [`parse`] on whatever it has buffered, as often
//! as it likes; the answer depends only on the bytes, never on how they were split across reads.
//! This file is what a caller sees: the entry point, its answer, its limits and its errors.
//! `head.rs` reads the request line and header fields and decides how the body is framed;
//! `chunked.rs` decodes a chunked body. Everything that decides where a message ends
//! follows RFC 9112 §6 and is strict about it, because a lenient framer is how request
//! smuggling happens.

use std::ops::Range;

use super::chunked::decode_chunked;
use super::head::{parse_head, BodyFraming, Head};
use super::Status;

/// Default of [`Limits::max_head_bytes`]: request line plus header fields.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;
/// Default of [`Limits::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default of [`Limits::max_uri_bytes`].
pub const DEFAULT_MAX_URI_BYTES: usize = 2 * 1024;
/// Default of [`Limits::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Upper bound for [`Limits::max_headers`]: the size of the on-stack `httparse` header array.
pub const MAX_HEADERS_CAP: usize = 128;

/// Size limits for one request; each has its own status code when exceeded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus header fields, in bytes (431).
    pub max_head_bytes: usize,
    /// Number of header fields (431), at most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
    /// Request target, in bytes (414).
    pub max_uri_bytes: usize,
    /// Decoded body, in bytes (413).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Where a complete request's body lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyLocation {
    /// A range of the input slice (no body, or a Content-Length body).
    Input(Range<usize>),
    /// The whole of the scratch buffer given to [`parse`] (a decoded chunked body).
    Scratch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// One whole request; it occupies the first `len` bytes of the input.
    Complete {
        head: Head,
        body: BodyLocation,
        len: usize,
    },
    /// More bytes are needed. `head` is known once the header section is complete, so the
    /// caller can answer `Expect: 100-continue` and switch to the body timeout.
    Partial { head: Option<Head> },
}

/// A request that cannot be served. Every variant closes the connection after its response,
/// because the framing of whatever follows can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request header section too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("request target too long")]
    UriTooLong,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("unsupported expectation")]
    ExpectationFailed,
}

impl HttpError {
    pub fn status(self) -> Status {
        match self {
            HttpError::BadRequest(_) => Status::BadRequest,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => {
                Status::RequestHeaderFieldsTooLarge
            }
            HttpError::UriTooLong => Status::UriTooLong,
            HttpError::BodyTooLarge => Status::ContentTooLarge,
            HttpError::NotImplemented(_) => Status::NotImplemented,
            HttpError::ExpectationFailed => Status::ExpectationFailed,
        }
    }
}

/// Parses the request at the start of `buf`.
///
/// `scratch` receives the decoded body of a chunked request (it is cleared first); it is left
/// alone otherwise. Calling this again with more bytes appended gives the same answer as one
/// call on the whole input.
pub fn parse(buf: &[u8], limits: &Limits, scratch: &mut Vec<u8>) -> Result<Parsed, HttpError> {
    let head = match parse_head(buf, limits)? {
        Some(head) => head,
        None => return Ok(Parsed::Partial { head: None }),
    };
    let start = head.head_len;
    match head.framing {
        BodyFraming::None => Ok(Parsed::Complete {
            body: BodyLocation::Input(start..start),
            len: start,
            head,
        }),
        BodyFraming::Length(n) => {
            if buf.len() - start < n {
                return Ok(Parsed::Partial { head: Some(head) });
            }
            Ok(Parsed::Complete {
                body: BodyLocation::Input(start..start + n),
                len: start + n,
                head,
            })
        }
        BodyFraming::Chunked => match decode_chunked(&buf[start..], limits, scratch)? {
            Some(used) => Ok(Parsed::Complete {
                body: BodyLocation::Scratch,
                len: start + used,
                head,
            }),
            None => Ok(Parsed::Partial { head: Some(head) }),
        },
    }
}
