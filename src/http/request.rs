//! Request framing: bytes in, one of "complete request", "need more bytes" or "error" out.
//!
//! Pure code, no I/O: the connection loop calls [`parse`] on whatever it has buffered, as often
//! as it likes; the answer depends only on the bytes, never on how they were split across reads.
//! Header fields are parsed by `httparse`; everything that decides where a message ends
//! (Content-Length, Transfer-Encoding, chunked framing) follows RFC 9112 §6 and is strict about
//! it, because a lenient framer is how request smuggling happens.

use std::ops::Range;

use super::Status;

/// Upper bound for [`Limits::max_headers`]: the size of the on-stack `httparse` header array.
pub const MAX_HEADERS_CAP: usize = 128;
/// A chunk-size line longer than this (hex digits plus extensions) is rejected.
const MAX_CHUNK_LINE_BYTES: usize = 256;

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

/// Default of [`Limits::max_head_bytes`].
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;
/// Default of [`Limits::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default of [`Limits::max_uri_bytes`].
pub const DEFAULT_MAX_URI_BYTES: usize = 2 * 1024;
/// Default of [`Limits::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

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

/// The methods tally routes on; anything else is `Other` (and gets 405 or 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(usize),
    Chunked,
}

/// What the connection loop needs to know about a request head. Positions are offsets into the
/// slice given to [`parse`], so a `Head` holds no borrow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    /// The path of the request target, without query string, as a range of the input.
    pub path: Range<usize>,
    /// HTTP/1.0 (true) or HTTP/1.1 (false).
    pub http10: bool,
    /// Whether the connection may stay open after the response (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` and waits for an interim response.
    pub expect_continue: bool,
    pub framing: BodyFraming,
    /// Length of the request line and header section, including the final CRLF.
    pub head_len: usize,
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

/// Parses the request line and header section; `None` if they are not complete yet.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.clamp(1, MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut storage[..max_headers]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial_head(buf, limits)?;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(HttpError::BadRequest("unsupported HTTP version"));
        }
        Err(_) => return Err(HttpError::BadRequest("malformed request head")),
    };
    if head_len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    if target.len() > limits.max_uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    let http10 = version == 0;
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let path = request_path(target);
    let path_start = path.as_ptr() as usize - buf.as_ptr() as usize;

    let mut content_length: Option<usize> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut other_coding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut hosts = 0;
    for header in req.headers.iter() {
        let name = header.name;
        let value = trim_ows(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3 item 5: several differing lengths (or a list) are unrecoverable.
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length values"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in value.split(|&b| b == b',') {
                let coding = trim_ows(coding);
                if coding.is_empty() {
                    continue;
                }
                if chunked_last {
                    // RFC 9112 §6.3 item 4: chunked must be the final coding, applied once.
                    return Err(HttpError::BadRequest(
                        "chunked is not the final transfer coding",
                    ));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked_last = true;
                } else {
                    other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = trim_ows(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = !http10;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    // RFC 9112 §3.2: a 1.1 request without exactly one Host is a 400.
    if (!http10 && hosts == 0) || hosts > 1 {
        return Err(HttpError::BadRequest(
            "a request needs exactly one Host header",
        ));
    }
    let framing = if transfer_encoding {
        // RFC 9112 §6.1: Transfer-Encoding with Content-Length is a smuggling attempt or a
        // broken intermediary; HTTP/1.0 has no transfer codings.
        if content_length.is_some() {
            return Err(HttpError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if http10 {
            return Err(HttpError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !chunked_last {
            return Err(HttpError::BadRequest(
                "chunked is not the final transfer coding",
            ));
        }
        if other_coding {
            return Err(HttpError::NotImplemented("unsupported transfer coding"));
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(n) if n > limits.max_body_bytes => return Err(HttpError::BodyTooLarge),
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };
    let keep_alive = if http10 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(Some(Head {
        method,
        path: path_start..path_start + path.len(),
        http10,
        keep_alive,
        expect_continue,
        framing,
        head_len,
    }))
}

/// Decides whether an incomplete head has already broken a limit, so a client cannot make us
/// buffer without bound by never finishing its request line or header section.
fn check_partial_head(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    // "METHOD " + target + " HTTP/1.1\r": allow generous room around the target itself.
    let uri_slack = 32;
    match line_end {
        None if buf.len() > limits.max_uri_bytes + uri_slack => Err(HttpError::UriTooLong),
        _ if buf.len() >= limits.max_head_bytes => Err(HttpError::HeadTooLarge),
        _ => Ok(()),
    }
}

/// The path of a request target: origin-form `/p?q` gives `/p`; absolute-form
/// `http://host/p?q` gives `/p` (RFC 9112 §3.2.2); `*` stays `*`.
fn request_path(target: &str) -> &str {
    let mut path = target;
    for scheme in ["http://", "https://"] {
        if let Some(rest) = strip_prefix_ignore_case(target, scheme) {
            path = rest.find('/').map_or(&rest[rest.len()..], |i| &rest[i..]);
            break;
        }
    }
    match path.find('?') {
        Some(i) => &path[..i],
        None => path,
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `1*DIGIT`, nothing else (no sign, no list, no whitespace inside), without overflow.
fn parse_content_length(v: &[u8]) -> Result<usize, HttpError> {
    const BAD: HttpError = HttpError::BadRequest("invalid Content-Length");
    if v.is_empty() || v.len() > 19 {
        return Err(BAD);
    }
    let mut n: usize = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(BAD);
        }
        n = n * 10 + usize::from(b - b'0');
    }
    Ok(n)
}

/// Decodes a chunked body (RFC 9112 §7.1) from the start of `buf` into `out`.
/// Returns the bytes of `buf` used once the last chunk and trailer section are complete.
fn decode_chunked(
    buf: &[u8],
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<Option<usize>, HttpError> {
    out.clear();
    let mut pos = 0;
    loop {
        let Some(line_len) = find_crlf(&buf[pos..], MAX_CHUNK_LINE_BYTES)? else {
            return Ok(None);
        };
        let size = parse_chunk_size(&buf[pos..pos + line_len])?;
        pos += line_len + 2;
        if size == 0 {
            break;
        }
        if out.len() + size > limits.max_body_bytes {
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
    // Trailer section: field lines until an empty line. Trailers are read and discarded.
    let trailer_start = pos;
    loop {
        let Some(line_len) = find_crlf(&buf[pos..], limits.max_head_bytes)? else {
            return Ok(None);
        };
        pos += line_len + 2;
        if line_len == 0 {
            return Ok(Some(pos));
        }
        if pos - trailer_start > limits.max_head_bytes {
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

/// `chunk-size [ chunk-ext ]`: hex digits, then optionally `;ext` which is ignored.
fn parse_chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    const BAD: HttpError = HttpError::BadRequest("invalid chunk size");
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
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
