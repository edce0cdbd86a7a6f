//! The HTTP API: method + path to endpoint, and each endpoint's HTTP shape both ways (the
//! request JSON it reads, the response JSON it writes). One file per group of endpoints:
//!
//! - [`counter`]: `/api/v1/counter` (GET, POST with `{"by": n}` and `Idempotency-Key`), its
//!   deferred answer in [`pending`];
//! - [`kv`] answers `/get_value`, over the pure body-to-outcome step in `lookup`;
//! - [`system`]: health, readiness, metrics;
//! - [`admin`]: `/admin/kv/reload`, behind `--admin-token`.
//!
//! Beside them: `routes` (the route table), `reply` and `response` (what an endpoint is given
//! and answers), [`app`] (one core's state, [`App`], and what every core shares,
//! [`Instance`]). [`dispatch`] (this file) picks the endpoint.
//!
//! Endpoints see only the core's [`App`] and make plain domain calls on it (`kv` and `counter`
//! know nothing of bodies). Each writes its body into a buffer and returns the [`Response`]
//! that goes with it; the connection adds what depends on the connection (`Connection`,
//! `Date`, HEAD). An increment cannot be answered yet: it returns a [`pending::Pending`] the
//! connection awaits, which then writes its response the same way.

pub mod admin;
pub mod app;
pub mod counter;
pub mod counters;
pub mod kv;
#[cfg(test)]
mod kv_bench;
mod lookup;
pub mod pending;
mod reply;
mod response;
mod routes;
pub mod system;

pub use app::{AdminToken, App, Instance};
pub use counter::MAX_IDEMPOTENCY_KEY_BYTES;
pub use pending::REPLAYED_HEADER;
pub use reply::{KeyField, Reply, Request};
pub use response::{message, method_not_allowed, Response};
pub use routes::Route;

use crate::http::{Method, Status};

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
        // Checks its method itself: DELETE exists only with --admin-token.
        Route::Counters => return counters::serve(app, request, out),
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
