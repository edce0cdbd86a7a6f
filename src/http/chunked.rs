//! Body decoding: the chunked transfer coding (RFC 9112 §7.1), from the bytes after the head
//! into a scratch buffer. A Content-Length body needs no decoding; [`super::parse`] slices it.
//!
//! Every line is searched for within a bounded window, so a client cannot make us scan or
//! buffer without bound by never ending a chunk-size or trailer line.

use super::head::trim_ows;
use super::request::{HttpError, Limits};

/// A chunk-size line longer than this (hex digits plus extensions) is rejected.
const MAX_CHUNK_LINE_BYTES: usize = 256;
/// Hex digits in a chunk size: 15 keep the value below 2^60, so it cannot overflow a usize.
const MAX_CHUNK_SIZE_DIGITS: usize = 15;

/// Decodes a chunked body from the start of `buf` into `out` (cleared first).
/// Returns the bytes of `buf` used once the last chunk and trailer section are complete.
pub(super) fn decode_chunked(
    buf: &[u8],
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<Option<usize>, HttpError> {
    out.clear();
    let Some(chunks_len) = decode_chunks(buf, limits.max_body_bytes, out)? else {
        return Ok(None);
    };
    let trailer = skip_trailer_section(&buf[chunks_len..], limits.max_head_bytes)?;
    Ok(trailer.map(|trailer_len| chunks_len + trailer_len))
}

/// `*chunk last-chunk`: appends each chunk's data to `out`. Returns the bytes used up to and
/// including the last-chunk line (`0\r\n`), `None` if that line has not arrived yet.
fn decode_chunks(
    buf: &[u8],
    max_body_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<Option<usize>, HttpError> {
    let mut pos = 0;
    loop {
        let Some(line_len) = find_crlf(&buf[pos..], MAX_CHUNK_LINE_BYTES)? else {
            return Ok(None);
        };
        let size = parse_chunk_size(&buf[pos..pos + line_len])?;
        pos += line_len + 2;
        if size == 0 {
            return Ok(Some(pos));
        }
        // Checked before the data arrives, so an oversized body is refused without buffering it.
        if out.len() + size > max_body_bytes {
            return Err(HttpError::BodyTooLarge);
        }
        if buf.len() - pos < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(HttpError::BadRequest("chunk data not followed by CRLF"));
        }
        pos += 2;
    }
}

/// `trailer-section CRLF` (RFC 9112 §7.1.2): field lines until an empty line, read and
/// discarded, within the head's size limit. Returns the bytes used, `None` if incomplete.
fn skip_trailer_section(buf: &[u8], max_head_bytes: usize) -> Result<Option<usize>, HttpError> {
    let mut pos = 0;
    loop {
        let Some(line_len) = find_crlf(&buf[pos..], max_head_bytes)? else {
            return Ok(None);
        };
        pos += line_len + 2;
        if line_len == 0 {
            return Ok(Some(pos));
        }
        if pos > max_head_bytes {
            return Err(HttpError::HeadTooLarge);
        }
    }
}

/// Length of the line at the start of `buf` (without its CRLF), `None` if incomplete.
/// A bare LF or a line longer than `max` is an error.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, HttpError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(HttpError::BadRequest("bare LF in chunked body")),
        Some(i) if window[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(HttpError::BadRequest("bare LF in chunked body")),
        None if window.len() > max + 1 => Err(HttpError::BadRequest("chunk line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1.1): hex digits, then optionally `;ext`, which is
/// ignored.
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
    let mut n = 0usize;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(BAD)?;
        n = n * 16 + d as usize;
    }
    Ok(n)
}
