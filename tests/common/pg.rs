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

/// A private cluster that also listens on 127.0.0.1 with `ssl = on`, its certificate (for
/// `localhost` only) signed by a CA made for the test. Another CA, which signed nothing, stands
/// for a wrong root. The Unix socket of [`TestPg`] stays for checks behind tally's back.
pub struct TlsPg {
    /// Stopped; lends its data directory, superuser and socket.
    base: TestPg,
    server: std::process::Child,
    port: u16,
    root_cert: PathBuf,
    wrong_root_cert: PathBuf,
}

impl TlsPg {
    pub fn start() -> TlsPg {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;

        let mut base = TestPg::start();
        base.stop();
        let dir = base.data_dir().to_owned();
        let meta = std::fs::metadata(&dir).expect("data directory");
        let (uid, gid) = (meta.uid(), meta.gid());

        let (ca, server_cert, server_key) = certificates("tally test CA", "localhost");
        let (wrong_ca, _, _) = certificates("another test CA", "localhost");
        let write = |name: &str, text: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a certificate file");
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let root_cert = write("test-root.crt", &ca, 0o644);
        let wrong_root_cert = write("test-wrong-root.crt", &wrong_ca, 0o644);
        let cert = write("test-server.crt", &server_cert, 0o644);
        let key = write("test-server.key", &server_key, 0o600);

        let port = super::server::free_port();
        let binaries = tally::postgres::PgBinaries::find().expect("PostgreSQL binaries");
        let mut command = std::process::Command::new(&binaries.postgres);
        command
            .arg("-D")
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("port={port}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "ssl=on", "-c"])
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .uid(uid)
            .gid(gid);
        // SAFETY: prctl is async-signal-safe. If the test process dies, so does the server.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = command.spawn().expect("start postgres with ssl = on");
        let pg = TlsPg {
            base,
            server,
            port,
            root_cert,
            wrong_root_cert,
        };
        pg.wait_accepting();
        pg
    }

    /// On a thread of its own, so it works from sync and async tests alike.
    fn wait_accepting(&self) {
        let url = self.url("sslmode=disable");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    while tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .is_err()
                    {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "PostgreSQL with ssl = on did not start"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                });
            });
        });
    }

    /// A `key=value` connection string to `localhost` over TCP, plus `extra`.
    pub fn url(&self, extra: &str) -> String {
        self.url_to("localhost", extra)
    }

    /// The same to another host name or address of this machine (not in the certificate).
    pub fn url_to(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user={} dbname=postgres {extra}",
            self.port,
            tally::postgres::SUPERUSER
        )
    }

    /// The TCP port it listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server's certificate (PEM).
    pub fn root_cert(&self) -> &Path {
        &self.root_cert
    }

    /// A CA that signed nothing the server has.
    pub fn wrong_root_cert(&self) -> &Path {
        &self.wrong_root_cert
    }

    /// A client over the Unix socket, without TLS.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host={} port={} user={} dbname=postgres",
                self.base.data_dir().display(),
                self.port,
                tally::postgres::SUPERUSER
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect over the Unix socket");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

impl Drop for TlsPg {
    fn drop(&mut self) {
        // SIGINT: fast shutdown. `base` then removes the directory.
        let _ = unsafe { libc::kill(self.server.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.server.wait();
    }
}

/// A CA certificate named `ca_name` and a server certificate for `host` signed by it, with the
/// server's key; all PEM.
fn certificates(ca_name: &str, host: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec![host.to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

impl TestPg {
    /// Runs `f` with a client connected to the cluster behind tally's back, on a runtime of
    /// its own (for tests that are not async).
    pub fn with_client<T, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(tokio_postgres::Client) -> F,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(self.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            f(client).await
        })
    }
}
