//! Handlers called directly on an [`App`]: no listener, no executor, no binary. The store is
//! the real store thread pointed at a database that does not exist, so the counter is
//! "unavailable" exactly as it is when PostgreSQL is down.

use std::sync::Arc;

use super::counter::idempotency_key;
use super::pending::{committed, keyed_committed};
use super::*;
use crate::counter::store::{self, StoreConfig, StoreHandle};
use crate::counter::KeyOutcome;
use crate::counter::{self, CounterCore, CounterShared};
use crate::kv::{self, Replica};
use crate::metrics::CoreMetrics;

/// A connection string that never connects (a socket directory that does not exist).
const NO_DATABASE: &str = "host=/nonexistent-tally-unit-test port=1 user=tally connect_timeout=1";

struct Fixture {
    app: App,
    store: StoreHandle,
    /// A key of the sample dataset and its value.
    key: String,
    value: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.store.shutdown();
    }
}

fn fixture() -> Fixture {
    let dataset = kv::sample(100, 7);
    let (key, value) = dataset.iter().next().expect("a non-empty sample");
    let key = uuid::Uuid::from_u128(key).hyphenated().to_string();
    let value = value.to_owned();
    let store = store::spawn(StoreConfig::new(NO_DATABASE)).expect("the store thread starts");
    let counter = Arc::new(CounterShared::new(store.clone(), 0));
    let port = counter::wire(1).cores.pop().expect("one core's port");
    let (named, named_core) = counter::named::unowned_core(store.clone());
    let instance = Arc::new(Instance::new(
        vec![CoreMetrics::new(Route::METRIC_LABELS)],
        counter,
        named,
    ));
    let app = App::new(
        0,
        instance,
        Replica::build(&dataset),
        CounterCore::new(port, 0),
        None,
        (named_core, None),
    );
    Fixture {
        app,
        store,
        key,
        value,
    }
}

/// Calls the handler and returns its status, body and `Allow` header.
fn call(
    f: &Fixture,
    method: Method,
    path: &str,
    body: &str,
) -> (Status, String, Option<&'static str>) {
    let mut body = body.as_bytes().to_vec();
    let mut out = Vec::new();
    let request = Request::new(method, Route::from_path(path.as_bytes()), &mut body);
    match dispatch(&f.app, request, &mut out) {
        Reply::Now(Response { status, allow, .. }) => {
            (status, String::from_utf8(out).expect("UTF-8"), allow)
        }
        Reply::Later(_) => {
            panic!("{path} was answered with an increment ticket")
        }
    }
}

#[test]
fn every_route_has_its_own_metric_label_and_unmatched_requests_have_one_more() {
    assert_eq!(Route::METRIC_LABELS.len(), Route::ALL.len() + 1);
    for &route in Route::ALL {
        assert_eq!(
            Route::METRIC_LABELS[Route::metric_index(Some(route))],
            route.path()
        );
        assert_eq!(Route::from_path(route.path().as_bytes()), Some(route));
    }
    assert_eq!(
        Route::METRIC_LABELS[Route::metric_index(None)],
        Route::UNMATCHED_LABEL
    );
    let mut labels = Route::METRIC_LABELS.to_vec();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(
        labels.len(),
        Route::METRIC_LABELS.len(),
        "labels are distinct"
    );
}

#[test]
fn every_route_is_rendered_in_metrics_once_it_has_answered() {
    let f = fixture();
    for &route in Route::ALL {
        f.app.metrics().record_request(
            Route::metric_index(Some(route)),
            Status::Ok,
            std::time::Duration::from_micros(10),
        );
    }
    let (_, text, _) = call(&f, Method::Get, "/metrics", "");
    for &route in Route::ALL {
        let line = format!("route=\"{}\",status=\"200\",core=\"0\"}} 1", route.path());
        assert!(text.contains(&line), "{route:?} missing from /metrics");
    }
}

#[test]
fn health_is_always_200() {
    let f = fixture();
    assert_eq!(
        call(&f, Method::Get, "/api/v1/system/health", ""),
        (Status::Ok, r#"{"healthy":true}"#.into(), None)
    );
}

#[test]
fn ready_is_503_with_the_reason_while_the_store_is_unreachable() {
    let f = fixture();
    let (status, body, _) = call(&f, Method::Get, "/api/v1/system/ready", "");
    assert_eq!(status, Status::ServiceUnavailable);
    assert!(body.starts_with(r#"{"ready":false,"message":"#), "{body}");
    assert!(body.contains("PostgreSQL"), "{body}");
}

#[test]
fn a_known_key_is_found_and_its_value_returned_as_json() {
    let f = fixture();
    let (status, body, _) = call(
        &f,
        Method::Post,
        "/get_value",
        &format!(r#"{{"key":"{}"}}"#, f.key),
    );
    assert_eq!(status, Status::Ok);
    assert_eq!(body, format!(r#"{{"value":"{}"}}"#, f.value));
}

#[test]
fn lookups_answer_404_422_and_400_for_unknown_non_v4_and_malformed_keys() {
    let f = fixture();
    let unknown = r#"{"key":"6f1c1c9e-7a3b-4c2d-9e8f-0a1b2c3d4e5f"}"#;
    assert_eq!(
        call(&f, Method::Post, "/get_value", unknown).0,
        Status::NotFound
    );
    let v1 = r#"{"key":"6f1c1c9e-7a3b-1c2d-9e8f-0a1b2c3d4e5f"}"#;
    assert_eq!(
        call(&f, Method::Post, "/get_value", v1).0,
        Status::UnprocessableContent
    );
    for bad in ["", "not json", r#"{"key":7}"#, r#"{"nokey":"x"}"#] {
        let (status, body, _) = call(&f, Method::Post, "/get_value", bad);
        assert_eq!(status, Status::BadRequest, "{bad:?}");
        assert!(body.starts_with(r#"{"message":"#), "{body}");
    }
}

#[test]
fn the_count_is_503_before_any_value_is_known() {
    let f = fixture();
    let (status, body, _) = call(&f, Method::Get, "/api/v1/counter", "");
    assert_eq!(status, Status::ServiceUnavailable);
    assert!(body.contains("not known yet"), "{body}");
}

#[test]
fn a_valid_increment_waits_for_its_commit_and_a_bad_body_is_400() {
    let f = fixture();
    for body in ["", r#"{"by":5}"#] {
        let mut body = body.as_bytes().to_vec();
        let request = Request::new(Method::Post, Some(Route::Counter), &mut body);
        let reply = dispatch(&f.app, request, &mut Vec::new());
        assert!(matches!(reply, Reply::Later(_)));
    }
    assert_eq!(
        call(&f, Method::Post, "/api/v1/counter", r#"{"by":0}"#).0,
        Status::BadRequest
    );
}

#[test]
fn a_failed_commit_is_503_and_a_committed_one_gives_the_count() {
    let mut out = Vec::new();
    let response = committed(Err(counter::CommitError::Timeout), &mut out);
    assert_eq!(response.status, Status::ServiceUnavailable);
    out.clear();
    let response = committed(Ok(42), &mut out);
    assert_eq!(response, Response::json(Status::Ok));
    assert_eq!(out, br#"{"count":42}"#);
}

#[test]
fn a_method_a_route_does_not_allow_is_405_with_the_routes_allow_header() {
    let f = fixture();
    let cases = [
        (Method::Get, "/get_value", "POST"),
        (Method::Other, "/api/v1/counter", "GET, HEAD, POST"),
        (Method::Post, "/api/v1/system/health", "GET, HEAD"),
        (Method::Post, "/metrics", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let (status, _, got) = call(&f, method, path, "");
        assert_eq!(
            (status, got),
            (Status::MethodNotAllowed, Some(allow)),
            "{method:?} {path}"
        );
    }
}

#[test]
fn an_unknown_path_is_404_whatever_the_method() {
    let f = fixture();
    for method in [Method::Get, Method::Post, Method::Other] {
        assert_eq!(call(&f, method, "/nope", "").0, Status::NotFound);
    }
}

#[test]
fn an_idempotency_key_is_1_to_255_visible_ascii_and_one_field() {
    let longest = [b'k'; 255];
    for ok in [&b"a"[..], b"order-42", b"\"quoted\"", b"!~", &longest] {
        let key = idempotency_key(KeyField::One(ok));
        assert!(matches!(key, Ok(Some(_))), "{ok:?} was refused");
    }
    assert_eq!(idempotency_key(KeyField::Absent), Ok(None));
    for bad in [
        &b""[..],
        b"a b",
        b"tab\t",
        b"caf\xc3\xa9",
        b"nul\0",
        &[b'k'; 256],
    ] {
        assert!(
            idempotency_key(KeyField::One(bad)).is_err(),
            "{bad:?} accepted"
        );
    }
    assert!(idempotency_key(KeyField::Repeated).is_err());
}

#[test]
fn keyed_outcomes_map_to_200_a_marked_replay_and_422() {
    let mut out = Vec::new();
    let response = keyed_committed(Ok(KeyOutcome::Counted(7)), &mut out);
    assert_eq!(response, Response::json(Status::Ok));
    assert_eq!(out, br#"{"count":7}"#);
    out.clear();
    let response = keyed_committed(Ok(KeyOutcome::Replayed(7)), &mut out);
    assert_eq!(response.status, Status::Ok);
    assert_eq!(response.extra_header, Some(REPLAYED_HEADER));
    assert_eq!(out, br#"{"count":7}"#);
    out.clear();
    let response = keyed_committed(Ok(KeyOutcome::Mismatch), &mut out);
    assert_eq!(response.status, Status::UnprocessableContent);
}
