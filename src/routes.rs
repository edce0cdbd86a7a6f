//! Method + path to handler. The route table below is the one place a route is described: its
//! path, the methods it allows (which also make its `Allow` header) and its metric label.
//!
//! Handlers see only the core's [`App`]: they write their JSON body into a scratch buffer and
//! say which status it goes with; the connection loop turns that into a response. A counter
//! increment cannot be answered yet: it returns a [`Ticket`] the connection awaits.

use crate::app::App;
use crate::counter::{self, Ticket};
use crate::http::response::{write_message_body, CONTENT_TYPE_JSON, CONTENT_TYPE_METRICS};
use crate::http::{Method, Status};
use crate::kv::{self, Lookup};

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

/// A handler's answer.
pub enum Reply {
    /// The body is in the scratch buffer.
    Now {
        status: Status,
        content_type: &'static str,
        allow: Option<&'static str>,
    },
    /// A counter increment: the response waits for its commit.
    Increment(Ticket),
}

fn json(status: Status) -> Reply {
    Reply::Now {
        status,
        content_type: CONTENT_TYPE_JSON,
        allow: None,
    }
}

fn message(out: &mut Vec<u8>, status: Status, msg: &str) -> Reply {
    write_message_body(out, msg);
    json(status)
}

/// Serves one request. HEAD is answered as GET (the connection drops the body).
pub fn dispatch(
    app: &App,
    method: Method,
    route: Option<Route>,
    body: &mut [u8],
    out: &mut Vec<u8>,
) -> Reply {
    let Some(route) = route else {
        return message(out, Status::NotFound, "not found");
    };
    if !route.allows(method) {
        write_message_body(out, "method not allowed");
        return Reply::Now {
            status: Status::MethodNotAllowed,
            content_type: CONTENT_TYPE_JSON,
            allow: Some(route.allow()),
        };
    }
    match route {
        Route::Health => {
            out.extend_from_slice(br#"{"healthy":true}"#);
            json(Status::Ok)
        }
        Route::Ready => ready(app, out),
        Route::Metrics => {
            let mut text = String::with_capacity(16 * 1024);
            app.shared.render_metrics(&mut text);
            out.extend_from_slice(text.as_bytes());
            Reply::Now {
                status: Status::Ok,
                content_type: CONTENT_TYPE_METRICS,
                allow: None,
            }
        }
        Route::GetValue => get_value(app, body, out),
        // Without the request's credentials: see `dispatch_with_credentials`.
        Route::AdminKvReload => admin_kv_reload(app, method, None, out),
        Route::Counter if method == Method::Post => match counter::parse_by(body) {
            Ok(by) => Reply::Increment(app.counter.increment(by)),
            Err(msg) => message(out, Status::BadRequest, msg),
        },
        Route::Counter => match app.shared.counter.current() {
            Some(count) => counter_body(out, count),
            None => message(
                out,
                Status::ServiceUnavailable,
                "the count is not known yet: the store is unavailable",
            ),
        },
    }
}

/// The response to a committed (or failed) increment.
pub fn increment_reply(result: Result<i64, counter::CommitError>, out: &mut Vec<u8>) -> Reply {
    match result {
        Ok(count) => counter_body(out, count),
        Err(err) => {
            log::debug!("increment not confirmed: {err}");
            message(
                out,
                Status::ServiceUnavailable,
                "the increment was not confirmed by the store",
            )
        }
    }
}

fn counter_body(out: &mut Vec<u8>, count: i64) -> Reply {
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.push(b'}');
    json(Status::Ok)
}

fn ready(app: &App, out: &mut Vec<u8>) -> Reply {
    match app.shared.not_ready_reason() {
        None => {
            out.extend_from_slice(br#"{"ready":true}"#);
            json(Status::Ok)
        }
        Some(msg) => {
            out.extend_from_slice(br#"{"ready":false,"message":"#);
            kv::write_json_string(out, &msg);
            out.push(b'}');
            json(Status::ServiceUnavailable)
        }
    }
}

fn get_value(app: &App, body: &mut [u8], out: &mut Vec<u8>) -> Reply {
    app.lookup(body, |lookup| match lookup {
        Lookup::Found(value) => {
            out.extend_from_slice(b"{\"value\":");
            kv::write_json_string(out, value);
            out.push(b'}');
            json(Status::Ok)
        }
        Lookup::NotFound => message(out, Status::NotFound, "key not found"),
        Lookup::NotUuidV4 => message(out, Status::UnprocessableContent, "key is not a UUID v4"),
        Lookup::BadRequest(why) => message(out, Status::BadRequest, why),
    })
}

/// As [`dispatch`], with the request's `Authorization` value, which only the admin routes read.
pub fn dispatch_with_credentials(
    app: &App,
    method: Method,
    route: Option<Route>,
    authorization: Option<&[u8]>,
    body: &mut [u8],
    out: &mut Vec<u8>,
) -> Reply {
    match route {
        Some(Route::AdminKvReload) => admin_kv_reload(app, method, authorization, out),
        _ => dispatch(app, method, route, body, out),
    }
}

/// `POST /admin/kv/reload`: 404 unless `--admin-token` is set (the route does not exist then,
/// whatever the method), 401 without the token, else 202 once the reload is queued: the
/// answer does not wait for a parse that takes seconds at 10M pairs. The body gives the
/// generation and failure count before it, so a client can poll `/metrics` for the outcome.
fn admin_kv_reload(
    app: &App,
    method: Method,
    authorization: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Reply {
    let Some(token) = &app.shared.admin_token else {
        return message(out, Status::NotFound, "not found");
    };
    if !token.accepts(authorization) {
        return message(out, Status::Unauthorized, "a valid admin token is required");
    }
    if method != Method::Post {
        write_message_body(out, "method not allowed");
        return Reply::Now {
            status: Status::MethodNotAllowed,
            content_type: CONTENT_TYPE_JSON,
            allow: Some(Route::AdminKvReload.allow()),
        };
    }
    let status = &app.shared.kv_status;
    let (generation, failures) = (status.generation(), status.failures());
    let requested = match &app.shared.kv_reload {
        Some(trigger) => trigger.request(kv::ReloadReason::Admin),
        None => kv::Requested::Stopped,
    };
    match requested {
        kv::Requested::Queued => {
            out.extend_from_slice(b"{\"reload\":\"started\",\"generation\":");
            out.extend_from_slice(itoa::Buffer::new().format(generation).as_bytes());
            out.extend_from_slice(b",\"failures\":");
            out.extend_from_slice(itoa::Buffer::new().format(failures).as_bytes());
            out.push(b'}');
            json(Status::Accepted)
        }
        kv::Requested::NothingToReload => message(
            out,
            Status::Conflict,
            "nothing to reload: tally serves the built-in sample (no --kv-data)",
        ),
        kv::Requested::Stopped => message(out, Status::ServiceUnavailable, "tally is stopping"),
    }
}

#[cfg(test)]
mod tests;
