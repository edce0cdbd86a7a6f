//! The embedded PostgreSQL cluster tally runs when no database URL is given (docs/operations.md,
//! "Configuration", `--database-url` and `--data-dir`): server binaries found on this machine,
//! a data directory initialised on first run, one `postgres` child process listening on a Unix
//! socket only, stopped when tally stops. Only process and file management lives here; the SQL
//! is in [`crate::counter::store`].
//!
//! Durability is PostgreSQL's own: `fsync` and `synchronous_commit` are forced on from the
//! command line (which outranks `postgresql.conf` and `ALTER SYSTEM`).
//!
//! This file holds the public life cycle of [`EmbeddedPostgres`] (start, stop, restart);
//! `cluster` defines the struct, `binaries` finds the programs, `run_as` the user they run as,
//! `data_dir` checks the directory, `initdb` makes a cluster (as [`SUPERUSER`]), `server` runs
//! the postmaster, `socket` places its socket, `process` signals and stops children, `error`
//! says what went wrong. Constants live in the child they belong to.

mod binaries;
mod cluster;
mod data_dir;
mod error;
mod initdb;
mod process;
mod run_as;
mod server;
mod socket;

pub use binaries::PgBinaries;
pub use cluster::EmbeddedPostgres;
pub use error::EmbeddedError;
pub use initdb::SUPERUSER;
pub use run_as::{ClusterUser, RunAs};

use std::path::Path;
use std::process::Child;
use std::sync::atomic::AtomicBool;

use data_dir::{
    check_owner, check_reachable, fchown, holds_cluster, open_dir_nofollow, resolve_data_dir,
};
use initdb::remove_interrupted_initdbs;
use process::{stop_child, STOP_TIMEOUT};
use socket::{private_socket_dir, quote_conninfo, socket_dir_fits, PORT};

impl EmbeddedPostgres {
    /// Finds the server binaries, initialises `data_dir` if it holds no cluster yet (trust auth,
    /// superuser `tally`, UTF8), starts `postgres` on a Unix socket only, and returns once it
    /// accepts connections. When tally is root, the cluster belongs to and runs as `postgres`.
    ///
    /// `data_dir` itself is never followed if it is a symlink, and a directory there that tally
    /// did not create must belong to the cluster's user or root: tally chowns and chmods it.
    pub fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        Self::start_interruptible(data_dir, &AtomicBool::new(false))
    }

    /// As [`start`](Self::start), but once `stop` is set (by a signal handler) it gives up
    /// within a poll interval or so with [`EmbeddedError::Interrupted`]: initdb is stopped and
    /// its temporary removed, a starting server gets a fast shutdown. Nothing keeps running.
    pub fn start_interruptible(
        data_dir: &Path,
        stop: &AtomicBool,
    ) -> Result<EmbeddedPostgres, EmbeddedError> {
        let binaries = PgBinaries::find().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = match ClusterUser::for_current_process() {
            ClusterUser::TallyItself => None,
            ClusterUser::Unprivileged(user) => Some(user),
            ClusterUser::NoUnprivilegedAccount => return Err(EmbeddedError::NoUnprivilegedUser),
        };

        let data_dir = resolve_data_dir(data_dir)?;
        if let Some(user) = &run_as {
            check_reachable(user, &data_dir)?;
        }
        remove_interrupted_initdbs(&data_dir);
        // A cluster appears at `data_dir` only complete (initdb runs next to it, see
        // `initdb`), so one that is there is one to start.
        let initialised = match open_dir_nofollow(&data_dir)? {
            None => false,
            Some(dir) => {
                check_owner(&dir, &data_dir, run_as.as_ref())?;
                if let Some(user) = &run_as {
                    fchown(&dir, &data_dir, user)?;
                }
                holds_cluster(&data_dir)?
            }
        };

        let (socket_dir, socket_dir_is_private) = if socket_dir_fits(&data_dir) {
            (data_dir.clone(), false)
        } else {
            (private_socket_dir(run_as.as_ref())?, true)
        };
        let url = format!(
            "host={} port={PORT} user={SUPERUSER} dbname=postgres",
            quote_conninfo(&socket_dir.to_string_lossy())
        );

        let mut cluster = EmbeddedPostgres {
            binaries,
            data_dir,
            socket_dir,
            socket_dir_is_private,
            run_as,
            child: None,
            url,
        };
        if !initialised {
            cluster.initdb(stop)?;
        }
        cluster.start_server_interruptible(stop)?;
        Ok(cluster)
    }

    /// A tokio-postgres connection string for the cluster's superuser and `postgres` database.
    /// It stays valid across [`restart`](Self::restart).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The postmaster's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (fast shutdown, bounded wait, then SIGKILL) and removes the private
    /// socket directory if one was made.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        let stopped = self.stop_server();
        self.remove_private_socket_dir();
        stopped
    }

    /// Stops then starts the server on the same directories; the URL does not change.
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.stop_server()?;
        self.start_server()
    }

    /// Fast shutdown (SIGINT: abort open transactions, checkpoint, exit) and wait up to
    /// [`STOP_TIMEOUT`]; past that, SIGKILL and [`EmbeddedError::StopTimeout`]. The directories
    /// stay, so [`start_server`](Self::start_server) can bring the same cluster back.
    pub fn stop_server(&mut self) -> Result<(), EmbeddedError> {
        match self.child.take() {
            Some(child) => stop_child(child, libc::SIGINT, STOP_TIMEOUT),
            None => Ok(()),
        }
    }

    /// Starts the server if it is not running and waits until it accepts connections. Retries
    /// for [`LOCK_RETRY_FOR`](server::LOCK_RETRY_FOR) while an older postmaster on this
    /// directory is still going away.
    pub fn start_server(&mut self) -> Result<(), EmbeddedError> {
        self.start_server_interruptible(&AtomicBool::new(false))
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(error) = self.stop_server() {
            log::warn!("stopping the embedded PostgreSQL: {error}");
        }
        self.remove_private_socket_dir();
    }
}
