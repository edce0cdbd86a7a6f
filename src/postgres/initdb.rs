//! Making a cluster: initdb into a temporary beside the data directory, renamed into place
//! once complete; temporaries of interrupted initdbs are removed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::cluster::EmbeddedPostgres;
use super::data_dir::{fchown, open_dir_nofollow};
use super::error::io_error;
use super::process::{die_with_parent, memory_file, process_exists, stop_child, POLL_INTERVAL};
use super::server::{last_lines, LOG_TAIL_LINES};
use super::EmbeddedError;

/// The superuser initdb creates; tally connects as it (trust auth, socket reachable only by the
/// cluster's owner and root).
pub const SUPERUSER: &str = "tally";
/// initdb exits on SIGTERM once its current step is done; past this, SIGKILL.
const INITDB_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl EmbeddedPostgres {
    /// initdb into a fresh directory beside `data_dir`, renamed into place once initdb
    /// succeeded: a start killed meanwhile leaves only that temporary, which the next start
    /// removes ([`remove_interrupted_initdbs`]), never a half-made cluster at `data_dir`.
    pub(super) fn initdb(&self, stop: &AtomicBool) -> Result<(), EmbeddedError> {
        let temp = initdb_temp_dir(&self.data_dir, std::process::id());
        log::info!(
            "initialising a PostgreSQL cluster in {} (via {})",
            self.data_dir.display(),
            temp.display()
        );
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&temp)
            .map_err(io_error("create", &temp))?;
        let made = self.initdb_into(&temp, stop).and_then(|()| {
            // rename(2) also replaces an empty directory at `data_dir`.
            fs::rename(&temp, &self.data_dir).map_err(io_error("rename", &temp))?;
            let parent = self.data_dir.parent().unwrap_or(Path::new("/"));
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error("sync", parent))
        });
        if made.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        made
    }

    fn initdb_into(&self, temp: &Path, stop: &AtomicBool) -> Result<(), EmbeddedError> {
        if let Some(user) = &self.run_as {
            let dir = open_dir_nofollow(temp)?
                .ok_or_else(|| io_error("open", temp)(io::ErrorKind::NotFound.into()))?;
            fchown(&dir, temp, user)?;
        }
        let mut command = self.command(&self.binaries.initdb);
        // An initdb that outlives a killed tally would fill a directory nobody renames.
        die_with_parent(&mut command, libc::SIGTERM);
        // Its output goes to a file in memory, not a pipe: nothing has to drain it while this
        // thread polls `stop`.
        let initdb = &self.binaries.initdb;
        let mut output = memory_file(c"tally-initdb-output").map_err(io_error("create", initdb))?;
        let stdout = output.try_clone().map_err(io_error("create", initdb))?;
        let stderr = output.try_clone().map_err(io_error("create", initdb))?;
        let mut child = command
            .arg("--pgdata")
            .arg(temp)
            .arg("--auth=trust")
            .arg(format!("--username={SUPERUSER}"))
            .arg("--encoding=UTF8")
            .arg("--locale=C")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io_error("run", initdb))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if stop.load(Ordering::SeqCst) => {
                    // initdb cleans up and exits on SIGTERM, after the step it is in.
                    let _ = stop_child(child, libc::SIGTERM, INITDB_STOP_TIMEOUT);
                    return Err(EmbeddedError::Interrupted);
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io_error("wait for", initdb)(error));
                }
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut text = String::new();
        let _ = output
            .seek(SeekFrom::Start(0))
            .and_then(|_| output.read_to_string(&mut text));
        Err(EmbeddedError::Initdb {
            data_dir: self.data_dir.clone(),
            status,
            output: last_lines(&text, LOG_TAIL_LINES),
        })
    }
}

/// Where `initdb` builds the cluster for `data_dir`: beside it (same file system, so the
/// rename is atomic), named after the process doing it.
fn initdb_temp_dir(data_dir: &Path, pid: u32) -> PathBuf {
    let mut name = initdb_temp_prefix(data_dir);
    name.push_str(&pid.to_string());
    data_dir.with_file_name(name)
}

fn initdb_temp_prefix(data_dir: &Path) -> String {
    let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
    format!(".{name}.initdb-")
}

/// Removes the temporaries of initdbs that did not finish: those of processes that are gone,
/// and any named after this process (a container's tally is pid 1 on every start).
pub(super) fn remove_interrupted_initdbs(data_dir: &Path) {
    let prefix = initdb_temp_prefix(data_dir);
    let Some(Ok(entries)) = data_dir.parent().map(fs::read_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && process_exists(pid) {
            continue;
        }
        let path = entry.path();
        log::warn!(
            "removing {}: left by an initdb that did not finish",
            path.display()
        );
        if let Err(error) = fs::remove_dir_all(&path) {
            log::warn!("cannot remove {}: {error}", path.display());
        }
    }
}
