//! The data directory: resolving it without following a symlink at its end, and the
//! ownership and reachability checks before tally takes it over.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::error::io_error;
use super::{EmbeddedError, RunAs};

pub(super) fn chown(path: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_error("chown", path))
}

/// `data_dir` made absolute with its parent's symlinks resolved (the parent is created if
/// missing); its last component is kept as it is, for [`open_dir_nofollow`] to judge.
pub(super) fn resolve_data_dir(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let Some(name) = data_dir.file_name() else {
        return Err(io_error("use", data_dir)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the data directory's path must end in a name",
        )));
    };
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    let parent = fs::canonicalize(parent).map_err(io_error("resolve", parent))?;
    Ok(parent.join(name))
}

/// Opens the directory `path` itself, `None` if nothing is there: a symlink there is refused,
/// not followed (`O_NOFOLLOW`). Acting on the descriptor (fchown, fstat), not on the path again,
/// means a symlink swapped in meanwhile changes nothing.
pub(super) fn open_dir_nofollow(path: &Path) -> Result<Option<File>, EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| {
            // With O_DIRECTORY a symlink fails as ENOTDIR, without it as ELOOP.
            let is_symlink = fs::symlink_metadata(path).is_ok_and(|meta| meta.is_symlink());
            match error.raw_os_error() {
                _ if is_symlink => EmbeddedError::DataDirSymlink {
                    path: path.to_owned(),
                },
                Some(libc::ENOTDIR) => EmbeddedError::DataDirNotADirectory {
                    path: path.to_owned(),
                },
                _ => io_error("open", path)(error),
            }
        });
    match opened {
        Ok(dir) => Ok(Some(dir)),
        Err(EmbeddedError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

pub(super) fn fchown(dir: &File, path: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    std::os::unix::fs::fchown(dir, Some(user.uid), Some(user.gid)).map_err(io_error("chown", path))
}

/// Whether the existing directory `data_dir` holds a cluster (`PG_VERSION`) or is empty (one is
/// made there); anything else is not tally's to overwrite or delete.
pub(super) fn holds_cluster(data_dir: &Path) -> Result<bool, EmbeddedError> {
    if data_dir.join("PG_VERSION").exists() {
        return Ok(true);
    }
    let mut entries = fs::read_dir(data_dir).map_err(io_error("list", data_dir))?;
    match entries.next() {
        None => Ok(false),
        Some(_) => Err(EmbeddedError::DataDirNotACluster {
            path: data_dir.to_owned(),
        }),
    }
}

/// A directory tally did not create must already belong to the cluster's user or to root.
pub(super) fn check_owner(
    dir: &File,
    path: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    let owner = dir.metadata().map_err(io_error("inspect", path))?.uid();
    let (cluster_uid, user) = match run_as {
        Some(user) => (user.uid, format!("the cluster's user `{}`", user.name)),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => (unsafe { libc::geteuid() }, "tally's own user".to_owned()),
    };
    if owner == cluster_uid || owner == 0 {
        return Ok(());
    }
    Err(EmbeddedError::DataDirForeignOwner {
        path: path.to_owned(),
        owner,
        user,
    })
}

/// Every ancestor of `data_dir` must be searchable by the cluster's user.
pub(super) fn check_reachable(user: &RunAs, data_dir: &Path) -> Result<(), EmbeddedError> {
    for dir in data_dir.ancestors().skip(1) {
        if !user.can_search(dir).map_err(io_error("inspect", dir))? {
            return Err(EmbeddedError::DataDirUnreachable {
                user: user.name.clone(),
                data_dir: data_dir.to_owned(),
                blocked: dir.to_owned(),
            });
        }
    }
    Ok(())
}
