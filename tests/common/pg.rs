//! Private PostgreSQL clusters for integration tests: each [`TestPg`] is a real cluster
//! (`tally::postgres::EmbeddedPostgres`) in a fresh `/tmp/tally-test-<pid>-<n>`, removed on
//! drop. Fault tests stop, start and restart it; its URL never changes.
//!
//! The server gets SIGINT when the thread that (re)started it exits (PR_SET_PDEATHSIG), so
//! call `start`, `start_again` and `restart` from the test's own thread, not a short-lived one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tally::postgres::EmbeddedPostgres;

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestPg {
    dir: PathBuf,
    url: String,
    /// `None` only while dropping.
    pg: Option<EmbeddedPostgres>,
}

impl TestPg {
    /// initdb + start a cluster in a new directory; panics (failing the test) with the reason.
    pub fn start() -> TestPg {
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/tally-test-{}-{n}", std::process::id()));
        // A leftover from an earlier run whose pid was the same.
        let _ = std::fs::remove_dir_all(&dir);
        let pg = EmbeddedPostgres::start(&dir)
            .unwrap_or_else(|error| panic!("starting PostgreSQL in {}: {error}", dir.display()));
        TestPg {
            dir,
            url: pg.url().to_owned(),
            pg: Some(pg),
        }
    }

    /// The tokio-postgres connection string; the same across stops and restarts.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection on the current tokio runtime (its I/O task is spawned there), for reading
    /// and writing the database behind tally's back.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connecting to {}: {error}", self.url));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.cluster().pid()
    }

    /// Fast shutdown; the data stays for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        self.cluster_mut()
            .stop_server()
            .unwrap_or_else(|error| panic!("stopping PostgreSQL: {error}"));
    }

    /// Starts the stopped cluster again, waiting until it accepts connections.
    pub fn start_again(&mut self) {
        self.cluster_mut()
            .start_server()
            .unwrap_or_else(|error| panic!("starting PostgreSQL again: {error}"));
    }

    /// Stop, then start again.
    pub fn restart(&mut self) {
        self.cluster_mut()
            .restart()
            .unwrap_or_else(|error| panic!("restarting PostgreSQL: {error}"));
    }

    fn cluster(&self) -> &EmbeddedPostgres {
        self.pg.as_ref().expect("cluster present until drop")
    }

    fn cluster_mut(&mut self) -> &mut EmbeddedPostgres {
        self.pg.as_mut().expect("cluster present until drop")
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            let _ = pg.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
