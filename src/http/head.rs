//! Head parsing: the request line and header section (RFC 9112 §2-§5), read by `httparse`,
//! then checked and summed up in one [`Head`]: method, path, version, how the body is framed
//! (RFC 9112 §6.3), whether the connection persists (§9.3) and whether the client expects
//! `100 Continue`. Every rule below cites where it comes from.
//!
//! The header fields are walked once; each field the framer cares about is folded into a
//! [`FieldSummary`] as it is met, so the first offending field decides the error.

use std::ops::Range;

use super::error::HttpError;
use super::limits::{Limits, MAX_HEADERS_CAP};
use super::token::trim_ows;

/// The methods tally routes on; anything else is `Other` (and gets 405 or 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Delete,
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
/// slice given to [`super::parse`], so a `Head` holds no borrow.
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
    /// The `Authorization` field's value, as a range of the input (an empty range if the
    /// field came more than once: credentials are one field, RFC 9110 §11.6.2).
    pub authorization: Option<Range<usize>>,
    /// The value of the `Idempotency-Key` field (IETF draft "The Idempotency-Key HTTP Header
    /// Field"), OWS trimmed, as a range of the input; not checked here: its handler decides.
    pub idempotency_key: Option<Range<usize>>,
    /// More than one `Idempotency-Key` field was sent (a request names one key).
    pub idempotency_key_repeated: bool,
}

/// Parses the request line and header section; `None` if they are not complete yet.
pub(super) fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.clamp(1, MAX_HEADERS_CAP);
    let mut req = httparse::Request::new(&mut storage[..max_headers]);
    let Some(head_len) = read_head(&mut req, buf, limits)? else {
        return Ok(None);
    };
    let line = RequestLine::of(&req, buf)?;
    let fields = FieldSummary::of(req.headers, line.http10, buf)?;
    check_host(fields.hosts, line.http10)?;
    let framing = body_framing(&fields, line.http10, limits)?;
    Ok(Some(Head {
        method: line.method,
        path: line.path,
        http10: line.http10,
        keep_alive: keep_alive(&fields, line.http10),
        expect_continue: fields.expect_continue,
        framing,
        head_len,
        // A repeated Authorization reads as an empty value, which no token matches.
        authorization: fields.authorization.range.clone().map(|r| {
            if fields.authorization.count > 1 {
                r.start..r.start
            } else {
                r
            }
        }),
        idempotency_key: fields.idempotency_key.range.clone(),
        idempotency_key_repeated: fields.idempotency_key.count > 1,
    }))
}

/// Runs `httparse` over `buf`: the head's length once it is complete, `None` before. Both a
/// complete and an incomplete head are held to the same limits, decided by the same bytes
/// however the head arrives.
fn read_head<'b>(
    req: &mut httparse::Request<'_, 'b>,
    buf: &'b [u8],
    limits: &Limits,
) -> Result<Option<usize>, HttpError> {
    let parsed = req.parse(buf);
    // A complete head whose target is within the limit cannot have broken it (the common
    // case costs nothing more); otherwise the target limit is checked first, as below.
    let target_fits = matches!(parsed, Ok(httparse::Status::Complete(_)))
        && req.path.is_some_and(|t| t.len() <= limits.max_uri_bytes);
    if !target_fits {
        if let Some(decided_at) = target_too_long_at(buf, limits) {
            // The 414 is decided by byte `decided_at`; an error in the bytes before it came
            // first, whether or not they arrived in the same read.
            let mut no_fields = [];
            return Err(
                match httparse::Request::new(&mut no_fields).parse(&buf[..decided_at]) {
                    Err(err) => head_error(err),
                    Ok(_) => HttpError::UriTooLong,
                },
            );
        }
    }
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // A client must not make us buffer without bound by never finishing its head.
            if buf.len() >= limits.max_head_bytes {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(err) => return Err(head_error(err)),
    };
    if head_len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    if has_bare_lf(&buf[..head_len]) {
        return Err(HttpError::BadRequest("bare LF in request head"));
    }
    Ok(Some(head_len))
}

fn head_error(err: httparse::Error) -> HttpError {
    match err {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => HttpError::BadRequest("unsupported HTTP version"),
        _ => HttpError::BadRequest("malformed request head"),
    }
}

/// The one rule for 414 (RFC 9112 §3, RFC 9110 §15.5.15): the request target, the bytes after
/// the request line's first SP up to the next SP, CR or LF, longer than `max_uri_bytes`. Returns
/// the length of the prefix that decides it (target byte `max_uri_bytes + 1` has arrived), if
/// that is within `buf` and within the head limit (beyond it the head is too large first).
fn target_too_long_at(buf: &[u8], limits: &Limits) -> Option<usize> {
    let line = &buf[..buf.len().min(limits.max_head_bytes)];
    let is_end = |b: &u8| matches!(b, b' ' | b'\r' | b'\n');
    let sp = line.iter().position(is_end)?;
    if line[sp] != b' ' {
        return None;
    }
    let target = &line[sp + 1..];
    let len = target.iter().position(is_end).unwrap_or(target.len());
    (len > limits.max_uri_bytes).then_some(sp + 1 + limits.max_uri_bytes + 1)
}

/// RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; tally does not, in the head
/// as in chunked framing and trailers (`chunked.rs`): a bare LF is 400. One rule for every line
/// of a request, and the strict one, because a framer that splits lines where an intermediary
/// does not is how requests are smuggled (RFC 9112 §11.2). Written as a fold without early exit
/// so it vectorizes: heads are short and this runs for every request.
fn has_bare_lf(head: &[u8]) -> bool {
    let first = head.first() == Some(&b'\n');
    let rest = head[1.min(head.len())..]
        .iter()
        .zip(head)
        .fold(false, |found, (&b, &prev)| {
            found | (b == b'\n' && prev != b'\r')
        });
    first | rest
}

/// The request line (RFC 9112 §3), as the rest of tally needs it.
struct RequestLine {
    method: Method,
    /// The path of the target, as a range of the input.
    path: Range<usize>,
    http10: bool,
}

impl RequestLine {
    fn of(req: &httparse::Request<'_, '_>, buf: &[u8]) -> Result<Self, HttpError> {
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(HttpError::BadRequest("malformed request line"));
        };
        let method = match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        };
        let path = request_path(target);
        // `httparse` returns slices of `buf`, so the path's offset is a pointer difference.
        let path_start = path.as_ptr() as usize - buf.as_ptr() as usize;
        Ok(RequestLine {
            method,
            path: path_start..path_start + path.len(),
            http10: version == 0,
        })
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

/// A field a request should send once (`Authorization`, `Idempotency-Key`): where its value
/// is, and how many times it came, so its reader can refuse a repeat.
#[derive(Default)]
struct OneField {
    /// The first value, OWS trimmed, as a range of the input.
    range: Option<Range<usize>>,
    count: usize,
}

impl OneField {
    fn add(&mut self, value: &[u8], buf: &[u8]) {
        // `httparse` returns slices of `buf`: the offset is a pointer difference.
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        self.range.get_or_insert(start..start + value.len());
        self.count += 1;
    }
}

/// What the header fields say about framing, persistence, expectations and Host, gathered in
/// one pass over them.
#[derive(Default)]
struct FieldSummary {
    content_length: Option<usize>,
    /// A Transfer-Encoding field was present (even an empty one).
    transfer_encoding: bool,
    /// The last transfer coding seen is `chunked`.
    chunked_last: bool,
    /// A transfer coding other than `chunked` was seen.
    other_coding: bool,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive` (what an HTTP/1.0 client sends to persist).
    keep_alive_token: bool,
    expect_continue: bool,
    /// Number of Host fields.
    hosts: usize,
    authorization: OneField,
    idempotency_key: OneField,
}

impl FieldSummary {
    fn of(fields: &[httparse::Header<'_>], http10: bool, buf: &[u8]) -> Result<Self, HttpError> {
        let mut summary = FieldSummary::default();
        for field in fields {
            let name = field.name;
            let value = trim_ows(field.value);
            if name.eq_ignore_ascii_case("content-length") {
                summary.add_content_length(value)?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                summary.add_transfer_encoding(value)?;
            } else if name.eq_ignore_ascii_case("connection") {
                summary.add_connection(value);
            } else if name.eq_ignore_ascii_case("expect") {
                summary.add_expect(value, http10)?;
            } else if name.eq_ignore_ascii_case("host") {
                summary.hosts += 1;
            } else if name.eq_ignore_ascii_case("authorization") {
                summary.authorization.add(value, buf);
            } else if name.eq_ignore_ascii_case("idempotency-key") {
                summary.idempotency_key.add(value, buf);
            }
        }
        Ok(summary)
    }

    fn add_content_length(&mut self, value: &[u8]) -> Result<(), HttpError> {
        // RFC 9112 §6.3 item 5: several differing lengths (or a list) are unrecoverable.
        let n = parse_content_length(value)?;
        if self.content_length.is_some_and(|prev| prev != n) {
            return Err(HttpError::BadRequest("conflicting Content-Length values"));
        }
        self.content_length = Some(n);
        Ok(())
    }

    fn add_transfer_encoding(&mut self, value: &[u8]) -> Result<(), HttpError> {
        self.transfer_encoding = true;
        for coding in value.split(|&b| b == b',') {
            let coding = trim_ows(coding);
            if coding.is_empty() {
                continue;
            }
            if self.chunked_last {
                // RFC 9112 §6.3 item 4: chunked must be the final coding, applied once.
                return Err(HttpError::BadRequest(
                    "chunked is not the final transfer coding",
                ));
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked_last = true;
            } else {
                self.other_coding = true;
            }
        }
        Ok(())
    }

    /// RFC 9110 §7.6.1: a comma-separated list of connection options.
    fn add_connection(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            let token = trim_ows(token);
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive_token = true;
            }
        }
    }

    /// RFC 9110 §10.1.1: 100-continue is the only expectation; any other gets 417. An
    /// HTTP/1.0 client cannot understand an interim response, so it is not sent one.
    fn add_expect(&mut self, value: &[u8], http10: bool) -> Result<(), HttpError> {
        if !value.eq_ignore_ascii_case(b"100-continue") {
            return Err(HttpError::ExpectationFailed);
        }
        self.expect_continue = !http10;
        Ok(())
    }
}

/// RFC 9112 §3.2: a 1.1 request without exactly one Host is a 400.
fn check_host(hosts: usize, http10: bool) -> Result<(), HttpError> {
    if (!http10 && hosts == 0) || hosts > 1 {
        return Err(HttpError::BadRequest(
            "a request needs exactly one Host header",
        ));
    }
    Ok(())
}

/// Resolves Content-Length against Transfer-Encoding (RFC 9112 §6.3).
fn body_framing(
    fields: &FieldSummary,
    http10: bool,
    limits: &Limits,
) -> Result<BodyFraming, HttpError> {
    if !fields.transfer_encoding {
        return match fields.content_length {
            Some(n) if n > limits.max_body_bytes => Err(HttpError::BodyTooLarge),
            Some(0) | None => Ok(BodyFraming::None),
            Some(n) => Ok(BodyFraming::Length(n)),
        };
    }
    // RFC 9112 §6.1: Transfer-Encoding with Content-Length is a smuggling attempt or a
    // broken intermediary; HTTP/1.0 has no transfer codings.
    if fields.content_length.is_some() {
        return Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if http10 {
        return Err(HttpError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    // RFC 9112 §6.3 item 4: without chunked last, a request's length cannot be determined.
    if !fields.chunked_last {
        return Err(HttpError::BadRequest(
            "chunked is not the final transfer coding",
        ));
    }
    if fields.other_coding {
        return Err(HttpError::NotImplemented("unsupported transfer coding"));
    }
    Ok(BodyFraming::Chunked)
}

/// RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
fn keep_alive(fields: &FieldSummary, http10: bool) -> bool {
    if http10 {
        fields.keep_alive_token && !fields.close
    } else {
        !fields.close
    }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), nothing else (no sign, no list, no whitespace
/// inside), without overflow.
fn parse_content_length(v: &[u8]) -> Result<usize, HttpError> {
    const BAD: HttpError = HttpError::BadRequest("invalid Content-Length");
    // 19 digits stay below 10^19 < 2^64: no overflow in a 64-bit usize.
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
