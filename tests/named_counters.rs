//! Named counters end to end (`/api/v1/counters/{name}`, the contract in issue 20): the real
//! binary against a real, private PostgreSQL cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::TestPg as TestCluster;
use common::server::{read_response, read_response_to, wait_for, Response, TestServer};

/// The body of the 400 for a name outside the contract.
const NAME_ERROR: &str = "counter names are 1 to 200 characters from A-Z a-z 0-9 - . _ ~";

/// The body of the 507 past `--max-counters limit`.
fn limit_error(limit: u64) -> String {
    format!(
        "the counter limit ({limit}) is reached: existing counters keep counting; \
         delete counters or raise --max-counters"
    )
}

fn tally(cluster: &TestCluster, extra: &[&str]) -> TestServer {
    tally_with_env(cluster, extra, &[])
}

fn tally_with_env(cluster: &TestCluster, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
    let mut args = vec!["--database-url", cluster.url()];
    args.extend_from_slice(extra);
    let server = TestServer::start_with_env(&args, env);
    server.wait_ready();
    server
}

fn path(name: &str) -> String {
    format!("/api/v1/counters/{name}")
}

/// A request with `method` on `target` (sent as given), an optional body and extra header lines
/// (each ending in CRLF).
fn raw(method: &str, target: &[u8], headers: &str, body: &str) -> Vec<u8> {
    let mut out = format!("{method} ").into_bytes();
    out.extend_from_slice(target);
    out.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    out
}

/// POST /api/v1/counters/{name} with `{"by": by}` (or no body for by = 1) and an optional key.
fn post_request(name: &str, by: i64, key: Option<&str>) -> Vec<u8> {
    let body = if by == 1 {
        String::new()
    } else {
        format!(r#"{{"by":{by}}}"#)
    };
    let headers = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    raw("POST", path(name).as_bytes(), &headers, &body)
}

/// DELETE /api/v1/counters/{name} with an optional `Authorization` value.
fn delete_request(name: &str, authorization: Option<&str>) -> Vec<u8> {
    let headers = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    raw("DELETE", path(name).as_bytes(), &headers, "")
}

/// The count of a 200 `{"count":N}`, panicking with `what` and the answer otherwise.
fn count_of(r: &Response, what: &str) -> i64 {
    assert_eq!(r.status, 200, "{what}: expected 200, got {}", r.text());
    r.json()["count"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: no integer count in {}", r.text()))
}

/// GET /api/v1/counters/{name}.
fn get_named(server: &TestServer, name: &str) -> i64 {
    count_of(&server.get(&path(name)), &format!("GET {name}"))
}

/// One POST (fresh connection), its count.
fn post_named(server: &TestServer, name: &str, by: i64) -> i64 {
    count_of(
        &server.request(&post_request(name, by, None)),
        &format!("POST {name} by {by}"),
    )
}

/// The count of a keyed 200 and whether it was marked replayed.
fn keyed(server: &TestServer, name: &str, key: &str, by: i64) -> (i64, bool) {
    let r = server.request(&post_request(name, by, Some(key)));
    let count = count_of(&r, &format!("POST {name} key {key} by {by}"));
    (count, r.header("Idempotency-Replayed") == Some("true"))
}

/// The error text of an error body. The contract writes `{"error": ...}`; every other tally
/// error body is `{"message": ...}`: either key is taken, exactly one must be there.
fn error_text(r: &Response) -> String {
    let body = r.json();
    let error = body.get("error").and_then(|v| v.as_str());
    let message = body.get("message").and_then(|v| v.as_str());
    match (error, message) {
        (Some(text), None) | (None, Some(text)) => text.to_owned(),
        _ => panic!(
            "an error body has one \"error\" or \"message\" string: {}",
            r.text()
        ),
    }
}

/// `tally_counters` as PostgreSQL has it (empty if the table does not exist yet).
fn rows(cluster: &TestCluster) -> BTreeMap<String, i64> {
    cluster.with_client(|client| async move {
        let exists = client
            .query_one("SELECT to_regclass('tally_counters') IS NOT NULL", &[])
            .await
            .expect("to_regclass");
        if !exists.get::<_, bool>(0) {
            return BTreeMap::new();
        }
        client
            .query("SELECT name, count FROM tally_counters", &[])
            .await
            .expect("select tally_counters")
            .into_iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
            .collect()
    })
}

/// The single counter's row.
fn single_row(cluster: &TestCluster) -> i64 {
    cluster.with_client(|client| async move {
        client
            .query_one("SELECT count FROM tally_counter WHERE id = 1", &[])
            .await
            .expect("select tally_counter")
            .get::<_, i64>(0)
    })
}

/// One acknowledged increment: the name, its `by` and the count it answered.
#[derive(Clone, Debug)]
struct Ack {
    name: String,
    by: i64,
    value: i64,
}

/// Sends `plan` (name, by) on one keep-alive connection, `depth` requests at a time
/// (pipelined); returns the 200s and, as "name: status body", the first other answer (or
/// the lack of one), where it stops.
fn post_plan(addr: SocketAddr, plan: &[(String, i64)], depth: usize) -> (Vec<Ack>, Vec<String>) {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c.set_nodelay(true).expect("nodelay");
    let (mut acks, mut failures) = (Vec::new(), Vec::new());
    for chunk in plan.chunks(depth) {
        let mut bytes = Vec::new();
        for (name, by) in chunk {
            bytes.extend_from_slice(&post_request(name, *by, None));
        }
        c.write_all(&bytes).expect("write");
        for (name, by) in chunk {
            let r = match read_response(&mut c) {
                Ok(r) => r,
                Err(error) => {
                    failures.push(format!("{name}: no answer ({error})"));
                    return (acks, failures);
                }
            };
            if r.status != 200 {
                failures.push(format!("{name}: {} {}", r.status, r.text()));
                return (acks, failures);
            }
            let value = count_of(&r, name);
            acks.push(Ack {
                name: name.clone(),
                by: *by,
                value,
            });
        }
    }
    (acks, failures)
}

/// Checks that the acknowledged increments of each name are disjoint ranges `(v - by, v]`
/// covering exactly `1..=total`; returns each name's total.
fn check_ranges(acks: &[Ack]) -> BTreeMap<String, i64> {
    let mut by_name: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for ack in acks {
        by_name
            .entry(ack.name.clone())
            .or_default()
            .push((ack.value - ack.by, ack.value));
    }
    let mut totals = BTreeMap::new();
    for (name, mut ranges) in by_name {
        ranges.sort_unstable();
        let mut next = 0;
        for &(low, high) in &ranges {
            assert_eq!(
                low, next,
                "{name}: the range ({low}, {high}] does not follow {next}: a value was handed \
                 out twice or skipped"
            );
            next = high;
        }
        totals.insert(name, next);
    }
    totals
}

#[test]
fn a_named_counter_starts_at_zero_counts_by_its_amount_and_is_independent() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);

    let r = server.get(&path("alpha"));
    assert_eq!(
        r.status,
        200,
        "GET of a never incremented name: {}",
        r.text()
    );
    assert_eq!(
        r.json(),
        serde_json::json!({"count": 0}),
        "a never incremented name reads {{\"count\":0}}"
    );
    assert_eq!(post_named(&server, "alpha", 1), 1, "the first POST");
    assert_eq!(
        post_named(&server, "alpha", 5),
        6,
        "POST {{\"by\":5}} after 1"
    );
    assert_eq!(get_named(&server, "alpha"), 6, "GET after 1 + 5");
    assert_eq!(
        get_named(&server, "alpha?by=100&x=1"),
        6,
        "the query string is ignored"
    );

    // HEAD: a 200 without a body; the GET after it on the same connection proves no body bytes
    // were sent.
    let mut c = server.connect();
    c.write_all(
        format!(
            "HEAD {} HTTP/1.1\r\nHost: t\r\n\r\nGET {} HTTP/1.1\r\nHost: t\r\n\r\n",
            path("alpha"),
            path("alpha")
        )
        .as_bytes(),
    )
    .expect("write");
    let head = read_response_to(&mut c, true).expect("HEAD response");
    assert_eq!(head.status, 200, "HEAD of a named counter");
    let get = read_response(&mut c).expect("the GET after a HEAD");
    assert_eq!(
        count_of(&get, "GET after HEAD on one connection"),
        6,
        "the HEAD sent a body, or the GET after it was misread"
    );

    // Another name counts on its own.
    assert_eq!(
        post_named(&server, "beta", 1),
        1,
        "a second name starts at 1"
    );
    assert_eq!(
        get_named(&server, "alpha"),
        6,
        "a POST on beta changed alpha"
    );
    assert_eq!(get_named(&server, "beta"), 1, "beta after one POST");

    // The single counter and the named ones do not see each other, not even a name "counter".
    let single = server.get("/api/v1/counter");
    assert_eq!(
        count_of(&single, "GET /api/v1/counter"),
        0,
        "named POSTs moved the single counter"
    );
    assert_eq!(
        post_named(&server, "counter", 3),
        3,
        "a counter named \"counter\""
    );
    assert_eq!(
        count_of(&server.get("/api/v1/counter"), "GET /api/v1/counter"),
        0,
        "a POST on the name \"counter\" moved the single counter"
    );
    let r = server.post("/api/v1/counter", r#"{"by": 2}"#);
    assert_eq!(
        count_of(&r, "POST /api/v1/counter"),
        2,
        "the single counter"
    );
    assert_eq!(
        get_named(&server, "counter"),
        3,
        "a POST on /api/v1/counter moved the counter named \"counter\""
    );
    assert_eq!(
        get_named(&server, "alpha"),
        6,
        "a POST on /api/v1/counter moved alpha"
    );

    let expected: BTreeMap<String, i64> = [("alpha", 6), ("beta", 1), ("counter", 3)]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
    assert_eq!(
        rows(&cluster),
        expected,
        "tally_counters holds each name's count"
    );
    assert_eq!(
        single_row(&cluster),
        2,
        "tally_counter (id 1) holds the single counter"
    );
}

#[test]
fn names_outside_the_alphabet_or_length_are_400_and_create_nothing() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);

    let longest = "n".repeat(200);
    let too_long = "n".repeat(201);
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("201 bytes", too_long.as_bytes().to_vec()),
        ("%41 (not decoded)", b"%41".to_vec()),
        ("a%2Fb", b"a%2Fb".to_vec()),
        ("a/b", b"a/b".to_vec()),
        ("a/", b"a/".to_vec()),
        ("a+b", b"a+b".to_vec()),
        ("a:b", b"a:b".to_vec()),
        ("a@b", b"a@b".to_vec()),
        ("a!b", b"a!b".to_vec()),
        ("a*b", b"a*b".to_vec()),
        ("a,b", b"a,b".to_vec()),
        ("a;b", b"a;b".to_vec()),
        ("a=b", b"a=b".to_vec()),
        ("a'b", b"a'b".to_vec()),
        ("non-ASCII UTF-8", "caf\u{e9}".as_bytes().to_vec()),
    ];
    for (what, name) in &invalid {
        let target = [path("").as_bytes(), name].concat();
        for method in ["GET", "POST"] {
            let r = server.request(&raw(method, &target, "", ""));
            assert_eq!(
                r.status,
                400,
                "{method} with a name {what}: expected 400, got {}",
                r.text()
            );
            assert_eq!(
                error_text(&r),
                NAME_ERROR,
                "{method} with a name {what}: the contract's message"
            );
        }
    }
    // A byte that is not UTF-8 may be refused by the HTTP layer first: 400 either way.
    let r = server.request(&raw("POST", b"/api/v1/counters/a\xffb", "", ""));
    assert_eq!(
        r.status,
        400,
        "a name with the byte 0xff: expected 400, got {}",
        r.text()
    );

    // Not the named route at all.
    for target in [
        "/api/v1/counters",
        "/api/v1/countersx",
        "/api/v1/countersx/a",
    ] {
        for method in ["GET", "POST"] {
            let r = server.request(&raw(method, target.as_bytes(), "", ""));
            assert_eq!(
                r.status,
                404,
                "{method} {target}: expected 404, got {}",
                r.text()
            );
        }
    }

    // The edges that are names.
    let every = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let valid = [longest.as_str(), every, "-", "_", "~", "x.y", "A", "0"];
    for name in valid {
        assert_eq!(
            post_named(&server, name, 1),
            1,
            "POST on the valid name {name:?}"
        );
        assert_eq!(
            get_named(&server, name),
            1,
            "GET on the valid name {name:?}"
        );
    }

    // A wrong method on a valid name: 405 with Allow (no --admin-token: no DELETE).
    let r = server.request(&raw("PUT", path("alpha").as_bytes(), "", ""));
    assert_eq!(r.status, 405, "PUT on a named counter: {}", r.text());
    assert_eq!(
        r.header("Allow"),
        Some("GET, HEAD, POST"),
        "the Allow header of a 405 on a named counter without --admin-token"
    );

    // Bodies /api/v1/counter refuses are refused here too, and count nothing.
    for body in [
        r#"{"by":0}"#,
        r#"{"by":-1}"#,
        r#"{"by":"x"}"#,
        r#"{"by":"2"}"#,
        r#"{"by":1.5}"#,
        r#"{"by":2147483648}"#,
        "not json",
        "[1]",
    ] {
        let r = server.request(&raw("POST", path("badbody").as_bytes(), "", body));
        assert_eq!(
            r.status,
            400,
            "POST with the body {body}: expected 400, got {}",
            r.text()
        );
        assert!(
            !error_text(&r).is_empty(),
            "POST with the body {body}: an empty error message"
        );
    }
    assert_eq!(
        get_named(&server, "badbody"),
        0,
        "a refused body counted something"
    );
    assert_eq!(
        post_named(&server, "badbody", 2_147_483_647),
        2_147_483_647,
        "the largest by"
    );

    let in_db = rows(&cluster);
    let expected: BTreeSet<&str> = valid.iter().copied().chain(["badbody"]).collect();
    let got: BTreeSet<&str> = in_db.keys().map(String::as_str).collect();
    assert_eq!(
        got, expected,
        "tally_counters holds exactly the valid names counted (an invalid name made a row?)"
    );
}

#[test]
fn concurrent_increments_on_twenty_names_hand_out_each_value_exactly_once() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &["--cores", "2"]);
    const THREADS: usize = 8;
    const POSTS: usize = 200;
    const NAMES: usize = 20;
    // Names 0..10 only by 1 (their values must be exactly 1..=n); 10..20 with by 1..=5 too.
    let plans: Vec<Vec<(String, i64)>> = (0..THREADS)
        .map(|t| {
            (0..POSTS)
                .map(|i| {
                    let n = (t * 7 + i * 3 + i / NAMES) % NAMES;
                    let by = if n < 10 { 1 } else { 1 + ((t + i) % 5) as i64 };
                    (format!("load-{n}"), by)
                })
                .collect()
        })
        .collect();
    let addr = server.addr;
    let threads: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(t, plan)| std::thread::spawn(move || post_plan(addr, &plan, [1, 4][t % 2])))
        .collect();
    let mut acks = Vec::new();
    for t in threads {
        let (got, failures) = t.join().expect("client thread");
        assert!(failures.is_empty(), "answers other than 200: {failures:?}");
        acks.extend(got);
    }
    assert_eq!(acks.len(), THREADS * POSTS, "every POST answered");

    let totals = check_ranges(&acks);
    assert_eq!(totals.len(), NAMES, "every name was counted");
    for n in 0..10 {
        let name = format!("load-{n}");
        let values: BTreeSet<i64> = acks
            .iter()
            .filter(|a| a.name == name)
            .map(|a| a.value)
            .collect();
        let posts = acks.iter().filter(|a| a.name == name).count() as i64;
        assert_eq!(
            values,
            (1..=posts).collect::<BTreeSet<i64>>(),
            "{name}: the values of {posts} POSTs by 1 are not exactly 1..={posts}"
        );
    }
    for (name, total) in &totals {
        assert_eq!(
            get_named(&server, name),
            *total,
            "{name}: GET after the load"
        );
    }
    assert_eq!(
        rows(&cluster),
        totals,
        "tally_counters after the load differs from the acknowledged totals"
    );
}

#[test]
fn an_idempotency_key_is_scoped_to_its_name() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);
    assert_eq!(post_named(&server, "a", 1), 1, "a first POST on a");

    assert_eq!(
        keyed(&server, "a", "order-1", 2),
        (3, false),
        "a new key on a"
    );
    assert_eq!(
        keyed(&server, "a", "order-1", 2),
        (3, true),
        "the same key again on a: a replay of the first answer"
    );
    assert_eq!(get_named(&server, "a"), 3, "a replay counted something");

    assert_eq!(
        keyed(&server, "b", "order-1", 2),
        (2, false),
        "the key of a, used on b, counts on b"
    );
    assert_eq!(
        keyed(&server, "b", "order-1", 2),
        (2, true),
        "the same key again on b"
    );
    assert_eq!(
        keyed(&server, "a", "order-1", 2),
        (3, true),
        "a's key is still a replay after its use on b"
    );

    let mismatch = server.request(&post_request("a", 5, Some("order-1")));
    assert_eq!(
        mismatch.status,
        422,
        "the key of a reused with another by: {}",
        mismatch.text()
    );
    assert!(
        !error_text(&mismatch).is_empty(),
        "a 422 with an empty message"
    );

    // The single counter does not share keys with the named ones.
    let single = server.request(
        b"POST /api/v1/counter HTTP/1.1\r\nHost: t\r\nIdempotency-Key: order-1\r\n\
          Content-Length: 8\r\n\r\n{\"by\":2}",
    );
    assert_eq!(
        count_of(&single, "the named counters' key on /api/v1/counter"),
        2,
        "the single counter replayed or refused a key only used on named counters"
    );
    assert_ne!(
        single.header("Idempotency-Replayed"),
        Some("true"),
        "the single counter replayed a key only used on named counters"
    );

    let expected: BTreeMap<String, i64> = [("a".to_owned(), 3), ("b".to_owned(), 2)].into();
    assert_eq!(rows(&cluster), expected, "each key counted once per name");
}

#[test]
fn past_max_counters_a_new_name_is_507_and_existing_names_keep_counting() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &["--cores", "2", "--max-counters", "3"]);
    for name in ["c1", "c2", "c3"] {
        assert_eq!(
            post_named(&server, name, 1),
            1,
            "creating {name} under --max-counters 3"
        );
    }
    for attempt in 0..2 {
        let r = server.request(&post_request("c4", 1, None));
        assert_eq!(
            r.status,
            507,
            "a 4th name under --max-counters 3 (attempt {attempt}): {}",
            r.text()
        );
        assert_eq!(error_text(&r), limit_error(3), "the message of the 507");
    }
    assert_eq!(
        post_named(&server, "c1", 1),
        2,
        "an existing name at the limit"
    );
    assert_eq!(
        post_named(&server, "c3", 4),
        5,
        "an existing name at the limit, by 4"
    );
    let r = server.get(&path("c4"));
    assert_eq!(
        r.status,
        200,
        "GET of a name refused at the limit: {}",
        r.text()
    );
    assert_eq!(
        r.json(),
        serde_json::json!({"count": 0}),
        "GET of a name refused at the limit"
    );
    let expected: BTreeMap<String, i64> = [("c1", 2), ("c2", 1), ("c3", 5)]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
    assert_eq!(
        rows(&cluster),
        expected,
        "tally_counters at the limit (a refused name made a row?)"
    );
}

#[test]
fn delete_is_405_without_an_admin_token_and_resets_a_counter_with_it() {
    let cluster = TestCluster::start();
    {
        let server = tally(&cluster, &[]);
        assert_eq!(post_named(&server, "a", 1), 1, "a first POST on a");
        let r = server.request(&delete_request("a", Some("Bearer s3cret")));
        assert_eq!(
            r.status,
            405,
            "DELETE without --admin-token configured: {}",
            r.text()
        );
        assert_eq!(
            r.header("Allow"),
            Some("GET, HEAD, POST"),
            "the Allow header of DELETE without --admin-token"
        );
        assert_eq!(get_named(&server, "a"), 1, "a refused DELETE changed a");
    }

    let server = tally(&cluster, &["--admin-token", "s3cret"]);
    assert_eq!(post_named(&server, "a", 4), 5, "a POST on a by 4");
    for (what, auth) in [
        ("no Authorization", None),
        ("a wrong token", Some("Bearer nope")),
        ("the token without Bearer", Some("s3cret")),
        ("a longer token", Some("Bearer s3cret2")),
    ] {
        let r = server.request(&delete_request("a", auth));
        assert_eq!(r.status, 401, "DELETE with {what}: {}", r.text());
    }
    assert_eq!(
        get_named(&server, "a"),
        5,
        "an unauthorized DELETE changed a"
    );

    let r = server.request(&delete_request("a", Some("Bearer s3cret")));
    assert_eq!(r.status, 200, "DELETE with the token: {}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"count": 5}),
        "DELETE answers the last count"
    );
    assert_eq!(get_named(&server, "a"), 0, "a deleted counter reads 0");
    assert_eq!(
        post_named(&server, "a", 1),
        1,
        "a deleted counter counts again from 1"
    );
    assert_eq!(
        rows(&cluster).get("a").copied(),
        Some(1),
        "the row of a after delete and one POST"
    );

    let r = server.request(&delete_request("never", Some("Bearer s3cret")));
    assert_eq!(
        r.status,
        404,
        "DELETE of a name never counted: {}",
        r.text()
    );
    let r = server.request(&delete_request("a%2Fb", Some("Bearer s3cret")));
    assert_eq!(r.status, 400, "DELETE of an invalid name: {}", r.text());
    assert_eq!(error_text(&r), NAME_ERROR, "DELETE of an invalid name");
    drop(server);

    // A delete frees a place under the limit (TALLY_MAX_COUNTERS, the flag's variable). The
    // limit is checked against a count refreshed from PostgreSQL: the freed place may take a
    // refresh to show, but must show.
    let cluster = TestCluster::start();
    let server = tally_with_env(
        &cluster,
        &["--admin-token", "s3cret"],
        &[("TALLY_MAX_COUNTERS", "1")],
    );
    assert_eq!(post_named(&server, "a", 1), 1, "the one counter allowed");
    let r = server.request(&post_request("b", 1, None));
    assert_eq!(
        r.status,
        507,
        "a second name under TALLY_MAX_COUNTERS=1: {}",
        r.text()
    );
    assert_eq!(error_text(&r), limit_error(1), "the message of the 507");
    let r = server.request(&delete_request("a", Some("Bearer s3cret")));
    assert_eq!(
        r.json(),
        serde_json::json!({"count": 1}),
        "DELETE of a at the limit: status {}",
        r.status
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = server.request(&post_request("b", 1, None));
        if r.status == 200 {
            assert_eq!(count_of(&r, "b after a's delete"), 1, "b's first POST");
            break;
        }
        assert_eq!(
            r.status,
            507,
            "b after a's delete: only 507 while the count catches up: {}",
            r.text()
        );
        assert!(
            Instant::now() < deadline,
            "a deleted counter never freed its place under the limit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = server.request(&post_request("a", 1, None));
    assert_eq!(
        r.status,
        507,
        "a again, with b holding the one place: {}",
        r.text()
    );
    let expected: BTreeMap<String, i64> = [("b".to_owned(), 1)].into();
    assert_eq!(rows(&cluster), expected, "tally_counters after the swap");
}

#[test]
fn named_counts_and_keys_survive_a_restart() {
    let cluster = TestCluster::start();
    let mut first = tally(&cluster, &["--cores", "2"]);
    for _ in 0..3 {
        post_named(&first, "x", 1);
    }
    assert_eq!(post_named(&first, "y", 10), 10, "y by 10");
    assert_eq!(
        keyed(&first, "z", "k-1", 2),
        (2, false),
        "a keyed POST on z"
    );
    let status = first.terminate(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exit status:\n{}",
        first.log_text()
    );

    let second = tally(&cluster, &["--cores", "2"]);
    assert_eq!(get_named(&second, "x"), 3, "x after a restart");
    assert_eq!(get_named(&second, "y"), 10, "y after a restart");
    assert_eq!(get_named(&second, "z"), 2, "z after a restart");
    assert_eq!(
        post_named(&second, "x", 1),
        4,
        "x continues after a restart"
    );
    assert_eq!(
        post_named(&second, "y", 1),
        11,
        "y continues after a restart"
    );
    assert_eq!(
        keyed(&second, "z", "k-1", 2),
        (2, true),
        "z's key is replayed after a restart"
    );
    let expected: BTreeMap<String, i64> = [("x", 4), ("y", 11), ("z", 2)]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
    assert_eq!(rows(&cluster), expected, "tally_counters after a restart");
}

/// Keeps `clients` connections POSTing by 1 to `names` in turn until `stop`; records the 200s
/// and, as "name: status body", the first other answer of each client (which stops there).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<Finished>>,
}

/// What a client of a [`Load`] saw: its 200s, and the name of each POST sent (or being sent)
/// when its connection failed, unanswered: the server may or may not have counted it.
struct Finished {
    acks: Vec<Ack>,
    unanswered: Vec<String>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, names: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let names: Arc<Vec<String>> = Arc::new(names.iter().map(|n| n.to_string()).collect());
        let threads = (0..clients)
            .map(|client| {
                let (stop, acked, failures, names) =
                    (stop.clone(), acked.clone(), failures.clone(), names.clone());
                std::thread::spawn(move || {
                    let (mut acks, mut unanswered) = (Vec::new(), Vec::new());
                    let mut i = client;
                    while !stop.load(Ordering::Relaxed) {
                        // Refused once the server stopped listening: that client is done.
                        let Ok(mut c) = TcpStream::connect(addr) else {
                            break;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
                        while !stop.load(Ordering::Relaxed) {
                            let name = &names[i % names.len()];
                            i += 1;
                            if c.write_all(&post_request(name, 1, None)).is_err() {
                                unanswered.push(name.clone());
                                break;
                            }
                            match read_response(&mut c) {
                                Ok(r) if r.status == 200 => {
                                    acks.push(Ack {
                                        name: name.clone(),
                                        by: 1,
                                        value: count_of(&r, name),
                                    });
                                    acked.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(r) => {
                                    let failure = format!("{name}: {} {}", r.status, r.text());
                                    failures.lock().expect("lock").push(failure);
                                    return Finished { acks, unanswered };
                                }
                                // Closed by the server (shutting down): a new connection.
                                Err(_) => {
                                    unanswered.push(name.clone());
                                    break;
                                }
                            }
                        }
                    }
                    Finished { acks, unanswered }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            failures,
            threads,
        }
    }

    /// Panics with the first answers other than 200 so far, if any.
    fn assert_no_failure(&self, when: &str) {
        let failures = self.failures.lock().expect("lock").clone();
        assert!(
            failures.is_empty(),
            "answers other than 200 {when}: {failures:?}"
        );
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the clients: their 200s, the names of their unanswered POSTs, the other answers.
    fn finish(mut self) -> (Vec<Ack>, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acks, mut unanswered) = (Vec::new(), Vec::new());
        for t in std::mem::take(&mut self.threads) {
            let finished = t.join().expect("client thread");
            acks.extend(finished.acks);
            unanswered.extend(finished.unanswered);
        }
        let failures = self.failures.lock().expect("lock").clone();
        (acks, unanswered, failures)
    }
}

/// Stops the clients of a test that failed before [`Load::finish`].
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn sigterm_under_load_on_several_names_loses_no_acknowledged_increment() {
    let cluster = TestCluster::start();
    let mut server = tally(&cluster, &["--cores", "2", "--shutdown-grace-secs", "10"]);
    let names = ["drain-a", "drain-b", "drain-c", "drain-d", "drain-e"];
    let load = Load::start(server.addr, 8, &names);
    wait_for(
        "300 acknowledged POSTs before SIGTERM",
        Duration::from_secs(20),
        || {
            load.assert_no_failure("before SIGTERM");
            load.acked() > 300
        },
    );
    let status = server.terminate(Duration::from_secs(20));
    let (acks, unanswered, failures) = load.finish();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exit status:\n{}",
        server.log_text()
    );
    assert!(
        failures.is_empty(),
        "answers other than 200 during a clean shutdown: {failures:?}"
    );

    let in_db = rows(&cluster);
    let mut acknowledged: BTreeMap<&str, usize> = BTreeMap::new();
    for ack in &acks {
        *acknowledged.entry(ack.name.as_str()).or_default() += 1;
    }
    for name in names {
        let values: Vec<i64> = acks
            .iter()
            .filter(|a| a.name == name)
            .map(|a| a.value)
            .collect();
        let distinct: BTreeSet<i64> = values.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            values.len(),
            "{name}: a value was handed out twice"
        );
        let n = acknowledged.get(name).copied().unwrap_or(0) as i64;
        let cut = unanswered.iter().filter(|u| *u == name).count() as i64;
        let row = in_db.get(name).copied().unwrap_or(0);
        assert!(
            row >= n,
            "{name}: the row holds {row}, below the {n} acknowledged increments"
        );
        assert!(
            row <= n + cut,
            "{name}: the row holds {row}, more than the {n} acknowledged increments and the \
             {cut} POSTs cut off unanswered"
        );
        assert!(
            distinct.last().copied().unwrap_or(0) <= row,
            "{name}: a value acknowledged above the row's {row}"
        );
        eprintln!("{name}: {n} acknowledged, {cut} unanswered, row {row}");
    }
}

#[test]
fn two_instances_on_shared_names_never_hand_out_a_value_twice() {
    let cluster = TestCluster::start();
    let one = tally(&cluster, &["--cores", "2"]);
    let two = tally(&cluster, &["--cores", "2"]);
    const NAMES: usize = 10;
    let mut threads = Vec::new();
    for (s, addr) in [one.addr, two.addr].into_iter().enumerate() {
        for t in 0..4 {
            let plan: Vec<(String, i64)> = (0..150)
                .map(|i| (format!("shared-{}", (s * 3 + t * 5 + i) % NAMES), 1))
                .collect();
            threads.push(std::thread::spawn(move || {
                post_plan(addr, &plan, [1, 4][t % 2])
            }));
        }
    }
    let mut acks = Vec::new();
    for t in threads {
        let (got, failures) = t.join().expect("client thread");
        assert!(
            failures.is_empty(),
            "answers other than 200 with two instances: {failures:?}"
        );
        acks.extend(got);
    }
    assert_eq!(acks.len(), 2 * 4 * 150, "every POST answered");
    let totals = check_ranges(&acks);
    let in_db = rows(&cluster);
    for n in 0..NAMES {
        let name = format!("shared-{n}");
        let acked = acks.iter().filter(|a| a.name == name).count() as i64;
        assert_eq!(
            totals.get(&name).copied(),
            Some(acked),
            "{name}: the values"
        );
        assert_eq!(
            in_db.get(&name).copied(),
            Some(acked),
            "{name}: the row against the {acked} acknowledged increments"
        );
    }
    // Either instance reads the shared count (at once or after its refresh).
    for (which, server) in [("one", &one), ("two", &two)] {
        for (name, total) in &totals {
            wait_for(
                &format!("instance {which} to read {name} = {total}"),
                Duration::from_secs(10),
                || get_named(server, name) == *total,
            );
        }
    }
    for (which, server) in [("one", &one), ("two", &two)] {
        let log = server.log_text();
        assert!(
            !log.to_ascii_lowercase().contains("deadlock"),
            "instance {which} logged a deadlock:\n{log}"
        );
    }
}

#[test]
fn metrics_have_named_families_without_per_name_labels() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &["--max-counters", "2"]);
    let names = ["zebra-metric-probe", "quokka.metric_probe~"];
    for name in names {
        post_named(&server, name, 1);
        get_named(&server, name);
    }
    let refused = "okapi-metric-probe";
    assert_eq!(
        server.request(&post_request(refused, 1, None)).status,
        507,
        "a third name under --max-counters 2"
    );
    let r = server.get("/metrics");
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    let metrics = r.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tally_named_") && !l.starts_with('#')),
        "no tally_named_ sample in /metrics:\n{metrics}"
    );
    for name in names.iter().chain([&refused]) {
        let leaked: Vec<&str> = metrics.lines().filter(|l| l.contains(name)).collect();
        assert!(
            leaked.is_empty(),
            "/metrics names the counter {name:?} (per-name labels): {leaked:?}"
        );
    }
}

/// The checker the load tests rely on: it accepts disjoint covering ranges and refuses a
/// duplicate, a gap and an overlap.
#[test]
fn check_ranges_refuses_duplicates_gaps_and_overlaps() {
    let ack = |name: &str, by: i64, value: i64| Ack {
        name: name.to_owned(),
        by,
        value,
    };
    let good = [
        ack("a", 1, 2),
        ack("a", 3, 5),
        ack("a", 1, 1),
        ack("b", 4, 4),
    ];
    let totals = check_ranges(&good);
    assert_eq!(
        totals,
        [("a".to_owned(), 5), ("b".to_owned(), 4)].into(),
        "the totals of covering ranges"
    );
    for (what, bad) in [
        ("a duplicate", vec![ack("a", 1, 1), ack("a", 1, 1)]),
        ("a gap", vec![ack("a", 1, 1), ack("a", 1, 3)]),
        ("an overlap", vec![ack("a", 2, 2), ack("a", 2, 3)]),
        ("a range not from 1", vec![ack("a", 1, 2)]),
    ] {
        let refused = std::panic::catch_unwind(|| check_ranges(&bad)).is_err();
        assert!(refused, "check_ranges accepted {what}");
    }
}

/// Keys of named counters are stored as digests in `tally_keys` and swept once expired: with a
/// one-second retention, the table empties, and the same key then counts again.
#[test]
fn expired_keys_of_named_counters_are_swept_and_count_again() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &["--idempotency-retention-secs", "1"]);
    assert_eq!(keyed(&server, "swept", "k", 1), (1, false), "a new key");
    assert_eq!(keyed(&server, "swept", "k", 1), (1, true), "its replay");
    let stored = || {
        cluster.with_client(|client| async move {
            client
                .query_one("SELECT count(*) FROM tally_keys", &[])
                .await
                .expect("count tally_keys")
                .get::<_, i64>(0)
        })
    };
    assert_eq!(stored(), 1, "one digest stored for the key");
    wait_for(
        "the expired key to be swept",
        Duration::from_secs(20),
        || stored() == 0,
    );
    assert_eq!(
        keyed(&server, "swept", "k", 1),
        (2, false),
        "an expired key counts again"
    );
}
