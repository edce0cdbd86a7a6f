//! What an endpoint is given ([`Request`]) and what it answers ([`Reply`]): a response now,
//! or an increment whose response waits for its commit.

use crate::http::Method;

use super::pending::Pending;
use super::response::Response;
use super::routes::Route;

/// The request's `Idempotency-Key` field, as the head found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyField<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

/// An endpoint's answer.
pub enum Reply {
    /// The body is in the output buffer.
    Now(Response),
    /// A counter increment: the response waits for its commit.
    Later(Pending),
}

/// One request as endpoints see it: what the head said that they use, and the body.
pub struct Request<'a> {
    pub method: Method,
    pub route: Option<Route>,
    /// The request target's path (no query string), as sent.
    pub path: &'a [u8],
    /// The decoded body; endpoints may parse it in place (simd-json does).
    pub body: &'a mut [u8],
    /// The `Authorization` value, read by the admin route only.
    pub authorization: Option<&'a [u8]>,
    pub idempotency_key: KeyField<'a>,
}

impl<'a> Request<'a> {
    /// A request without credentials or Idempotency-Key.
    pub fn new(method: Method, route: Option<Route>, body: &'a mut [u8]) -> Self {
        Request {
            method,
            route,
            path: route.map_or(b"", |route| route.path().as_bytes()),
            body,
            authorization: None,
            idempotency_key: KeyField::Absent,
        }
    }
}
