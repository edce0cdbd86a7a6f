//! What an endpoint answers now: a [`Response`] whose body it wrote, and the one body every
//! error response has.

use crate::http::response::{write_message_body, CONTENT_TYPE_JSON};
use crate::http::{Persistence, ResponseHead, Status};

use super::routes::Route;

/// A response as its endpoint describes it; its body is in the buffer the endpoint wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub content_type: &'static str,
    /// `Allow`, on a 405.
    pub allow: Option<&'static str>,
    /// One more header line, without its CRLF (a replayed increment's mark).
    pub extra_header: Option<&'static str>,
}

impl Response {
    /// A JSON body with `status`.
    pub const fn json(status: Status) -> Response {
        Response {
            status,
            content_type: CONTENT_TYPE_JSON,
            allow: None,
            extra_header: None,
        }
    }

    /// The head to write, with what the connection decides: whether it stays open, and
    /// whether the request was HEAD (no body).
    pub fn head(self, persistence: Persistence, head_only: bool) -> ResponseHead<'static> {
        ResponseHead {
            status: self.status,
            content_type: self.content_type,
            persistence,
            head_only,
            allow: self.allow,
            extra_header: self.extra_header,
        }
    }
}

/// Writes `{"message": msg}` into `out`: the body of every error response.
pub fn message(out: &mut Vec<u8>, status: Status, msg: &str) -> Response {
    write_message_body(out, msg);
    Response::json(status)
}

pub fn method_not_allowed(out: &mut Vec<u8>, route: Route) -> Response {
    Response {
        allow: Some(route.allow()),
        ..message(out, Status::MethodNotAllowed, "method not allowed")
    }
}
