//! [`EmbeddedError`]: why the embedded cluster could not be started or stopped, each variant
//! saying what to do about it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// Why the embedded cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (searched PATH, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin): install PostgreSQL (e.g. `apt-get install postgresql`) \
         or pass --database-url / DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "tally runs as root and PostgreSQL refuses to, but there is no `postgres` user to run it \
         as (tally does not use `nobody`: every other process running as `nobody` could use the \
         cluster's superuser socket): create a dedicated user (e.g. `useradd --system \
         --no-create-home --shell /usr/sbin/nologin postgres`), run tally as an unprivileged \
         user, or pass --database-url / DATABASE_URL"
    )]
    NoUnprivilegedUser,
    #[error(
        "{path} is a symbolic link: tally does not follow it for its PostgreSQL cluster (it \
         would take ownership of the target); make it a real directory or pass another \
         --data-dir"
    )]
    DataDirSymlink { path: PathBuf },
    #[error(
        "{path} holds files but no PostgreSQL cluster (no PG_VERSION): tally neither \
         initialises over them nor deletes them; empty or remove it, or pass another --data-dir"
    )]
    DataDirNotACluster { path: PathBuf },
    #[error("a stop was requested (SIGTERM/SIGINT) while the embedded PostgreSQL was starting")]
    Interrupted,
    #[error("{path} exists and is not a directory")]
    DataDirNotADirectory { path: PathBuf },
    #[error(
        "{path} belongs to uid {owner}, not to {user} or root: tally does not take over a \
         directory it did not create; chown it, remove it, or pass another --data-dir"
    )]
    DataDirForeignOwner {
        path: PathBuf,
        owner: u32,
        /// Who the cluster runs as, in words.
        user: String,
    },
    #[error(
        "PostgreSQL runs as user `{user}`, which cannot reach {data_dir}: it may not search \
         {blocked} (chmod o+x it, or choose a data directory under a world-searchable path)"
    )]
    DataDirUnreachable {
        user: String,
        data_dir: PathBuf,
        blocked: PathBuf,
    },
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("initdb failed for {data_dir} ({status}):\n{output}")]
    Initdb {
        data_dir: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("PostgreSQL exited during start-up ({status}); end of {log}:\n{log_tail}")]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },
    #[error("PostgreSQL did not accept connections within {seconds} s; end of {log}:\n{log_tail}")]
    StartTimeout {
        seconds: u64,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "PostgreSQL did not stop within {seconds} s of a fast shutdown request; it was killed"
    )]
    StopTimeout { seconds: u64 },
}

pub(super) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.to_owned();
    move |error| EmbeddedError::Io {
        action,
        path,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_binaries_error_says_how_to_fix_it() {
        let message = EmbeddedError::NoBinaries.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("--database-url"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }
}
