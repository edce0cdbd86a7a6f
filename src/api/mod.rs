//! The HTTP API: method + path to endpoint, and each endpoint's HTTP shape both ways (the
//! request JSON it reads, the response JSON it writes). One file per group of endpoints:
//!
//! - [`counter`]: `/api/v1/counter` (GET, POST with `{"by": n}` and `Idempotency-Key`);
//! - [`kv`](self::kv): `/get_value`;
//! - [`system`]: health, readiness, metrics;
//! - [`admin`]: `/admin/kv/reload`, behind `--admin-token`.
//!
//! Endpoints see only the core's [`App`] and make plain domain calls on it (`kv` and `counter`
//! know nothing of bodies). Each writes its body into a buffer and returns the [`Response`]
//! that goes with it; the connection adds what depends on the connection (`Connection`,
//! `Date`, HEAD). An increment cannot be answered yet: it returns a [`Pending`] the connection
//! awaits, which then writes its response the same way.

pub mod admin;
pub mod app;
pub mod counter;
pub mod kv;
#[cfg(test)]
mod kv_bench;
pub mod system;

pub use app::{AdminToken, App, Instance};
pub use counter::{KeyField, MAX_IDEMPOTENCY_KEY_BYTES, REPLAYED_HEADER};

use crate::http::response::{write_message_body, CONTENT_TYPE_JSON};
use crate::http::{Method, Persistence, ResponseHead, Status};

/// Generates [`Route`] and its table from one list: variant, path, allowed methods (as sent in
/// `Allow`; GET implies HEAD, which is listed too).
macro_rules! route_table {
    ($($route:ident => $path:literal, [$first:ident $(, $method:ident)*];)+) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Route {
            $($route,)+
        }

        impl Route {
            /// Every route, in table order.
            pub const ALL: &'static [Route] = &[$(Route::$route,)+];

            /// Metric label of each route index, then [`Route::UNMATCHED_LABEL`] for requests
            /// no route matched ([`Route::metric_index`] of `None`).
            pub const METRIC_LABELS: &'static [&'static str] =
                &[$($path,)+ Route::UNMATCHED_LABEL];

            pub fn from_path(path: &[u8]) -> Option<Route> {
                match path {
                    $(p if p == $path.as_bytes() => Some(Route::$route),)+
                    _ => None,
                }
            }

            pub const fn path(self) -> &'static str {
                match self {
                    $(Route::$route => $path,)+
                }
            }

            /// The value of the `Allow` header (RFC 9110 §10.2.1) on a 405 from this route.
            pub const fn allow(self) -> &'static str {
                match self {
                    $(Route::$route => concat!(stringify!($first) $(, ", ", stringify!($method))*),)+
                }
            }

            fn allows(self, method: Method) -> bool {
                match self {
                    $(Route::$route => [route_table!(@method $first) $(, route_table!(@method $method))*]
                        .contains(&method),)+
                }
            }
        }
    };
    (@method GET) => { Method::Get };
    (@method HEAD) => { Method::Head };
    (@method POST) => { Method::Post };
}

route_table! {
    Counter => "/api/v1/counter", [GET, HEAD, POST];
    GetValue => "/get_value", [POST];
    Health => "/api/v1/system/health", [GET, HEAD];
    Ready => "/api/v1/system/ready", [GET, HEAD];
    Metrics => "/metrics", [GET, HEAD];
    AdminKvReload => "/admin/kv/reload", [POST];
}

impl Route {
    /// The metric label of requests that matched no route.
    pub const UNMATCHED_LABEL: &'static str = "other";

    /// Index into [`Route::METRIC_LABELS`].
    pub fn metric_index(route: Option<Route>) -> usize {
        route.map_or(Route::ALL.len(), |r| r as usize)
    }
}

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

pub(crate) fn method_not_allowed(out: &mut Vec<u8>, route: Route) -> Response {
    Response {
        allow: Some(route.allow()),
        ..message(out, Status::MethodNotAllowed, "method not allowed")
    }
}

/// An endpoint's answer.
pub enum Reply {
    /// The body is in the output buffer.
    Now(Response),
    /// A counter increment: the response waits for its commit.
    Later(counter::Pending),
}

/// One request as endpoints see it: what the head said that they use, and the body.
pub struct Request<'a> {
    pub method: Method,
    pub route: Option<Route>,
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
            body,
            authorization: None,
            idempotency_key: KeyField::Absent,
        }
    }
}

/// Serves one request, writing its body into `out`. HEAD is answered as GET (the connection
/// drops the body).
pub fn dispatch(app: &App, request: Request<'_>, out: &mut Vec<u8>) -> Reply {
    let Some(route) = request.route else {
        return Reply::Now(message(out, Status::NotFound, "not found"));
    };
    let reply = match route {
        // The admin route does not exist without --admin-token, whatever the method: its
        // endpoint answers 404 before any 405, so it checks the method itself.
        Route::AdminKvReload => admin::kv_reload(app, &request, out),
        _ if !route.allows(request.method) => method_not_allowed(out, route),
        Route::Counter if request.method == Method::Post => {
            return counter::increment(app, request, out)
        }
        Route::Counter => counter::get(app, out),
        Route::GetValue => kv::get_value(app, request.body, out),
        Route::Health => system::health(out),
        Route::Ready => system::ready(app, out),
        Route::Metrics => system::metrics(app, out),
    };
    Reply::Now(reply)
}

#[cfg(test)]
mod tests;
