//! `/api/v1/counters/{name}`: named counters. GET reads one (0 if never incremented); POST
//! increments it by 1 or by `{"by": n}` and is answered after the commit with `{"count": N}`,
//! as `/api/v1/counter` is; DELETE, behind `--admin-token`, deletes it.

use crate::counter::named::{self, counter_name, NAME_RULE};
use crate::http::{Method, Status};

use super::app::App;
use super::counter::{idempotency_key, parse_by};
use super::pending::{count_body, Pending};
use super::reply::{Reply, Request};
use super::response::{message, method_not_allowed, Response};
use super::routes::Route;

/// Serves a request under [`Route::COUNTERS_PREFIX`].
pub fn serve(app: &App, request: Request<'_>, out: &mut Vec<u8>) -> Reply {
    let name_bytes = request
        .path
        .strip_prefix(Route::COUNTERS_PREFIX.as_bytes())
        .unwrap_or(b"");
    let deletes = request.method == Method::Delete && app.instance.admin_token.is_some();
    if !Route::Counters.allows(request.method) && !deletes {
        let response = method_not_allowed(out, Route::Counters);
        return Reply::Now(match app.instance.admin_token {
            Some(_) => Response {
                allow: Some("GET, HEAD, POST, DELETE"),
                ..response
            },
            None => response,
        });
    }
    let Some(name) = counter_name(name_bytes) else {
        return Reply::Now(message(out, Status::BadRequest, NAME_RULE));
    };
    match request.method {
        Method::Post => increment(app, name, request, out),
        Method::Delete => delete(app, name, &request, out),
        _ => match app.named.get(name) {
            named::Get::Now(count) => Reply::Now(count_body(out, count)),
            named::Get::Later(read) => Reply::Later(Pending::Read(read)),
        },
    }
}

fn increment(app: &App, name: &str, request: Request<'_>, out: &mut Vec<u8>) -> Reply {
    match (
        parse_by(request.body),
        idempotency_key(request.idempotency_key),
    ) {
        (Err(msg), _) | (_, Err(msg)) => Reply::Now(message(out, Status::BadRequest, msg)),
        (Ok(by), Ok(None)) => Reply::Later(Pending::Named(app.named.increment(name, by))),
        (Ok(by), Ok(Some(key))) => Reply::Later(Pending::NamedKeyed(
            app.named.increment_keyed(name, by, key),
        )),
    }
}

/// `DELETE`: 401 without the admin token; 200 with the counter's last count, 404 if none.
fn delete(app: &App, name: &str, request: &Request<'_>, out: &mut Vec<u8>) -> Reply {
    let authorized = app
        .instance
        .admin_token
        .as_ref()
        .is_some_and(|token| token.accepts(request.authorization));
    if !authorized {
        return Reply::Now(message(
            out,
            Status::Unauthorized,
            "a valid admin token is required",
        ));
    }
    Reply::Later(Pending::Delete(app.named.delete(name)))
}
