//! What a running embedded cluster is: the [`EmbeddedPostgres`] struct, its binaries, its
//! directories, the user it runs as and its postmaster. The parent module gives it its public
//! life cycle; `server` and `initdb` add the methods that start the postmaster and make the
//! cluster.

use std::path::PathBuf;
use std::process::Child;

use super::binaries::PgBinaries;
use super::run_as::RunAs;

/// A running (or, between [`EmbeddedPostgres::stop_server`] and
/// [`EmbeddedPostgres::start_server`], stopped) private cluster. Dropping it stops the server.
///
/// The child gets `PR_SET_PDEATHSIG = SIGINT`, so if tally dies, even by SIGKILL, the kernel
/// asks postgres for a fast shutdown. Linux sends that signal when the *thread* that spawned the
/// child exits, so call `start`/`start_server`/`restart` from a thread that lives as long as
/// the server should (tally: the main thread).
#[derive(Debug)]
pub struct EmbeddedPostgres {
    pub(super) binaries: PgBinaries,
    /// Absolute, symlinks resolved.
    pub(super) data_dir: PathBuf,
    /// The data directory itself when its path fits in `sun_path`, else a private `/tmp` dir.
    pub(super) socket_dir: PathBuf,
    /// True when `socket_dir` was made by us under /tmp and must be removed at the end.
    pub(super) socket_dir_is_private: bool,
    /// `Some` when tally runs as root.
    pub(super) run_as: Option<RunAs>,
    /// The postmaster; `None` while stopped.
    pub(super) child: Option<Child>,
    pub(super) url: String,
}
