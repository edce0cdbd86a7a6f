//! Response writing: status line and headers appended straight into a connection's output
//! buffer, with no intermediate allocation. Every response carries `Content-Length`,
//! `Content-Type`, `Date` and `Server`.

use std::time::SystemTime;

use super::Status;

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
const SERVER: &[u8] = b"\r\nServer: tally\r\nDate: ";

/// The interim response for `Expect: 100-continue` (RFC 9110 §10.1.1); a test checks it
/// against [`Status::Continue`].
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the `Connection` header of a response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: no header needed.
    KeepAlive,
    /// An HTTP/1.0 client asked for keep-alive and gets it: say so explicitly.
    KeepAliveHttp10,
    /// The connection closes after this response.
    Close,
}

/// One response's metadata; the body is passed separately.
#[derive(Clone, Copy, Debug)]
pub struct ResponseHead<'a> {
    pub status: Status,
    pub content_type: &'a str,
    pub persistence: Persistence,
    /// HEAD request: headers as for GET, no body.
    pub head_only: bool,
    /// Value of an `Allow` header (405 responses).
    pub allow: Option<&'a str>,
    /// One more header line, `Name: value` (e.g. a replay mark); no CRLF.
    pub extra_header: Option<&'a str>,
}

/// Appends a complete response to `out`.
pub fn write_response(out: &mut Vec<u8>, head: &ResponseHead<'_>, date: &HttpDate, body: &[u8]) {
    out.reserve(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.line().as_bytes());
    out.extend_from_slice(SERVER);
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(head.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(body.len()).as_bytes());
    match head.persistence {
        Persistence::KeepAlive => {}
        Persistence::KeepAliveHttp10 => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persistence::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    if let Some(allow) = head.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(allow.as_bytes());
    }
    if head.status == Status::Unauthorized {
        // RFC 9110 §15.5.2: a 401 carries a challenge; tally's one scheme is Bearer (RFC 6750).
        out.extend_from_slice(b"\r\nWWW-Authenticate: Bearer");
    }
    if let Some(line) = head.extra_header {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head.head_only {
        out.extend_from_slice(body);
    }
}

/// Appends `{"message":"<msg>"}`. Messages are our own ASCII text; quotes and backslashes
/// in them are escaped anyway, and control characters are dropped.
pub fn write_message_body(out: &mut Vec<u8>, msg: &str) {
    out.extend_from_slice(b"{\"message\":\"");
    for &b in msg.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..=0x1f => {}
            _ => out.push(b),
        }
    }
    out.extend_from_slice(b"\"}");
}

/// The `Date` header value (IMF-fixdate, RFC 9110 §5.6.7), formatted at most once a second.
/// One per core: that core's once-a-second sweeper (`server::sweep`) refreshes it, so the
/// responses of one second share one formatting.
pub struct HttpDate {
    text: [u8; 29],
    unix_secs: u64,
}

impl HttpDate {
    pub fn new() -> Self {
        let mut date = HttpDate {
            text: [b' '; 29],
            unix_secs: u64::MAX,
        };
        date.refresh(SystemTime::now());
        date
    }

    /// Re-formats the date if `now` is in another second than the cached text.
    pub fn refresh(&mut self, now: SystemTime) {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs == self.unix_secs {
            return;
        }
        self.unix_secs = secs;
        let text = httpdate::fmt_http_date(now);
        let n = text.len().min(self.text.len());
        self.text[..n].copy_from_slice(&text.as_bytes()[..n]);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

impl Default for HttpDate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_is_the_status_line_of_100() {
        let expected = format!("HTTP/1.1 {}\r\n\r\n", Status::Continue.line());
        assert_eq!(CONTINUE, expected.as_bytes());
    }

    fn date() -> HttpDate {
        HttpDate::new()
    }

    fn head(
        status: Status,
        persistence: Persistence,
        head_only: bool,
        allow: Option<&str>,
    ) -> ResponseHead<'_> {
        ResponseHead {
            status,
            content_type: CONTENT_TYPE_JSON,
            persistence,
            head_only,
            allow,
            extra_header: None,
        }
    }

    #[test]
    fn every_response_has_length_type_date_and_server() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &head(Status::Ok, Persistence::KeepAlive, false, None),
            &date(),
            b"{\"a\":1}",
        );
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Length: 7\r\n"));
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("\r\nServer: tally\r\n"));
        assert!(text.contains("\r\nDate: ") && text.contains(" GMT\r\n"));
        assert!(!text.contains("Connection"));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn a_head_response_has_the_get_length_and_no_body() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &head(Status::Ok, Persistence::KeepAlive, true, None),
            &date(),
            b"12345",
        );
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn close_keep_alive_10_and_allow_headers_are_written() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &head(
                Status::MethodNotAllowed,
                Persistence::Close,
                false,
                Some("GET, HEAD"),
            ),
            &date(),
            b"",
        );
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        let mut out = Vec::new();
        write_response(
            &mut out,
            &head(Status::Ok, Persistence::KeepAliveHttp10, false, None),
            &date(),
            b"",
        );
        assert!(String::from_utf8(out)
            .expect("ASCII")
            .contains("\r\nConnection: keep-alive\r\n"));
    }

    #[test]
    fn message_bodies_are_json_even_with_quotes() {
        let mut out = Vec::new();
        write_message_body(&mut out, "a \"b\" \\ c\n");
        assert_eq!(out, br#"{"message":"a \"b\" \\ c"}"#);
    }

    #[test]
    fn the_date_is_an_imf_fixdate_of_29_bytes() {
        let d = date();
        let text = std::str::from_utf8(d.as_bytes()).expect("ASCII");
        assert_eq!(text.len(), 29);
        assert!(text.ends_with(" GMT"));
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }
}
