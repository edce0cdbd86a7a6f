//! The durable counter end to end: the real binary against a real, private PostgreSQL cluster.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cut_proxy::{Cut, CutProxy};
use common::pg::TestPg as TestCluster;
use common::server::{read_response, wait_for, TestServer};

const POST: &[u8] = b"POST /api/v1/counter HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";

fn tally(cluster: &TestCluster, extra: &[&str]) -> TestServer {
    let mut args = vec!["--database-url", cluster.url()];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args);
    server.wait_ready();
    server
}

fn count(server: &TestServer) -> i64 {
    let r = server.get("/api/v1/counter");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["count"].as_i64().expect("count")
}

/// The row as PostgreSQL has it.
fn row(cluster: &TestCluster) -> i64 {
    cluster.with_client(|client| async move {
        let row = client
            .query_one("SELECT count FROM tally_counter WHERE id = 1", &[])
            .await
            .expect("select");
        row.get::<_, i64>(0)
    })
}

/// Runs `statement` against the cluster behind tally's back.
fn execute(cluster: &TestCluster, statement: &str) {
    cluster.with_client(|client| async move {
        client.batch_execute(statement).await.expect(statement);
    })
}

/// Sends `requests` POSTs on one keep-alive connection, `depth` at a time (pipelined), and
/// returns the value of every 200 and the number of other statuses.
fn post_many(
    server_addr: std::net::SocketAddr,
    requests: usize,
    depth: usize,
) -> (Vec<i64>, usize) {
    let mut c = TcpStream::connect(server_addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut values = Vec::with_capacity(requests);
    let mut failed = 0;
    let mut sent = 0;
    while sent < requests {
        let n = depth.min(requests - sent);
        c.write_all(&POST.repeat(n)).expect("write");
        for _ in 0..n {
            let r = read_response(&mut c).expect("response");
            if r.status == 200 {
                values.push(r.json()["count"].as_i64().expect("count"));
            } else {
                failed += 1;
            }
        }
        sent += n;
    }
    (values, failed)
}

#[test]
fn concurrent_increments_get_exactly_the_next_n_values() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);
    let start = count(&server);
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || post_many(addr, 300, if i % 2 == 0 { 1 } else { 8 })))
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let (values, failed) = t.join().expect("client");
        assert_eq!(failed, 0);
        all.extend(values);
    }
    let n = all.len() as i64;
    assert_eq!(n, 2400);
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len() as i64, n, "a value was handed out twice");
    assert_eq!(distinct.first().copied(), Some(start + 1));
    assert_eq!(distinct.last().copied(), Some(start + n));
    assert_eq!(count(&server), start + n);
    assert_eq!(row(&cluster), start + n);
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("tally_counter_batch_size_count"),
        "{metrics}"
    );
}

#[test]
fn by_adds_its_amount_and_returns_the_value_after_it() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);
    let start = count(&server);
    let r = server.post("/api/v1/counter", r#"{"by": 5}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"].as_i64(), Some(start + 5));
    let r = server.post("/api/v1/counter", r#"{"by": 2147483647}"#);
    assert_eq!(r.json()["count"].as_i64(), Some(start + 5 + 2_147_483_647));
    assert_eq!(row(&cluster), start + 5 + 2_147_483_647);
}

#[test]
fn invalid_by_is_400_and_changes_nothing() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);
    let start = count(&server);
    for body in [
        r#"{"by": 0}"#,
        r#"{"by": -3}"#,
        r#"{"by": 2147483648}"#,
        r#"{"by": "2"}"#,
        r#"{"by": 1.5}"#,
        "not json",
        "[1]",
    ] {
        let r = server.post("/api/v1/counter", body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.json()["message"].is_string());
    }
    assert_eq!(count(&server), start);
    assert_eq!(row(&cluster), start);
}

#[test]
fn two_instances_on_one_database_never_hand_out_a_value_twice() {
    let cluster = TestCluster::start();
    let a = tally(&cluster, &[]);
    let b = tally(&cluster, &[]);
    let start = row(&cluster);
    let mut threads = Vec::new();
    for addr in [a.addr, b.addr, a.addr, b.addr] {
        threads.push(std::thread::spawn(move || post_many(addr, 400, 4)));
    }
    let mut all = Vec::new();
    for t in threads {
        let (values, failed) = t.join().expect("client");
        assert_eq!(failed, 0);
        all.extend(values);
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "a value was handed out twice");
    assert_eq!(row(&cluster), start + all.len() as i64);
    assert_eq!(distinct.last().copied(), Some(start + all.len() as i64));
    // Both converge on the shared row (GET refreshes from the database).
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(count(&a), start + all.len() as i64);
    assert_eq!(count(&b), start + all.len() as i64);
}

/// Keeps `clients` connections POSTing until `stop`; records 200 values and other statuses.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    acked: Arc<Mutex<Vec<i64>>>,
    failed: Arc<Mutex<usize>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = TcpStream::connect(addr) else {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
                        while !stop.load(Ordering::Relaxed) {
                            if c.write_all(POST).is_err() {
                                break;
                            }
                            match read_response(&mut c) {
                                Ok(r) if r.status == 200 => {
                                    let v = r.json()["count"].as_i64().expect("count");
                                    acked.lock().expect("lock").push(v);
                                }
                                Ok(r) => {
                                    assert_eq!(r.status, 503, "{}", r.text());
                                    *failed.lock().expect("lock") += 1;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            acked,
            failed,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    fn finish(self) -> (Vec<i64>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client");
        }
        let acked = self.acked.lock().expect("lock").clone();
        let failed = *self.failed.lock().expect("lock");
        (acked, failed)
    }
}

#[test]
fn a_postgres_restart_under_load_gives_503s_never_a_false_200_and_recovers() {
    let mut cluster = TestCluster::start();
    let server = tally(&cluster, &["--commit-timeout-ms", "2000"]);
    let start = row(&cluster);
    let load = Load::start(server.addr, 8);
    wait_for("load", Duration::from_secs(10), || load.acked() > 200);
    cluster.restart();
    let before = load.acked();
    wait_for("recovery", Duration::from_secs(30), || {
        load.acked() > before + 500
    });
    let (acked, failed) = load.finish();
    let final_row = row(&cluster);
    let distinct: BTreeSet<i64> = acked.iter().copied().collect();
    assert_eq!(distinct.len(), acked.len(), "a value was handed out twice");
    // Every acknowledged value is in the database: none is above the final row, and there
    // are at least as many increments in the row as acknowledgements.
    assert!(distinct.last().copied().unwrap_or(start) <= final_row);
    assert!(final_row - start >= acked.len() as i64);
    eprintln!(
        "acked {}, 503s {failed}, row grew by {}",
        acked.len(),
        final_row - start
    );
    // Ready again once every store has reconnected: the named counters' stores, idle here,
    // find PostgreSQL back at their next attempt (back-off at most 5 s).
    wait_for("ready again", Duration::from_secs(15), || {
        server.get("/api/v1/system/ready").status == 200
    });
}

#[test]
fn after_sigkill_the_row_holds_every_acknowledged_increment() {
    let cluster = TestCluster::start();
    let mut server = tally(&cluster, &[]);
    let load = Load::start(server.addr, 8);
    wait_for("load", Duration::from_secs(10), || load.acked() > 500);
    server.kill();
    let (acked, _) = load.finish();
    let highest = acked.iter().copied().max().expect("some acks");
    let restarted = tally(&cluster, &[]);
    assert!(row(&cluster) >= highest);
    assert!(count(&restarted) >= highest);
}

#[test]
fn sigterm_under_load_answers_what_it_received_and_exits_zero() {
    let cluster = TestCluster::start();
    let mut server = tally(&cluster, &["--shutdown-grace-secs", "10"]);
    let start = row(&cluster);
    let load = Load::start(server.addr, 8);
    wait_for("load", Duration::from_secs(10), || load.acked() > 500);
    let status = server.terminate(Duration::from_secs(20));
    let (acked, failed) = load.finish();
    assert_eq!(status.code(), Some(0), "{}", server.log_text());
    assert_eq!(failed, 0, "a request got 503 during a clean shutdown");
    let final_row = row(&cluster);
    let distinct: BTreeSet<i64> = acked.iter().copied().collect();
    assert_eq!(distinct.len(), acked.len());
    // Every increment the server received was committed and answered: the acknowledged
    // values are exactly start+1 ..= start+k with no gap, and the row is at start+k.
    assert_eq!(
        final_row,
        start + acked.len() as i64,
        "{}",
        server.log_text()
    );
    assert_eq!(distinct.last().copied(), Some(final_row));
}

#[test]
fn a_row_lowered_outside_tally_gives_503_and_not_ready_until_the_operator_raises_it() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);
    let mut highest = 0;
    for _ in 0..3 {
        let r = server.post("/api/v1/counter", "");
        assert_eq!(r.status, 200);
        highest = r.json()["count"].as_i64().expect("count");
    }

    // A restored backup, say.
    execute(&cluster, "UPDATE tally_counter SET count = 0");
    let r = server.post("/api/v1/counter", "");
    assert_eq!(r.status, 503, "a value already handed out: {}", r.text());
    let ready = server.get("/api/v1/system/ready");
    assert_eq!(ready.status, 503);
    let message = ready.json()["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(
        message.contains("lowered") && message.contains(&highest.to_string()),
        "{message}"
    );
    assert!(server.log_text().contains("went backwards"));
    assert_eq!(server.post("/api/v1/counter", "").status, 503);

    // docs/operations.md, "When the counter row goes backwards": raise the row to at least the highest value returned.
    execute(
        &cluster,
        &format!("UPDATE tally_counter SET count = GREATEST(count, {highest})"),
    );
    wait_for("ready again", Duration::from_secs(5), || {
        server.get("/api/v1/system/ready").status == 200
    });
    let r = server.post("/api/v1/counter", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"].as_i64(), Some(highest + 1));
}

#[test]
fn get_before_any_store_contact_is_503_and_post_is_503_when_the_store_is_down() {
    let mut cluster = TestCluster::start();
    let server = tally(&cluster, &["--commit-timeout-ms", "1000"]);
    cluster.stop();
    wait_for("ready to turn 503", Duration::from_secs(10), || {
        server.get("/api/v1/system/ready").status == 503
    });
    let r = server.post("/api/v1/counter", "");
    assert_eq!(r.status, 503);
    assert!(r.json()["message"].is_string());
}

#[test]
fn the_embedded_postgres_default_keeps_the_count_across_restarts() {
    let mut first = TestServer::start(&[]);
    first.wait_ready();
    let r = first.post("/api/v1/counter", r#"{"by": 7}"#);
    assert_eq!(r.status, 200, "{}", first.log_text());
    let value = r.json()["count"].as_i64().expect("count");
    let data_dir = first.data_dir.clone();
    assert_eq!(
        first.terminate(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        first.log_text()
    );
    let second = TestServer::start_in(data_dir, &[], &[]);
    second.wait_ready();
    assert_eq!(count(&second), value);
}

/// A POST /api/v1/counter with `Idempotency-Key: key` (sent as given) and `{"by": by}`.
fn keyed_post(key: &str, by: i64) -> Vec<u8> {
    let body = format!(r#"{{"by":{by}}}"#);
    format!(
        "POST /api/v1/counter HTTP/1.1\r\nHost: t\r\nIdempotency-Key: {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The count of a 200, and whether it was marked replayed.
fn counted(r: &common::server::Response) -> (i64, bool) {
    assert_eq!(r.status, 200, "{}", r.text());
    let replayed = r.header("Idempotency-Replayed") == Some("true");
    (r.json()["count"].as_i64().expect("count"), replayed)
}

#[test]
fn an_idempotency_key_counts_once_and_is_replayed_across_a_tally_restart() {
    let cluster = TestCluster::start();
    let mut server = tally(&cluster, &[]);
    assert_eq!(server.request(POST).status, 200);

    let first = counted(&server.request(&keyed_post("order-1", 2)));
    assert_eq!(first, (3, false));
    assert_eq!(
        counted(&server.request(&keyed_post("order-1", 2))),
        (3, true)
    );
    assert_eq!(count(&server), 3, "a replay counts nothing");

    // Same key, another body: 422 and nothing counted.
    let mismatch = server.request(&keyed_post("order-1", 5));
    assert_eq!(mismatch.status, 422, "{}", mismatch.text());
    assert!(mismatch.json()["message"].is_string());
    assert_eq!(row(&cluster), 3);

    server.terminate(Duration::from_secs(10));
    let server = tally(&cluster, &[]);
    assert_eq!(
        counted(&server.request(&keyed_post("order-1", 2))),
        (3, true)
    );
    assert_eq!(
        counted(&server.request(&keyed_post("order-2", 1))),
        (4, false)
    );
    assert_eq!(row(&cluster), 4);
}

#[test]
fn a_malformed_or_repeated_idempotency_key_is_400_and_counts_nothing() {
    let cluster = TestCluster::start();
    let server = tally(&cluster, &[]);
    let too_long = "k".repeat(256);
    let longest = "k".repeat(255);
    for key in ["a b", "caf\u{e9}", too_long.as_str()] {
        let r = server.request(&keyed_post(key, 1));
        assert_eq!(r.status, 400, "{key:?}: {}", r.text());
        assert!(r.json()["message"].is_string());
    }
    let empty = server.request(
        b"POST /api/v1/counter HTTP/1.1\r\nHost: t\r\nIdempotency-Key:\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(empty.status, 400, "{}", empty.text());
    let twice = server.request(
        b"POST /api/v1/counter HTTP/1.1\r\nHost: t\r\nIdempotency-Key: a\r\n\
          Idempotency-Key: a\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(twice.status, 400, "{}", twice.text());
    assert_eq!(row(&cluster), 0);
    assert_eq!(
        counted(&server.request(&keyed_post(&longest, 1))),
        (1, false)
    );
    assert_eq!(
        counted(&server.request(&keyed_post("\"quoted\"", 1))),
        (2, false)
    );
}

#[test]
fn two_instances_given_one_key_at_once_count_it_once_and_answer_the_same_count() {
    let cluster = TestCluster::start();
    let one = tally(&cluster, &[]);
    let two = tally(&cluster, &[]);
    for round in 0..10 {
        let key = format!("both-{round}");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| counted(&one.request(&keyed_post(&key, 1))));
            let b = s.spawn(|| counted(&two.request(&keyed_post(&key, 1))));
            (a.join().expect("one"), b.join().expect("two"))
        });
        assert_eq!(a.0, b.0, "round {round}: both answer the same count");
        assert!(
            a.1 != b.1,
            "round {round}: exactly one is a replay: {a:?} {b:?}"
        );
        assert_eq!(row(&cluster), round + 1);
    }
}

/// Clients sending their own keys one after another, each key repeated until it gets a 200,
/// to whatever address `addr` holds (it changes when tally is restarted).
struct KeyedLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    clients: Vec<std::thread::JoinHandle<ClientResult>>,
}

/// Each key a client got a 200 for, with its count, and how many answers it retried.
type ClientResult = (Vec<(String, i64)>, usize);

impl KeyedLoad {
    fn start(addr: Arc<Mutex<std::net::SocketAddr>>, clients: usize) -> KeyedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|client| {
                let (stop, answered, addr) = (stop.clone(), answered.clone(), addr.clone());
                std::thread::spawn(move || {
                    let mut got: Vec<(String, i64)> = Vec::new();
                    let mut non_200 = 0;
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let key = format!("c{client}-{n}");
                        loop {
                            let to = *addr.lock().expect("address");
                            let answer = TcpStream::connect(to).ok().and_then(|mut c| {
                                c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
                                c.write_all(&keyed_post(&key, 1)).ok()?;
                                read_response(&mut c).ok()
                            });
                            match answer {
                                Some(r) if r.status == 200 => {
                                    got.push((key, counted(&r).0));
                                    answered.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Some(r) => {
                                    assert_eq!(r.status, 503, "{}", r.text());
                                    non_200 += 1;
                                }
                                None => non_200 += 1,
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    (got, non_200)
                })
            })
            .collect();
        KeyedLoad {
            stop,
            answered,
            clients,
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    fn wait_for_more(&self, what: &str, more: usize) {
        let before = self.answered();
        wait_for(what, Duration::from_secs(30), || {
            self.answered() > before + more
        });
    }

    /// Stops the clients (each finishes its current key) and checks exactly-once against the
    /// row: every key got one value, the values are exactly 1..=row. Returns the retries.
    fn finish_and_check(self, cluster: &TestCluster) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut values = BTreeSet::new();
        let (mut keys, mut retries) = (0, 0);
        for client in self.clients {
            let (got, non_200) = client.join().expect("client");
            retries += non_200;
            for (key, value) in got {
                keys += 1;
                assert!(
                    values.insert(value),
                    "{key} got {value}, a value given before"
                );
            }
        }
        let final_row = row(cluster);
        eprintln!("{keys} keys, {retries} retried answers, row {final_row}");
        assert_eq!(final_row, keys as i64, "every key counted exactly once");
        assert_eq!(values, (1..=final_row).collect::<BTreeSet<i64>>());
        retries
    }
}

#[test]
fn a_postgres_restart_under_keyed_load_with_retries_counts_each_key_exactly_once() {
    let mut cluster = TestCluster::start();
    let server = tally(&cluster, &["--commit-timeout-ms", "2000"]);
    let load = KeyedLoad::start(Arc::new(Mutex::new(server.addr)), 8);
    load.wait_for_more("load", 200);
    // A quick restart (settled: no 503 expected), then an outage longer than the commit
    // timeout (503s, retried with the same keys).
    cluster.restart();
    load.wait_for_more("recovery", 300);
    cluster.stop();
    std::thread::sleep(Duration::from_secs(3));
    cluster.start_again();
    load.wait_for_more("recovery after the outage", 300);
    let retries = load.finish_and_check(&cluster);
    assert!(retries > 0, "the outage went unnoticed");
}

#[test]
fn tally_killed_under_keyed_load_and_restarted_counts_each_retried_key_exactly_once() {
    let cluster = TestCluster::start();
    let mut server = tally(&cluster, &[]);
    let addr = Arc::new(Mutex::new(server.addr));
    let load = KeyedLoad::start(addr.clone(), 8);
    load.wait_for_more("load", 300);
    server.kill();
    let restarted = tally(&cluster, &[]);
    *addr.lock().expect("address") = restarted.addr;
    load.wait_for_more("load on the restarted tally", 300);
    let retries = load.finish_and_check(&cluster);
    assert!(retries > 0, "the kill went unnoticed");
}

#[test]
fn a_keyed_commit_cut_mid_flight_is_settled_and_answered_once() {
    let cluster = TestCluster::start();
    let proxy = CutProxy::start(&cluster);
    let server = tally(&cluster, &[]);
    // A second tally reaching PostgreSQL through the proxy that loses the commit's reply.
    let cut = {
        let server = TestServer::start(&["--database-url", &proxy.url]);
        server.wait_ready();
        server
    };
    assert_eq!(
        counted(&server.request(&keyed_post("before00", 1))),
        (1, false)
    );

    for (n, how) in [Cut::DropReply, Cut::CloseAfterStatement, Cut::DropStatement]
        .into_iter()
        .enumerate()
    {
        let key = format!("cutkey0{n}");
        // The key travels as its digest (tally::counter::key_digest): mark its first 8 bytes.
        let digest = tally::counter::key_digest("", &key);
        let marker: [u8; 8] = digest.as_bytes()[..8].try_into().expect("8 bytes");
        proxy.arm_at(how, marker);
        let first = counted(&cut.request(&keyed_post(&key, 1)));
        let expected = n as i64 + 2;
        assert_eq!(
            first,
            (expected, false),
            "{how:?}: settled and answered 200"
        );
        assert_eq!(row(&cluster), expected, "{how:?}: counted once");
        // The other instance replays it: the key was recorded with the commit.
        assert_eq!(
            counted(&server.request(&keyed_post(&key, 1))),
            (expected, true)
        );
    }
    let metrics = cut.get("/metrics").text();
    assert!(
        metrics.contains("tally_counter_store_settled_total 3"),
        "every cut commit was settled:\n{metrics}"
    );
}
