//! `/api/v1/system/health`, `/api/v1/system/ready` and `/metrics`.

use crate::http::response::CONTENT_TYPE_METRICS;
use crate::http::Status;
use crate::kv;

use super::app::App;
use super::response::Response;

/// Always 200 while the process serves.
pub fn health(out: &mut Vec<u8>) -> Response {
    out.extend_from_slice(br#"{"healthy":true}"#);
    Response::json(Status::Ok)
}

/// 200 once every core serves its key/value replica and the counter's store is reachable;
/// 503 with the reason before.
pub fn ready(app: &App, out: &mut Vec<u8>) -> Response {
    match app.instance.not_ready_reason() {
        None => {
            out.extend_from_slice(br#"{"ready":true}"#);
            Response::json(Status::Ok)
        }
        Some(msg) => {
            out.extend_from_slice(br#"{"ready":false,"message":"#);
            kv::write_json_string(out, &msg);
            out.push(b'}');
            Response::json(Status::ServiceUnavailable)
        }
    }
}

/// Prometheus text: every core's metrics and the instance's.
pub fn metrics(app: &App, out: &mut Vec<u8>) -> Response {
    let mut text = String::with_capacity(16 * 1024);
    app.instance.render_metrics(&mut text);
    out.extend_from_slice(text.as_bytes());
    Response {
        content_type: CONTENT_TYPE_METRICS,
        ..Response::json(Status::Ok)
    }
}
