//! Method + path to handler. Handlers write their JSON body into a scratch buffer and say
//! which status it goes with; the connection loop turns that into a response. A counter
//! increment cannot be answered yet: it returns a [`Ticket`] the connection awaits.

use crate::counter::{self, Ticket};
use crate::http::response::{write_message_body, CONTENT_TYPE_JSON, CONTENT_TYPE_METRICS};
use crate::http::{Method, Status};
use crate::kv::{self, Lookup};
use crate::metrics;
use crate::server::Core;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Counter,
    GetValue,
    Health,
    Ready,
    Metrics,
}

impl Route {
    pub fn from_path(path: &[u8]) -> Option<Route> {
        match path {
            b"/api/v1/counter" => Some(Route::Counter),
            b"/get_value" => Some(Route::GetValue),
            b"/api/v1/system/health" => Some(Route::Health),
            b"/api/v1/system/ready" => Some(Route::Ready),
            b"/metrics" => Some(Route::Metrics),
            _ => None,
        }
    }

    /// Index into [`metrics::ROUTE_NAMES`].
    pub fn metric_index(route: Option<Route>) -> usize {
        match route {
            Some(Route::Counter) => 0,
            Some(Route::GetValue) => 1,
            Some(Route::Health) => 2,
            Some(Route::Ready) => 3,
            Some(Route::Metrics) => 4,
            None => metrics::ROUTE_OTHER,
        }
    }

    /// The `Allow` header of a 405 on this route.
    fn allow(self) -> &'static str {
        match self {
            Route::Counter => "GET, HEAD, POST",
            Route::GetValue => "POST",
            Route::Health | Route::Ready | Route::Metrics => "GET, HEAD",
        }
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
    core: &Core,
    method: Method,
    route: Option<Route>,
    body: &mut [u8],
    out: &mut Vec<u8>,
) -> Reply {
    let Some(route) = route else {
        return message(out, Status::NotFound, "not found");
    };
    let get = matches!(method, Method::Get | Method::Head);
    match (route, get, method == Method::Post) {
        (Route::Health, true, _) => {
            out.extend_from_slice(br#"{"healthy":true}"#);
            json(Status::Ok)
        }
        (Route::Ready, true, _) => ready(core, out),
        (Route::Metrics, true, _) => {
            let text = core.render_metrics();
            out.extend_from_slice(text.as_bytes());
            Reply::Now {
                status: Status::Ok,
                content_type: CONTENT_TYPE_METRICS,
                allow: None,
            }
        }
        (Route::GetValue, _, true) => get_value(core, body, out),
        (Route::Counter, _, true) => match counter::parse_by(body) {
            Ok(by) => Reply::Increment(core.counter.increment(by)),
            Err(msg) => message(out, Status::BadRequest, msg),
        },
        (Route::Counter, true, _) => match core.instance.counter.current() {
            Some(count) => counter_body(out, count),
            None => message(
                out,
                Status::ServiceUnavailable,
                "the count is not known yet: the store is unavailable",
            ),
        },
        _ => {
            write_message_body(out, "method not allowed");
            Reply::Now {
                status: Status::MethodNotAllowed,
                content_type: CONTENT_TYPE_JSON,
                allow: Some(route.allow()),
            }
        }
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

fn ready(core: &Core, out: &mut Vec<u8>) -> Reply {
    let instance = &core.instance;
    let why = if !instance.kv_ready() {
        Some("the key/value replicas are still being built")
    } else if !instance.counter.store.is_connected() {
        Some("the counter store (PostgreSQL) is unreachable")
    } else {
        None
    };
    match why {
        None => {
            out.extend_from_slice(br#"{"ready":true}"#);
            json(Status::Ok)
        }
        Some(msg) => {
            out.extend_from_slice(br#"{"ready":false,"message":""#);
            out.extend_from_slice(msg.as_bytes());
            out.extend_from_slice(b"\"}");
            json(Status::ServiceUnavailable)
        }
    }
}

fn get_value(core: &Core, body: &mut [u8], out: &mut Vec<u8>) -> Reply {
    let mut scratch = core.kv_scratch.borrow_mut();
    match kv::lookup(&core.replica, &mut scratch, body) {
        Lookup::Found(value) => {
            out.extend_from_slice(b"{\"value\":");
            kv::write_json_string(out, value);
            out.push(b'}');
            json(Status::Ok)
        }
        Lookup::NotFound => message(out, Status::NotFound, "key not found"),
        Lookup::NotUuidV4 => message(out, Status::UnprocessableContent, "key is not a UUID v4"),
        Lookup::BadRequest(why) => message(out, Status::BadRequest, why),
    }
}
