//! `/admin/*`: operations behind `--admin-token`. Without the token these routes do not exist
//! (404, whatever the method); with it, a request without the token is 401.

use crate::http::{Method, Status};
use crate::kv;

use super::app::App;
use super::reply::Request;
use super::response::{message, method_not_allowed, Response};
use super::routes::Route;

/// `POST /admin/kv/reload`: 202 once the reload is queued: the answer does not wait for a
/// parse that takes seconds on a large dataset. The body gives the generation and failure
/// count before it, so a client can poll `/metrics` for the outcome.
pub fn kv_reload(app: &App, request: &Request<'_>, out: &mut Vec<u8>) -> Response {
    let Some(token) = &app.instance.admin_token else {
        return message(out, Status::NotFound, "not found");
    };
    if !token.accepts(request.authorization) {
        return message(out, Status::Unauthorized, "a valid admin token is required");
    }
    if request.method != Method::Post {
        return method_not_allowed(out, Route::AdminKvReload);
    }
    let status = &app.instance.kv_status;
    let (generation, failures) = (status.generation(), status.failures());
    let requested = match &app.instance.kv_reload {
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
            Response::json(Status::Accepted)
        }
        kv::Requested::NothingToReload => message(
            out,
            Status::Conflict,
            "nothing to reload: tally serves the built-in sample (no --kv-data)",
        ),
        kv::Requested::Stopped => message(out, Status::ServiceUnavailable, "tally is stopping"),
    }
}
