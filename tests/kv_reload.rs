//! Key/value reloads end to end: the real binary, dataset files the test writes and replaces,
//! so it knows which values the old and the new dataset give every key.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::{read_response, TestServer, NO_DATABASE};

/// A UUID v4 made from `i` (version nibble 4, variant bits 10).
fn key(i: u32) -> String {
    format!("{i:08x}-0000-4000-8000-{:012x}", u64::from(i) * 7919)
}

/// `n` pairs, key `i` -> `"{tag}-{i}"`, as JSON Lines.
fn dataset(n: u32, tag: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"key\":\"{}\",\"value\":\"{tag}-{i}\"}}\n", key(i)))
        .collect()
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-reload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Writes `content` next to `path` and renames it over `path`: the way to replace a file that
/// a reader never sees half-written.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn server(path: &Path, extra: &[&str]) -> TestServer {
    server_with_env(path, extra, &[])
}

fn server_with_env(path: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
    let mut args = vec![
        "--database-url",
        NO_DATABASE,
        "--kv-data",
        path.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    TestServer::start_with_env(&args, env)
}

fn value_of(s: &TestServer, k: &str) -> (u16, Option<String>) {
    let r = s.post("/get_value", &format!("{{\"key\":\"{k}\"}}"));
    let value = (r.status == 200).then(|| r.json()["value"].as_str().expect("a string").into());
    (r.status, value)
}

fn metric(s: &TestServer, name: &str) -> Option<f64> {
    let text = s.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `name` reaches `at_least`.
fn wait_metric(s: &TestServer, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if metric(s, name).is_some_and(|v| v >= at_least) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{name} never reached {at_least}:\n{}\n{}",
        s.get("/metrics").text(),
        s.log_text()
    );
}

fn wait_log(s: &TestServer, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let log = s.log_text();
        if log.contains(needle) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the log never said {needle:?}:\n{}", s.log_text());
}

#[test]
fn sighup_reloads_the_file_on_every_core() {
    let dir = test_dir("sighup");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(100, "old"));
    let s = server(&path, &[]);
    assert_eq!(value_of(&s, &key(7)).1.as_deref(), Some("old-7"));
    assert_eq!(metric(&s, "tally_kv_generation"), Some(1.0));
    let loaded_at = metric(&s, "tally_kv_last_load_timestamp_seconds").expect("load time");
    assert!(loaded_at > 1.7e9, "{loaded_at}");

    replace(&path, &dataset(150, "new"));
    s.signal(libc::SIGHUP);
    wait_metric(&s, "tally_kv_generation", 2.0);
    // Every core swapped before the generation counts: every connection sees the new data.
    for _ in 0..20 {
        assert_eq!(value_of(&s, &key(7)).1.as_deref(), Some("new-7"));
        assert_eq!(value_of(&s, &key(120)).1.as_deref(), Some("new-120"));
    }
    let metrics = s.get("/metrics").text();
    assert!(metrics.contains("tally_kv_pairs 150\n"), "{metrics}");
    assert!(
        metrics.contains("tally_kv_replica_pairs{core=\"0\"} 150"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tally_kv_reload_failures_total 0\n"),
        "{metrics}"
    );
    assert!(metric(&s, "tally_kv_last_load_duration_seconds").is_some());
}

#[test]
fn a_broken_file_keeps_the_old_data_and_reports_where_it_is_broken() {
    let dir = test_dir("broken");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(50, "old"));
    let s = server(&path, &[]);
    let mut broken = dataset(10, "new");
    broken.push_str("{\"key\":\"not-a-uuid\",\"value\":\"x\"}\n");
    replace(&path, &broken);
    s.signal(libc::SIGHUP);
    wait_metric(&s, "tally_kv_reload_failures_total", 1.0);
    let log = wait_log(&s, "reload (SIGHUP) failed");
    assert!(log.contains("data.jsonl: line 11"), "{log}");
    let metrics = s.get("/metrics").text();
    assert!(metrics.contains("tally_kv_generation 1\n"), "{metrics}");
    assert!(
        metrics.contains("tally_kv_last_reload_error_info{reason=\"")
            && metrics.contains("line 11"),
        "{metrics}"
    );
    assert_eq!(value_of(&s, &key(3)).1.as_deref(), Some("old-3"));
    assert_eq!(value_of(&s, &key(49)).1.as_deref(), Some("old-49"));
}

#[test]
fn a_reload_over_the_memory_limit_is_refused_and_the_old_data_serves() {
    let dir = test_dir("limit");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(50, "old"));
    let s = server(&path, &["--kv-reload-max-bytes", "100000"]);
    replace(&path, &dataset(5_000, "new"));
    s.signal(libc::SIGHUP);
    wait_metric(&s, "tally_kv_reload_failures_total", 1.0);
    let log = wait_log(&s, "--kv-reload-max-bytes 100000");
    assert!(log.contains("refused"), "{log}");
    assert_eq!(value_of(&s, &key(3)).1.as_deref(), Some("old-3"));
    assert_eq!(value_of(&s, &key(4_000)).0, 404);
}

#[test]
fn without_a_file_a_reload_says_there_is_nothing_to_reload() {
    let s = TestServer::start(&["--database-url", NO_DATABASE]);
    s.signal(libc::SIGHUP);
    wait_log(&s, "nothing to reload");
    assert_eq!(s.get("/api/v1/system/health").status, 200);
}

#[test]
fn lookups_under_load_see_the_old_or_the_new_value_never_an_error() {
    let dir = test_dir("load");
    let path = dir.join("data.jsonl");
    let n = 20_000;
    replace(&path, &dataset(n, "old"));
    let s = Arc::new(server(&path, &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || lookup_loop(&s, &stop, t, n))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for generation in 2..=4 {
        let tag = if generation % 2 == 0 { "new" } else { "old" };
        replace(&path, &dataset(n, tag));
        s.signal(libc::SIGHUP);
        wait_metric(&s, "tally_kv_generation", f64::from(generation));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut slowest = Duration::ZERO;
    for client in clients {
        let (lookups, slowest_lookup) = client.join().expect("no bad answer");
        total += lookups;
        slowest = slowest.max(slowest_lookup);
    }
    assert!(total > 100, "only {total} lookups");
    // No pause: a debug build on a shared machine, so only a stall of a second would show.
    assert!(
        slowest < Duration::from_secs(1),
        "a lookup took {slowest:?}"
    );
}

/// Looks keys up on one keep-alive connection until `stop`; every known key must answer 200
/// with its old or new value, every unknown key 404. Returns the number of lookups and the
/// slowest one.
fn lookup_loop(s: &TestServer, stop: &AtomicBool, thread: u32, n: u32) -> (usize, Duration) {
    let mut c = s.connect();
    let mut done = 0;
    let mut slowest = Duration::ZERO;
    let mut i = thread * 7_777;
    while !stop.load(Ordering::SeqCst) {
        i = (i + 7_919) % (2 * n);
        let k = key(i);
        let body = format!("{{\"key\":\"{k}\"}}");
        let req = format!(
            "POST /get_value HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent = Instant::now();
        c.write_all(req.as_bytes()).expect("write");
        let r = read_response(&mut c).expect("a response");
        slowest = slowest.max(sent.elapsed());
        if i < n {
            assert_eq!(r.status, 200, "key {i}: {}", r.text());
            let value = r.json()["value"].as_str().expect("string").to_owned();
            assert!(
                value == format!("old-{i}") || value == format!("new-{i}"),
                "key {i}: {value}"
            );
        } else {
            assert_eq!(r.status, 404, "key {i} is in neither dataset: {}", r.text());
        }
        done += 1;
    }
    (done, slowest)
}

#[test]
fn a_reload_during_the_shutdown_drain_does_not_delay_the_exit() {
    let dir = test_dir("drain");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(100, "old"));
    let mut s = server(&path, &["--shutdown-grace-secs", "2"]);
    // A big file, so the reload is still parsing or building while the cores drain.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["sample", "--pairs", "1000000", "--seed", "3"])
        .arg(&path)
        .status()
        .expect("tally sample");
    assert!(status.success());
    // A request in progress keeps the drain going for the grace period.
    let mut slow = s.connect();
    slow.write_all(b"POST /get_value HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{")
        .expect("write");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    s.signal(libc::SIGHUP);
    let exit = s.wait_exit(Duration::from_secs(20));
    let log = s.log_text();
    assert!(exit.success(), "{exit}:\n{log}");
    assert!(log.contains("reload (SIGHUP): loading"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "exit took {:?}:\n{log}",
        started.elapsed()
    );
}

#[test]
fn with_kv_watch_a_file_renamed_over_the_dataset_is_loaded() {
    let dir = test_dir("watch-rename");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(100, "old"));
    let s = server(&path, &["--kv-watch"]);
    // Another file in the directory is not the dataset.
    replace(&dir.join("other.jsonl"), "garbage");
    replace(&path, &dataset(100, "new"));
    wait_metric(&s, "tally_kv_generation", 2.0);
    assert_eq!(value_of(&s, &key(42)).1.as_deref(), Some("new-42"));
    let log = s.log_text();
    assert!(log.contains("reload (the file changed)"), "{log}");
    assert!(!log.contains("other.jsonl"), "{log}");
    assert_eq!(metric(&s, "tally_kv_reload_failures_total"), Some(0.0));
}

/// How the kubelet updates a mounted ConfigMap: the dataset's path is a symlink through
/// `..data`, itself a symlink to a timestamped directory; an update writes a new directory and
/// renames a new `..data` over the old one. No event names the dataset's own file.
#[test]
fn with_kv_watch_a_configmap_style_symlink_swap_is_loaded() {
    use std::os::unix::fs::symlink;
    let dir = test_dir("watch-configmap");
    let version = |n: u32, prefix: &str| {
        let versioned = dir.join(format!("..2026_12_06_v{n}"));
        std::fs::create_dir_all(&versioned).expect("versioned directory");
        replace(&versioned.join("data.jsonl"), &dataset(100, prefix));
        versioned
    };
    let v1 = version(1, "old");
    symlink(v1.file_name().expect("a name"), dir.join("..data")).expect("..data");
    let path = dir.join("data.jsonl");
    symlink("..data/data.jsonl", &path).expect("data.jsonl -> ..data/data.jsonl");
    let s = server(&path, &["--kv-watch"]);
    assert_eq!(value_of(&s, &key(42)).1.as_deref(), Some("old-42"));

    let v2 = version(2, "new");
    symlink(v2.file_name().expect("a name"), dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    wait_metric(&s, "tally_kv_generation", 2.0);
    assert_eq!(value_of(&s, &key(42)).1.as_deref(), Some("new-42"));
    assert_eq!(metric(&s, "tally_kv_reload_failures_total"), Some(0.0));
}

#[test]
fn with_kv_watch_a_file_written_in_pieces_is_loaded_once_whole() {
    let dir = test_dir("watch-pieces");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(100, "old"));
    let s = server_with_env(&path, &[], &[("TALLY_KV_WATCH", "true")]);
    let content = dataset(300, "new");
    let mut file = std::fs::File::create(&path).expect("truncate");
    for piece in content.as_bytes().chunks(content.len() / 5 + 1) {
        file.write_all(piece).expect("write");
        file.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(30));
    }
    drop(file);
    wait_metric(&s, "tally_kv_generation", 2.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&s, "tally_kv_generation"), Some(2.0), "one reload");
    assert_eq!(metric(&s, "tally_kv_reload_failures_total"), Some(0.0));
    assert_eq!(value_of(&s, &key(250)).1.as_deref(), Some("new-250"));
}

fn admin_reload(s: &TestServer, authorization: Option<&str>) -> common::server::Response {
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    s.request(
        format!("POST /admin/kv/reload HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn the_admin_endpoint_reloads_only_with_the_token() {
    let dir = test_dir("admin");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(100, "old"));
    let s = server_with_env(&path, &[], &[("TALLY_ADMIN_TOKEN", "correct horse")]);
    replace(&path, &dataset(100, "new"));
    for wrong in [
        None,
        Some("Bearer correct hors"),
        Some("Bearer correct horsE"),
        Some("Basic correct horse"),
    ] {
        let r = admin_reload(&s, wrong);
        assert_eq!(r.status, 401, "{wrong:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // Two Authorization fields are no credentials.
    let r = s.request(
        b"POST /admin/kv/reload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer correct horse\r\nAuthorization: Bearer correct horse\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        s.request(b"GET /admin/kv/reload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer correct horse\r\n\r\n")
            .status,
        405
    );
    assert_eq!(value_of(&s, &key(1)).1.as_deref(), Some("old-1"));

    let r = admin_reload(&s, Some("Bearer correct horse"));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"reload": "started", "generation": 1, "failures": 0})
    );
    wait_metric(&s, "tally_kv_generation", 2.0);
    assert_eq!(value_of(&s, &key(1)).1.as_deref(), Some("new-1"));
    assert!(s.log_text().contains("reload (POST /admin/kv/reload)"));
}

#[test]
fn without_an_admin_token_the_admin_endpoint_does_not_exist() {
    let dir = test_dir("no-admin");
    let path = dir.join("data.jsonl");
    replace(&path, &dataset(10, "old"));
    let s = server(&path, &[]);
    assert_eq!(admin_reload(&s, Some("Bearer anything")).status, 404);
    assert_eq!(s.get("/admin/kv/reload").status, 404);
}

#[test]
fn the_admin_endpoint_without_a_file_answers_conflict() {
    let s = TestServer::start_with_env(
        &["--database-url", NO_DATABASE],
        &[("TALLY_ADMIN_TOKEN", "t0ken")],
    );
    let r = admin_reload(&s, Some("Bearer t0ken"));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("nothing to reload")));
}
