//! Method + path to handler. The route table below is the one place a route is described: its
//! path, the methods it allows (which also make its `Allow` header) and its metric label.
//!
//! Handlers see only the core's [`App`]: they write their JSON body into a scratch buffer and
//! say which status it goes with; the connection loop turns that into a response. A counter
//! increment cannot be answered yet: it returns a [`Ticket`] the connection awaits.

use crate::app::App;
use crate::counter::{self, KeyOutcome, KeyedTicket, Ticket};
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
    /// An increment with an Idempotency-Key: the response waits for its batch's commit.
    KeyedIncrement(KeyedTicket),
}

/// The request's `Idempotency-Key` field, as the head found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyField<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

/// Longest Idempotency-Key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A key is 1..=255 visible ASCII characters (0x21..=0x7E), compared byte for byte: the
/// draft's quoted sf-string form `"abc"` is accepted as is, quotes included.
fn idempotency_key(key: KeyField<'_>) -> Result<Option<&str>, &'static str> {
    match key {
        KeyField::Absent => Ok(None),
        KeyField::Repeated => Err("send one Idempotency-Key field, not several"),
        KeyField::One(bytes) => {
            let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
            if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES || !visible {
                return Err("Idempotency-Key must be 1 to 255 visible ASCII characters");
            }
            // Visible ASCII is UTF-8.
            std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| "Idempotency-Key must be visible ASCII")
        }
    }
}

/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotency-Replayed: true";

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

/// One request as handlers see it: what the head said that they use, and the body.
pub struct Request<'a> {
    pub method: Method,
    pub route: Option<Route>,
    /// The decoded body; handlers may parse it in place (simd-json does).
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

/// Serves one request. HEAD is answered as GET (the connection drops the body).
pub fn dispatch(app: &App, request: Request<'_>, out: &mut Vec<u8>) -> Reply {
    let Request {
        method,
        route,
        body,
        authorization,
        idempotency_key: key,
    } = request;
    let Some(route) = route else {
        return message(out, Status::NotFound, "not found");
    };
    // The admin route does not exist without --admin-token, whatever the method: its handler
    // answers 404 before any 405, so it checks the method itself.
    if !route.allows(method) && route != Route::AdminKvReload {
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
        Route::AdminKvReload => admin_kv_reload(app, method, authorization, out),
        Route::Counter if method == Method::Post => {
            match (counter::parse_by(body), idempotency_key(key)) {
                (Err(msg), _) | (_, Err(msg)) => message(out, Status::BadRequest, msg),
                (Ok(by), Ok(None)) => Reply::Increment(app.counter.increment(by)),
                (Ok(by), Ok(Some(key))) => {
                    Reply::KeyedIncrement(app.counter.increment_keyed(by, key))
                }
            }
        }
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

/// The response to a keyed increment, and the extra header a replay carries.
pub fn keyed_increment_reply(
    result: Result<KeyOutcome, counter::CommitError>,
    out: &mut Vec<u8>,
) -> (Reply, Option<&'static str>) {
    match result {
        Ok(KeyOutcome::Counted(count)) => (counter_body(out, count), None),
        Ok(KeyOutcome::Replayed(count)) => (counter_body(out, count), Some(REPLAYED_HEADER)),
        Ok(KeyOutcome::Mismatch) => (
            message(
                out,
                Status::UnprocessableContent,
                "this Idempotency-Key was used with another body (by)",
            ),
            None,
        ),
        Err(err) => (increment_reply(Err(err), out), None),
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
