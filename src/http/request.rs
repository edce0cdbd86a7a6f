//! Request framing: bytes in, one of "complete request", "need more bytes" or "error" out.
//!
//! Pure code, no I/O: the connection loop calls [`parse`] on whatever it has buffered of the
//! request, with the [`RequestState`] the previous call left; the answer depends only on the
//! bytes, never on how they were split across reads. The state is what makes the work per read
//! independent of what came before: the head is parsed once, the chunked decoder resumes.
//! This file is what a caller sees: the entry point and its answer; `limits.rs` and
//! `error.rs` hold what bounds a request and what goes wrong with one.
//! `head.rs` reads the request line and header fields and decides how the body is framed;
//! `chunked.rs` decodes a chunked body. Everything that decides where a message ends
//! follows RFC 9112 §6 and is strict about it, because a lenient framer is how request
//! smuggling happens.

use std::ops::Range;

use super::chunked::ChunkedDecoder;
use super::error::HttpError;
use super::head::{parse_head, BodyFraming, Head};
use super::limits::Limits;

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
    /// Empty lines before a request-line, to be discarded: RFC 9112 §2.2 asks a server to
    /// ignore at least one (old clients send a CRLF after a POST body). CRLF or a bare LF:
    /// between messages, an empty line frames nothing.
    EmptyLines { len: usize },
    /// More bytes are needed. `head` is known once the header section is complete, so the
    /// caller can answer `Expect: 100-continue` and switch to the body timeout.
    Partial { head: Option<Head> },
}

/// What [`parse`] learnt about the request at the start of the buffer, kept by the caller
/// between calls and given back with the same bytes plus whatever arrived since. A fresh
/// (default) state starts a request; [`parse`] resets it when it returns a complete request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestState {
    /// The head, once complete: never parsed twice.
    head: Option<Head>,
    /// How far a chunked body has been decoded into the scratch buffer.
    chunked: ChunkedDecoder,
}

/// Parses the request at the start of `buf`, continuing from `state`.
///
/// `scratch` receives the decoded body of a chunked request (cleared when its head is parsed,
/// then appended to as chunks arrive, so the caller must leave it alone until the request is
/// complete); it is left alone otherwise. Feeding a request in any number of pieces (each call
/// with all the bytes so far) gives the same answer as one call on the whole input.
pub fn parse(
    buf: &[u8],
    state: &mut RequestState,
    limits: &Limits,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, HttpError> {
    let head = match state.head.take() {
        Some(head) => head,
        None if empty_lines_len(buf) > 0 => {
            return Ok(Parsed::EmptyLines {
                len: empty_lines_len(buf),
            });
        }
        None => match parse_head(buf, limits)? {
            Some(head) => {
                scratch.clear();
                state.chunked = ChunkedDecoder::default();
                head
            }
            None => return Ok(Parsed::Partial { head: None }),
        },
    };
    let start = head.head_len;
    let end = match head.framing {
        BodyFraming::None => Some(start),
        BodyFraming::Length(n) => (buf.len() - start >= n).then_some(start + n),
        BodyFraming::Chunked => state
            .chunked
            .decode(&buf[start..], limits, scratch)?
            .map(|used| start + used),
    };
    let Some(len) = end else {
        let partial = Parsed::Partial {
            head: Some(head.clone()),
        };
        state.head = Some(head);
        return Ok(partial);
    };
    let body = match head.framing {
        BodyFraming::Chunked => BodyLocation::Scratch,
        _ => BodyLocation::Input(start..len),
    };
    Ok(Parsed::Complete { head, body, len })
}

/// Length of the complete empty lines (CRLF or LF) at the start of `buf`. A CR not followed by
/// LF is left to the head parser (which waits for the next byte or rejects it).
fn empty_lines_len(buf: &[u8]) -> usize {
    let mut len = 0;
    loop {
        match &buf[len..] {
            [b'\n', ..] => len += 1,
            [b'\r', b'\n', ..] => len += 2,
            _ => return len,
        }
    }
}
