//! Command line and environment: every setting is a flag with an environment fallback, and
//! `--help` explains each one. Parsing, and turning the flags into the values the rest of tally
//! takes ([`ServerConfig`]); nothing here starts anything. Defaults of the HTTP limits are the
//! `http` module's own constants, so they exist once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::AdminToken;
use crate::http::Limits;
use crate::http::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_URI_BYTES,
    MAX_HEADERS_CAP,
};
use crate::server::{IoPath, ServerConfig, TaskRun};

/// `--io-taskrun`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskRunArg {
    Defer,
    Coop,
}

#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "Thread-per-core io_uring HTTP server: a durable PostgreSQL counter and UUID key/value lookups",
    long_about = "Thread-per-core io_uring HTTP server: a durable PostgreSQL counter and UUID key/value lookups.\n\n\
        With no --database-url, tally runs a private PostgreSQL cluster in <data-dir>/pg from the PostgreSQL \
        server binaries installed on this machine. With no --kv-data, it serves a built-in sample of 10,000 pairs \
        (`tally sample | head` shows some keys)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the built-in sample dataset (or one of any size and seed) to a file or stdout.
    Sample(SampleArgs),
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Number of pairs (at most 87,652,393: the most whose values surely fit the dataset's
    /// 4 GiB value arena).
    #[arg(long, default_value_t = crate::kv::DEFAULT_SAMPLE_PAIRS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(..=crate::kv::MAX_SAMPLE_PAIRS as u64))]
    pub pairs: usize,
    /// PRNG seed; the default gives the dataset served when no --kv-data is given.
    #[arg(long, default_value_t = crate::kv::DEFAULT_SEED)]
    pub seed: u64,
    /// Output file; its extension picks the format (.json, .jsonl, .csv). Without it, JSON
    /// Lines go to stdout.
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; every core binds it with SO_REUSEPORT.
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Number of cores to run on (default: every CPU this process may use).
    #[arg(long, env = "TALLY_CORES")]
    pub cores: Option<usize>,

    /// PostgreSQL connection string (URL or key=value). Without it, tally runs its own cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for tally's own state; the embedded PostgreSQL cluster lives in <data-dir>/pg.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = ".tally")]
    pub data_dir: PathBuf,

    /// Key/value dataset: .json (one object), .jsonl/.ndjson (one {"key","value"} a line) or
    /// .csv (key,value with a header). Default: the built-in 10,000-pair sample.
    #[arg(long, env = "TALLY_KV_DATA")]
    pub kv_data: Option<PathBuf>,

    /// Refuse a key/value reload whose peak memory could pass this many bytes: the old
    /// replicas + the new file's size x (1 + cores). Default: no limit.
    #[arg(long, env = "TALLY_KV_RELOAD_MAX_BYTES")]
    pub kv_reload_max_bytes: Option<u64>,

    /// Reload the --kv-data file when it is replaced (renamed over) or rewritten, once no write
    /// came for 200 ms (inotify on its directory).
    #[arg(long, env = "TALLY_KV_WATCH", requires = "kv_data")]
    pub kv_watch: bool,

    /// Enables `POST /admin/kv/reload` for requests with `Authorization: Bearer <token>`
    /// (404 without this setting). Prefer the environment: a flag shows in `ps`.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Open connections per core; a connection beyond it gets 503 and is closed.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS_PER_CORE", default_value_t = 16_384)]
    pub max_connections_per_core: usize,

    /// Largest request line + header section, in bytes (431 beyond).
    #[arg(long, env = "TALLY_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEAD_BYTES)]
    pub max_header_bytes: usize,

    /// Most header fields in one request (431 beyond; at most 128).
    #[arg(long, env = "TALLY_MAX_HEADERS", default_value_t = DEFAULT_MAX_HEADERS as u16,
          value_parser = clap::value_parser!(u16).range(1..=MAX_HEADERS_CAP as i64))]
    pub max_headers: u16,

    /// Longest request target, in bytes (414 beyond).
    #[arg(long, env = "TALLY_MAX_URI_BYTES", default_value_t = DEFAULT_MAX_URI_BYTES)]
    pub max_uri_bytes: usize,

    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Seconds a client has to send a whole request once it started one (408 after).
    #[arg(long, env = "TALLY_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,

    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "TALLY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "TALLY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Milliseconds a counter commit may take before its requests get 503.
    #[arg(long, env = "TALLY_COMMIT_TIMEOUT_MS", default_value_t = 5000)]
    pub commit_timeout_ms: u64,

    /// Seconds an Idempotency-Key is remembered: a request repeating it within this window is
    /// answered with the first one's count and not counted again.
    #[arg(long, env = "TALLY_IDEMPOTENCY_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub idempotency_retention_secs: u64,

    /// Most increments in one transaction (0 = no limit). 1 gives one transaction per
    /// request: the design tally replaces, kept for the benchmark's comparison.
    #[arg(long, env = "TALLY_MAX_BATCH", default_value_t = 0)]
    pub max_batch: usize,

    /// Most named counters (/api/v1/counters/{name}) the database may hold: past it, an
    /// increment that would create one is refused (507); existing ones keep counting.
    #[arg(long, env = "TALLY_MAX_COUNTERS", default_value_t = 1_000_000)]
    pub max_counters: u64,

    /// Create the io_uring rings with IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG (Linux 5.19+;
    /// tally falls back to no flags where the kernel refuses them). `false` for comparison.
    #[arg(long, env = "TALLY_IO_RING_TASKRUN_FLAGS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub io_ring_taskrun_flags: bool,

    /// Connection I/O: `uring` (tally's own io_uring ring per core: multishot accept and
    /// receive into provided buffers, sends batched per pass) or `glommio` (glommio's sockets).
    /// A core falls back to `glommio`, with a log line, where the kernel lacks what `uring`
    /// needs.
    #[arg(long, env = "TALLY_IO", value_enum, default_value_t = IoPath::Uring)]
    pub io: IoPath,

    /// How tally's ring runs completions: `defer` (SINGLE_ISSUER|DEFER_TASKRUN: run by the
    /// core's own wait on the ring, without interrupting the core; docs/benchmarks.md has its
    /// cost against coop; falls back to coop where refused) or `coop` (COOP_TASKRUN: run at the core's next
    /// kernel entry of any kind).
    #[arg(long, env = "TALLY_IO_TASKRUN", value_enum, default_value_t = TaskRunArg::Defer)]
    pub io_taskrun: TaskRunArg,

    /// Log level: error, warn, info, debug or trace (RUST_LOG-style filters work too).
    #[arg(long, env = "TALLY_LOG", default_value = "info")]
    pub log: String,
}

impl ServeArgs {
    /// The server's configuration, on `cpus` (one core each).
    pub fn server_config(&self, cpus: Vec<usize>) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            cpus,
            limits: self.limits(),
            max_connections_per_core: self.max_connections_per_core.max(1),
            request_timeout: self.request_timeout(),
            idle_timeout: self.idle_timeout(),
            shutdown_grace: self.shutdown_grace(),
            ring_taskrun_flags: self.io_ring_taskrun_flags,
            io: self.io,
            io_taskrun: match self.io_taskrun {
                TaskRunArg::Defer => TaskRun::Defer,
                TaskRunArg::Coop => TaskRun::Coop,
            },
            admin_token: self.admin_token.as_deref().and_then(AdminToken::new),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.max_header_bytes,
            max_headers: usize::from(self.max_headers),
            max_uri_bytes: self.max_uri_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.commit_timeout_ms.max(1))
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_secs.max(1))
    }
}

/// A `--database-url` that can never work: tally refuses to start rather than retry it forever.
#[derive(Debug, thiserror::Error)]
#[error("invalid --database-url / DATABASE_URL: {reason}")]
pub struct InvalidDatabaseUrl {
    /// tokio-postgres's message with its cause, as one string: the URL itself is not repeated
    /// (it may hold a password), and there is no `source` for `{:#}` to print a second time.
    reason: String,
}

/// Checks that `url` parses as a connection string (URL or `key=value` form), with the TLS
/// options read the way the store reads them. Whether the server is up is not checked: the
/// store retries that.
pub fn check_database_url(url: &str) -> Result<(), InvalidDatabaseUrl> {
    use std::error::Error as _;
    let (rest, _tls) = crate::counter::tls::split_connection_string(url)
        .map_err(|reason| InvalidDatabaseUrl { reason })?;
    match rest.parse::<tokio_postgres::Config>() {
        Ok(_) => Ok(()),
        Err(error) => Err(InvalidDatabaseUrl {
            reason: match error.source() {
                Some(cause) => format!("{error}: {cause}"),
                None => error.to_string(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparseable_database_url_is_an_error_with_its_cause() {
        let error = check_database_url("not a url").expect_err("not a connection string");
        let message = error.to_string();
        assert!(message.contains("connection string"), "{message}");
        assert!(message.contains("\"=\""), "{message}");
        assert!(check_database_url("host=/tmp port=5432 user=tally").is_ok());
        assert!(check_database_url("postgres://tally@localhost:1/db?connect_timeout=2").is_ok());
        assert!(check_database_url("host=/tmp nonsense=1").is_err());
    }

    #[test]
    fn tally_s_own_tls_options_pass_the_check() {
        for url in [
            "host=db sslmode=verify-full sslrootcert=/etc/ca.pem user=tally",
            "host=db sslmode = 'verify-ca' sslrootcert='/etc/my ca.pem'",
            "sslrootcert=/etc/ca.pem",
            "postgres://tally@db/postgres?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgresql://db/postgres?sslrootcert=/ca.pem&sslmode=verify-ca&application_name=t",
        ] {
            assert!(
                check_database_url(url).is_ok(),
                "{url}: {:?}",
                check_database_url(url)
            );
        }
        assert!(check_database_url("host=db sslmode=bogus").is_err());
        assert!(check_database_url("postgres://db/?sslmode=bogus&sslrootcert=/x").is_err());
    }
}
