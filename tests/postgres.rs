//! The embedded PostgreSQL cluster (`tally::postgres`), against the real server binaries:
//! first start, restarts keep data, stopping leaves no process, root runs it unprivileged,
//! and a killed tally takes its postgres down.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pg::TestPg;
use tally::postgres::{EmbeddedError, EmbeddedPostgres};

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Alive and not a zombie (PID 1 in a container may never reap the orphans it inherits).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Live processes whose parent is `pid` (a postmaster's backends and helpers).
fn live_children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .filter(|&child| process_alive(child))
        .collect()
}

fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/tally-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn stored_value(url: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .query_one("SELECT v FROM kept", &[])
        .await
        .expect("select")
        .get(0)
}

#[tokio::test]
async fn fresh_directory_is_initialised_and_accepts_connections() {
    let pg = TestPg::start();
    assert!(pg.data_dir().join("PG_VERSION").exists());
    let client = pg.client().await;
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('fsync'), \
             current_setting('synchronous_commit'), current_setting('listen_addresses'), \
             current_setting('server_encoding')",
            &[],
        )
        .await
        .expect("settings");
    assert_eq!(row.get::<_, String>(0), "tally");
    assert_eq!(row.get::<_, String>(1), "on", "fsync must stay on");
    assert_eq!(
        row.get::<_, String>(2),
        "on",
        "synchronous_commit must stay on"
    );
    assert_eq!(row.get::<_, String>(3), "", "Unix socket only");
    assert_eq!(row.get::<_, String>(4), "UTF8");
    assert!(pg.url().contains("user=tally"), "{}", pg.url());
}

#[tokio::test]
async fn as_root_the_cluster_runs_as_an_unprivileged_user() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let pg = TestPg::start();
    let owner = std::fs::metadata(pg.data_dir()).expect("data dir").uid();
    assert_ne!(owner, 0, "data directory must not belong to root");
    let pid = pg.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|uid| uid == owner.to_string()),
        "postmaster runs as {uid_line}, data dir owner {owner}"
    );
}

#[test]
fn as_root_an_unreachable_data_dir_is_a_clear_error() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let locked = fresh_dir("locked");
    std::fs::create_dir_all(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let result = EmbeddedPostgres::start(&locked.join("pg"));
    let _ = std::fs::remove_dir_all(&locked);
    match result {
        Err(error @ EmbeddedError::DataDirUnreachable { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&*locked.to_string_lossy()), "{message}");
        }
        other => panic!("expected DataDirUnreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn restart_keeps_the_data() {
    let mut pg = TestPg::start();
    let client = pg.client().await;
    client
        .batch_execute("CREATE TABLE kept (v bigint); INSERT INTO kept VALUES (42)")
        .await
        .expect("write");
    drop(client);

    pg.restart();
    assert_eq!(stored_value(pg.url()).await, 42);

    pg.stop();
    pg.start_again();
    assert_eq!(stored_value(pg.url()).await, 42);
}

#[tokio::test]
async fn a_second_start_on_the_same_directory_reuses_the_cluster() {
    let dir = fresh_dir("reuse");
    let first = EmbeddedPostgres::start(&dir).expect("first start");
    let (client, connection) = tokio_postgres::connect(first.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let io = tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE kept (v bigint); INSERT INTO kept VALUES (7)")
        .await
        .expect("write");
    drop(client);
    let _ = io.await;
    first.stop().expect("stop");

    let second = EmbeddedPostgres::start(&dir).expect("second start");
    assert_eq!(stored_value(second.url()).await, 7);
    second.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn stop_leaves_no_postgres_process() {
    let dir = fresh_dir("stop");
    let pg = EmbeddedPostgres::start(&dir).expect("start");
    let pid = pg.pid().expect("running");
    // A backend for our connection, plus the checkpointer, WAL writer...
    let (client, connection) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.expect("query");
    assert!(!live_children_of(pid).is_empty());

    pg.stop().expect("stop");
    assert!(!process_alive(pid), "postmaster {pid} still running");
    assert!(
        wait_until(Duration::from_secs(5), || live_children_of(pid).is_empty()),
        "children of postmaster {pid} still running"
    );
    assert!(!dir.join("postmaster.pid").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_data_dir_too_long_for_a_socket_path_gets_a_short_private_socket_dir() {
    let dir = fresh_dir(&"long".repeat(30));
    let pg = EmbeddedPostgres::start(&dir).expect("start");
    let socket_dir = pg.socket_dir().to_owned();
    assert!(
        socket_dir.to_string_lossy().starts_with("/tmp/tally-pg-"),
        "{}",
        socket_dir.display()
    );
    let (client, connection) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.expect("query");
    pg.stop().expect("stop");
    assert!(!socket_dir.exists(), "private socket dir left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Set in the re-executed child of `a_killed_tally_takes_its_postgres_down`.
const ORPHAN_DIR_ENV: &str = "TALLY_TEST_ORPHAN_DIR";

/// Not a test on its own: when the variable is set, plays a tally process that starts its
/// cluster, writes the postmaster's pid and then waits to be SIGKILLed.
#[test]
fn orphan_child_process() {
    let Some(dir) = std::env::var_os(ORPHAN_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let pg = EmbeddedPostgres::start(&dir).expect("start");
    let pid = pg.pid().expect("running");
    std::fs::write(dir.with_extension("pid"), pid.to_string()).expect("write pid");
    std::thread::sleep(Duration::from_secs(60));
    drop(pg);
}

#[test]
fn a_killed_tally_takes_its_postgres_down() {
    let dir = fresh_dir("orphan");
    let pid_file = dir.with_extension("pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "orphan_child_process", "--nocapture"])
        .env(ORPHAN_DIR_ENV, &dir)
        .spawn()
        .expect("spawn child");
    let read_pid = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    let started = wait_until(Duration::from_secs(30), || read_pid(&pid_file).is_some());
    let postmaster = read_pid(&pid_file);
    let _ = child.kill(); // SIGKILL: no destructor runs in the child.
    let _ = child.wait();
    assert!(started, "child never started its cluster");
    let postmaster = postmaster.expect("pid");
    let gone = wait_until(Duration::from_secs(20), || !process_alive(postmaster));
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        gone,
        "postmaster {postmaster} outlived the SIGKILLed parent"
    );
}

/// Runs the tally binary with `args` until it exits (at most `timeout`; killed after that):
/// its exit status, or `None` if it was still running, and its stderr.
fn run_tally(args: &[&str], timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
    let log = fresh_dir("stderr").with_extension("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("TALLY_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("stderr file"))
        .spawn()
        .expect("start tally");
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status, stderr)
}

#[test]
fn an_unparseable_database_url_is_a_start_up_error_said_once() {
    let (status, stderr) = run_tally(
        &["--listen", "127.0.0.1:0", "--database-url", "not a url"],
        Duration::from_secs(10),
    );
    let status = status.unwrap_or_else(|| panic!("tally kept running:\n{stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert_eq!(
        stderr.matches("missing \"=\" after \"not\"").count(),
        1,
        "the parse error is said once:\n{stderr}"
    );
}

#[test]
fn tls_verification_options_do_not_fail_the_url_check() {
    let url = "host=/nonexistent-tally-test-socket-dir port=1 user=tally connect_timeout=1 \
               sslmode=verify-full sslrootcert=/nonexistent-tally-test-ca.pem";
    let server = common::server::TestServer::start(&["--database-url", url]);
    assert_eq!(server.get("/api/v1/system/health").status, 200);
}

#[test]
fn a_symlinked_data_dir_is_refused_and_its_target_left_alone() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = fresh_dir("symlink");
    let target = root.join("elsewhere");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let before = std::fs::metadata(&target).expect("target");
    std::os::unix::fs::symlink(&target, root.join("pg")).expect("symlink");

    let result = EmbeddedPostgres::start(&root.join("pg"));
    let after = std::fs::metadata(&target).expect("target");
    let target_is_empty = std::fs::read_dir(&target).expect("list").next().is_none();
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Err(error @ EmbeddedError::DataDirSymlink { .. }) => {
            assert!(error.to_string().contains("symbolic link"), "{error}");
        }
        other => panic!("expected DataDirSymlink, got {other:?}"),
    }
    assert_eq!(after.uid(), before.uid(), "the target changed owner");
    assert_eq!(after.mode(), before.mode(), "the target changed mode");
    assert!(target_is_empty, "something was written into the target");
}

#[test]
fn as_root_a_data_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let root = fresh_dir("foreign");
    let dir = root.join("pg");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let stranger = 54_321;
    std::os::unix::fs::chown(&dir, Some(stranger), Some(stranger)).expect("chown");

    let result = EmbeddedPostgres::start(&dir);
    let owner = std::fs::metadata(&dir).expect("dir").uid();
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Err(error @ EmbeddedError::DataDirForeignOwner { .. }) => {
            let message = error.to_string();
            assert!(message.contains("54321"), "{message}");
        }
        other => panic!("expected DataDirForeignOwner, got {other:?}"),
    }
    assert_eq!(owner, stranger, "the directory was taken over");
}

#[test]
fn the_socket_is_private_to_the_cluster_s_user() {
    use std::os::unix::fs::PermissionsExt;
    let pg = TestPg::start();
    let socket = pg.data_dir().join(".s.PGSQL.5432");
    for path in [pg.data_dir(), &socket] {
        let mode = std::fs::metadata(path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
    }
}

/// Set in the re-executed child of `a_start_killed_during_initdb_does_not_break_the_next`.
const INITDB_DIR_ENV: &str = "TALLY_TEST_INITDB_DIR";

/// Not a test on its own: when the variable is set, starts a cluster there (the parent kills
/// this process during initdb).
#[test]
fn initdb_child_process() {
    let Some(dir) = std::env::var_os(INITDB_DIR_ENV) else {
        return;
    };
    let pg = EmbeddedPostgres::start(Path::new(&dir)).expect("start");
    std::thread::sleep(Duration::from_secs(60));
    drop(pg);
}

#[test]
fn a_start_killed_during_initdb_does_not_break_the_next() {
    use std::os::unix::process::CommandExt;
    let root = fresh_dir("initdb-killed");
    let dir = root.join("pg");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "initdb_child_process", "--nocapture"])
        .env(INITDB_DIR_ENV, &dir)
        .process_group(0)
        .spawn()
        .expect("spawn child");
    // initdb writes PG_VERSION first, then bootstraps for a second or more.
    let initdb_started = wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&root).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|entry| entry.path().join("PG_VERSION").exists())
        })
    });
    // SIGKILL to the whole group, initdb and its postgres children with it: `docker kill`.
    // SAFETY: kill(2) on our child's own process group.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    assert!(initdb_started, "initdb never started");
    std::thread::sleep(Duration::from_millis(200));

    let next = EmbeddedPostgres::start(&dir);
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .expect("list")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| name != "pg")
        .collect();
    let started = next.map(|pg| pg.stop());
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        matches!(started, Ok(Ok(()))),
        "the next start failed: {started:?}"
    );
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn a_data_dir_with_files_but_no_cluster_is_refused_not_overwritten() {
    let root = fresh_dir("not-a-cluster");
    let dir = root.join("pg");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("precious"), "x").expect("write");
    let result = EmbeddedPostgres::start(&dir);
    let kept = dir.join("precious").exists();
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        matches!(result, Err(EmbeddedError::DataDirNotACluster { .. })),
        "{result:?}"
    );
    assert!(kept);
}

/// Live processes whose command line mentions `text` (initdb and postgres name their data
/// directory on theirs).
fn processes_mentioning(text: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(text))
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// Starts tally with the embedded default on a fresh data directory, sends SIGTERM once
/// `started_up_to(data_dir)` holds (before /health answers), and checks that tally exits 0
/// promptly and leaves no initdb or postgres behind.
fn sigterm_during_start_up_stops_cleanly(tag: &str, started_up_to: impl Fn(&Path) -> bool) {
    let data_dir = fresh_dir(tag);
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    let log = data_dir.join("tally.log");
    let listen = format!("127.0.0.1:{}", common::server::free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--listen", &listen, "--data-dir"])
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .env("TALLY_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start tally");
    let reached = wait_until(Duration::from_secs(30), || started_up_to(&data_dir));
    let health = std::net::TcpStream::connect(&listen).is_ok();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let signalled = Instant::now();
    let mut status = None;
    wait_until(Duration::from_secs(15), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let took = signalled.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let key = data_dir.to_string_lossy().into_owned();
    let no_processes_left = wait_until(Duration::from_secs(5), || {
        processes_mentioning(&key).is_empty()
    });
    let left = processes_mentioning(&key);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for pid in &left {
        // SAFETY: kill(2) on a process of this test's own making.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    assert!(reached, "start-up never got there:\n{text}");
    assert!(!health, "tally was already serving: not a start-up test");
    let status =
        status.unwrap_or_else(|| panic!("tally still ran {took:?} after SIGTERM:\n{text}"));
    assert_eq!(status.code(), Some(0), "{status}:\n{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{text}");
    assert!(no_processes_left, "left running: {left:?}\n{text}");
}

#[test]
fn sigterm_during_initdb_stops_cleanly() {
    sigterm_during_start_up_stops_cleanly("sigterm-initdb", |data_dir| {
        // Not just any process naming the directory: tally's own command line does.
        processes_mentioning(&data_dir.to_string_lossy())
            .iter()
            .any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "initdb")
            })
    });
}

#[test]
fn a_stop_request_interrupts_a_starting_server_and_leaves_nothing_running() {
    let dir = fresh_dir("interrupted-start");
    EmbeddedPostgres::start(&dir)
        .expect("first start")
        .stop()
        .expect("stop");
    // Set before the start: the postmaster is spawned, then stopped before it is ready.
    let stop = std::sync::atomic::AtomicBool::new(true);
    let interrupted = EmbeddedPostgres::start_interruptible(&dir, &stop);
    let key = dir.to_string_lossy().into_owned();
    let nothing_left = wait_until(Duration::from_secs(5), || {
        processes_mentioning(&key).is_empty()
    });
    let again = EmbeddedPostgres::start(&dir).map(|pg| pg.stop());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        matches!(interrupted, Err(EmbeddedError::Interrupted)),
        "{interrupted:?}"
    );
    assert!(
        nothing_left,
        "left running: {:?}",
        processes_mentioning(&key)
    );
    assert!(
        matches!(again, Ok(Ok(()))),
        "the cluster was hurt: {again:?}"
    );
}
