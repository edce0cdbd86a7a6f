//! Body decoding: the chunked transfer coding (RFC 9112 §7.1), from the bytes after the head
//! into a scratch buffer. A Content-Length body needs no decoding; [`super::parse`] slices it.
//!
//! The decoder is incremental: [`ChunkedDecoder`] remembers how far it got (which step, how many
//! bytes of the body it used, how much of an unfinished line it already searched), so each
//! call examines only bytes it has not seen. A client trickling a body one byte per read costs
//! work in proportion to its bytes, not to their square.
//!
//! Every line is searched for within a bounded window, so a client cannot make us scan or
//! buffer without bound by never ending a chunk-size or trailer line. Lines end with CRLF only,
//! as in the head (see `head.rs`): a bare LF is an error (RFC 9112 §2.2, §7.1).

use super::error::HttpError;
use super::limits::Limits;
use super::token::{is_field_name, trim_ows};

/// A chunk-size line longer than this (hex digits plus extensions) is rejected.
const MAX_CHUNK_LINE_BYTES: usize = 256;
/// Hex digits in a chunk size: 15 keep the value below 2^60, so it cannot overflow a usize.
const MAX_CHUNK_SIZE_DIGITS: usize = 15;

/// Where the decoder stands in a chunked body; kept between calls by the caller of
/// [`super::parse`], reset for every new request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ChunkedDecoder {
    /// Bytes of the body (counted from the end of the head) used so far.
    pos: usize,
    /// Bytes after `pos` already searched for the end of the current line, without finding it.
    scanned: usize,
    step: Step,
    /// Bytes of the trailer section so far, held to the head's size limit.
    trailer_bytes: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Step {
    /// Reading a `chunk-size [ chunk-ext ] CRLF` line.
    #[default]
    Size,
    /// This many bytes of the current chunk's data are still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer field lines, until an empty line (RFC 9112 §7.1.2).
    Trailer,
}

impl ChunkedDecoder {
    /// Continues decoding the body at the start of `buf` (the same body as the last call, with
    /// more bytes), appending chunk data to `out`. Returns the bytes of `buf` the body takes
    /// once the last chunk and the trailer section are complete.
    pub(super) fn decode(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, HttpError> {
        loop {
            match self.step {
                Step::Size => {
                    let Some(line) = self.next_line(buf, MAX_CHUNK_LINE_BYTES)? else {
                        return Ok(None);
                    };
                    let size = parse_chunk_size(line)?;
                    if size == 0 {
                        self.step = Step::Trailer;
                        continue;
                    }
                    // Checked before the data arrives, so an oversized body is refused
                    // without buffering it.
                    if out.len() + size > limits.max_body_bytes {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.step = Step::Data(size);
                }
                Step::Data(remaining) => {
                    let available = &buf[self.pos..];
                    let n = remaining.min(available.len());
                    out.extend_from_slice(&available[..n]);
                    note_examined(n);
                    self.pos += n;
                    if n < remaining {
                        self.step = Step::Data(remaining - n);
                        return Ok(None);
                    }
                    self.step = Step::DataEnd;
                }
                Step::DataEnd => {
                    let Some(end) = buf.get(self.pos..self.pos + 2) else {
                        return Ok(None);
                    };
                    if end != b"\r\n" {
                        return Err(HttpError::BadRequest("chunk data not followed by CRLF"));
                    }
                    self.pos += 2;
                    self.step = Step::Size;
                }
                Step::Trailer => {
                    let max = limits.max_head_bytes;
                    let Some(line) = self.next_line(buf, max)? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        return Ok(Some(self.pos));
                    }
                    check_trailer_field(line)?;
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > max {
                        return Err(HttpError::HeadTooLarge);
                    }
                }
            }
        }
    }

    /// The line at `pos` (without its CRLF) once complete, moving `pos` past it; `None` while
    /// incomplete. Only bytes not searched by an earlier call are searched. A bare LF or a
    /// line longer than `max` is an error.
    fn next_line<'b>(&mut self, buf: &'b [u8], max: usize) -> Result<Option<&'b [u8]>, HttpError> {
        let rest = &buf[self.pos..];
        let window = &rest[..rest.len().min(max + 2)];
        let from = self.scanned.min(window.len());
        match window[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let lf = from + i;
                note_examined(i + 1);
                if lf == 0 || window[lf - 1] != b'\r' {
                    return Err(HttpError::BadRequest("bare LF in chunked body"));
                }
                self.pos += lf + 1;
                self.scanned = 0;
                Ok(Some(&rest[..lf - 1]))
            }
            None if window.len() > max + 1 => Err(HttpError::BadRequest("chunk line too long")),
            None => {
                note_examined(window.len() - from);
                self.scanned = window.len();
                Ok(None)
            }
        }
    }
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1.1): hex digits, then optionally `;ext`, which is
/// ignored once checked to hold no control character (a CR, LF or NUL there is how a framer
/// that reads lines differently from ours would be fooled).
fn parse_chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    const BAD: HttpError = HttpError::BadRequest("invalid chunk size");
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > MAX_CHUNK_SIZE_DIGITS {
        return Err(BAD);
    }
    let rest = trim_ows(rest);
    if !rest.is_empty() && rest[0] != b';' {
        return Err(BAD);
    }
    if rest.iter().any(|&b| is_ctl(b)) {
        return Err(HttpError::BadRequest(
            "control character in a chunk extension",
        ));
    }
    let mut n = 0usize;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(BAD)?;
        n = n * 16 + d as usize;
    }
    Ok(n)
}

/// `field-name ":" OWS field-value OWS` (RFC 9112 §5, §7.1.2), read and discarded: the name is
/// a token, the value holds no control character, and a line starting with whitespace
/// (obs-fold) is rejected as RFC 9112 §5.2 allows.
fn check_trailer_field(line: &[u8]) -> Result<(), HttpError> {
    const BAD: HttpError = HttpError::BadRequest("malformed trailer field");
    let colon = line.iter().position(|&b| b == b':').ok_or(BAD)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !is_field_name(name) || value.iter().any(|&b| is_ctl(b)) {
        return Err(BAD);
    }
    Ok(())
}

/// A control character other than HTAB (RFC 5234 CTL), never allowed in a field value or
/// extension.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
thread_local! {
    /// Bytes the decoder searched or copied on this thread: tests check the work is linear.
    pub(super) static EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[inline]
fn note_examined(n: usize) {
    #[cfg(test)]
    EXAMINED.with(|e| e.set(e.get() + n));
    let _ = n;
}
