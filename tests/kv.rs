//! Key/value lookups end to end: the real binary, a dataset file written by the test.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use common::server::{read_response, TestServer, NO_DATABASE};

const KEY: &str = "8a35eb59-62b3-481c-8875-1f248df4c952";
const AWKWARD_KEY: &str = "1c8b4f1e-7f5e-4c3a-9d2b-0a1b2c3d4e5f";

fn dataset_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-kv-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A dataset with the seed README's key and a value that needs every kind of escaping.
fn write_dataset(name: &str) -> PathBuf {
    let path = dataset_dir().join(name);
    let data = serde_json::json!({
        KEY: "lunmtp ftxemjfob pmo hwoya",
        AWKWARD_KEY: "quote \" backslash \\ newline \n control \u{1} emoji \u{1F600} ünïcödé",
    });
    std::fs::write(&path, serde_json::to_vec(&data).expect("json")).expect("write dataset");
    path
}

fn server(dataset: &std::path::Path) -> TestServer {
    TestServer::start(&[
        "--database-url",
        NO_DATABASE,
        "--kv-data",
        dataset.to_str().expect("utf-8 path"),
    ])
}

#[test]
fn the_seed_readme_curl_request_gets_the_value() {
    let s = server(&write_dataset("seed.json"));
    // curl http://localhost:8080/get_value -d '{"key":"8a35eb59-..."}' -X POST -H 'Content-Type: application/json'
    let r = s.request(
        format!(
            "POST /get_value HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: 46\r\n\r\n{{\"key\":\"{KEY}\"}}"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"value": "lunmtp ftxemjfob pmo hwoya"})
    );
}

#[test]
fn the_seed_readme_python_requests_shape_gets_the_value() {
    let s = server(&write_dataset("python.json"));
    // requests.post(url, json={"key": ...}): a space after the colon, keep-alive, gzip accepted.
    let body = format!("{{\"key\": \"{KEY}\"}}");
    let r = s.request(
        format!(
            "POST /get_value HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], "lunmtp ftxemjfob pmo hwoya");
}

#[test]
fn values_come_back_as_correctly_escaped_json() {
    let s = server(&write_dataset("awkward.json"));
    let r = s.post("/get_value", &format!("{{\"key\":\"{AWKWARD_KEY}\"}}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["value"],
        "quote \" backslash \\ newline \n control \u{1} emoji \u{1F600} ünïcödé"
    );
}

#[test]
fn every_lookup_status_is_as_the_contract_says() {
    let s = server(&write_dataset("statuses.json"));
    let upper = KEY.to_uppercase();
    let cases: &[(&str, u16)] = &[
        (&format!("{{\"key\":\"{upper}\"}}"), 200),
        (
            &format!("{{\"extra\":[1,2],\"key\":\"{KEY}\",\"more\":null}}"),
            200,
        ),
        (r#"{"key":"6b557cb0-b031-4682-bfe9-4da422e35329"}"#, 404),
        (r#"{"key":"not-a-uuid"}"#, 422),
        (r#"{"key":"8a35eb59-62b3-181c-8875-1f248df4c952"}"#, 422),
        (r#"{"key":"8a35eb59-62b3-481c-c875-1f248df4c952"}"#, 422),
        (r#"{"key":"8a35eb5962b3481c88751f248df4c952"}"#, 422),
        (r#"{"key": 42}"#, 400),
        (r#"{"nokey":"x"}"#, 400),
        (r#"["key"]"#, 400),
        ("not json", 400),
        ("", 400),
    ];
    for (body, status) in cases {
        let r = s.post("/get_value", body);
        assert_eq!(r.status, *status, "body {body:?}: {}", r.text());
        if *status != 200 {
            assert!(r.json()["message"].is_string(), "{}", r.text());
        }
    }
    let mut invalid_utf8 =
        b"POST /get_value HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n{\"key\":\"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
    assert_eq!(s.request(&invalid_utf8).status, 400);
    let r = s.get("/get_value");
    assert_eq!(r.status, 405);
}

#[test]
fn pipelined_lookups_are_answered_in_order() {
    let s = server(&write_dataset("pipelined.json"));
    let mut c = s.connect();
    let mut batch = Vec::new();
    for key in [
        KEY,
        "nope",
        AWKWARD_KEY,
        "6b557cb0-b031-4682-bfe9-4da422e35329",
    ] {
        let body = format!("{{\"key\":\"{key}\"}}");
        batch.extend_from_slice(
            format!(
                "POST /get_value HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    c.write_all(&batch).expect("write");
    let statuses: Vec<u16> = (0..4)
        .map(|_| read_response(&mut c).expect("response").status)
        .collect();
    assert_eq!(statuses, [200, 422, 200, 404]);
}

#[test]
fn the_built_in_sample_is_served_and_its_keys_are_printable() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("sample")
        .output()
        .expect("tally sample");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 10_000);
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("json line");
    let s = TestServer::start(&["--database-url", NO_DATABASE]);
    let r = s.post(
        "/get_value",
        &format!("{{\"key\":\"{}\"}}", first["key"].as_str().expect("key")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], first["value"]);
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("tally_kv_replica_pairs{core=\"0\"} 10000"),
        "{metrics}"
    );
}

#[test]
fn a_generated_dataset_file_loads_in_every_format() {
    for ext in ["json", "jsonl", "csv"] {
        let path = dataset_dir().join(format!("generated.{ext}"));
        let status = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["sample", "--pairs", "500", "--seed", "7"])
            .arg(&path)
            .status()
            .expect("tally sample");
        assert!(status.success());
        let s = server(&path);
        let metrics = s.get("/metrics").text();
        assert!(
            metrics.contains("tally_kv_replica_pairs{core=\"0\"} 500"),
            "{ext}: {metrics}"
        );
    }
}

#[test]
fn a_bad_dataset_stops_start_up_with_file_position_and_reason() {
    let dir = dataset_dir();
    let cases = [
        (
            "dup.jsonl",
            format!(
                "{{\"key\":\"{KEY}\",\"value\":\"a\"}}\n{{\"key\":\"{KEY}\",\"value\":\"b\"}}\n"
            ),
            "line 2",
            "duplicate",
        ),
        (
            "v1.csv",
            "key,value\n8a35eb59-62b3-181c-8875-1f248df4c952,x\n".to_string(),
            "line 2",
            "UUID",
        ),
        ("num.json", format!("{{\"{KEY}\": 5}}"), "byte", "string"),
        ("broken.json", format!("{{\"{KEY}\": \"x\""), "byte", ""),
    ];
    for (name, content, position, reason) in cases {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                NO_DATABASE,
                "--kv-data",
            ])
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name}: {err}");
        assert!(err.contains(position), "{name}: no position in {err}");
        assert!(err.contains(reason), "{name}: no reason in {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            NO_DATABASE,
            "--kv-data",
            "/nonexistent/data.json",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/data.json"));
}
