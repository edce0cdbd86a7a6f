//! Running the postmaster: the command it runs as, starting it and waiting until it accepts
//! connections (retrying while an older one still holds the directory), and reading its log
//! for the error when it does not.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cluster::EmbeddedPostgres;
use super::data_dir::chown;
use super::error::io_error;
use super::process::{default_stop_signals, die_with_parent, stop_unready_child, POLL_INTERVAL};
use super::socket::{PORT, SOCKET_FILE};
use super::EmbeddedError;

/// Server output (start-up, shutdown, errors) goes here, inside the data directory.
const LOG_FILE: &str = "tally-postgres.log";
/// Crash recovery after a SIGKILL can take a while on a big WAL; this is generous for a
/// one-row database.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to keep retrying while a previous postmaster on the same directory still holds its
/// lock file or shared memory (it is shutting down, e.g. after the old tally was killed).
pub(super) const LOCK_RETRY_FOR: Duration = Duration::from_secs(10);
/// How much of the server log an error carries.
pub(super) const LOG_TAIL_LINES: usize = 20;

impl EmbeddedPostgres {
    pub(super) fn start_server_interruptible(
        &mut self,
        stop: &AtomicBool,
    ) -> Result<(), EmbeddedError> {
        if self.child.is_some() {
            return Ok(());
        }
        let give_up_on_lock = Instant::now() + LOCK_RETRY_FOR;
        loop {
            match self.spawn_and_wait_ready(stop) {
                Err(StartFailure::LockHeld(_))
                    if Instant::now() < give_up_on_lock && !stop.load(Ordering::SeqCst) =>
                {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(StartFailure::LockHeld(error) | StartFailure::Other(error)) => {
                    return Err(error)
                }
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_FILE)
    }

    /// A command that runs as the cluster's user, from `/` (root's cwd may be unreadable to it).
    pub(super) fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir("/").stdin(Stdio::null());
        if let Some(user) = &self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        default_stop_signals(&mut command);
        command
    }

    /// One start attempt: `LockHeld` when an older postmaster still holds the directory.
    fn spawn_and_wait_ready(&self, stop: &AtomicBool) -> Result<Child, StartFailure> {
        let (child, log_path, log_start) = self.spawn_postmaster()?;
        self.wait_ready(child, log_path, log_start, stop)
    }

    /// Starts `postgres` on the data directory, its output appended to the log; returns the
    /// child, the log's path and where this attempt's output starts in it.
    fn spawn_postmaster(&self) -> Result<(Child, PathBuf, u64), EmbeddedError> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        if let Some(user) = &self.run_as {
            chown(&log_path, user)?;
        }
        // Only what this attempt writes counts when deciding why it failed.
        let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        let log_for_stderr = log.try_clone().map_err(io_error("open", &log_path))?;

        let mut command = self.command(&self.binaries.postgres);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories=\"{}\"",
                self.socket_dir.to_string_lossy()
            ))
            .arg("-c")
            .arg(format!("port={PORT}"))
            // Trust auth: the socket is the only door, so it is the owner's alone, whatever
            // the mode of the directory it sits in (root, tally's user when root, bypasses it).
            .args(["-c", "unix_socket_permissions=0700"])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "logging_collector=off"])
            .stdout(log)
            .stderr(log_for_stderr)
            // Its own process group: a Ctrl-C on tally's terminal must not reach postgres before
            // tally has committed its last batch; tally stops it afterwards.
            .process_group(0);
        // SIGINT: a fast shutdown.
        die_with_parent(&mut command, libc::SIGINT);
        let child = command
            .spawn()
            .map_err(io_error("run", &self.binaries.postgres))?;
        Ok((child, log_path, log_start))
    }

    /// Polls until the postmaster accepts connections; if it exits, is told to stop, or outlasts
    /// [`START_TIMEOUT`], it is gone when this returns, and the log says why.
    fn wait_ready(
        &self,
        mut child: Child,
        log_path: PathBuf,
        log_start: u64,
        stop: &AtomicBool,
    ) -> Result<Child, StartFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let log_tail = read_log_since(&log_path, log_start);
                    let error = EmbeddedError::Exited {
                        status,
                        log: log_path,
                        log_tail: log_tail.clone(),
                    };
                    return Err(if lock_held_by_older_server(&log_tail) {
                        StartFailure::LockHeld(error)
                    } else {
                        StartFailure::Other(error)
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io_error("wait for", &self.binaries.postgres)(error).into());
                }
            }
            if self.accepts_connections(child.id()) {
                log::info!(
                    "PostgreSQL (pid {}) is up on {}",
                    child.id(),
                    self.socket_dir.display()
                );
                return Ok(child);
            }
            if stop.load(Ordering::SeqCst) {
                stop_unready_child(child)?;
                return Err(StartFailure::Other(EmbeddedError::Interrupted));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartFailure::Other(EmbeddedError::StartTimeout {
                    seconds: START_TIMEOUT.as_secs(),
                    log_tail: read_log_since(&log_path, log_start),
                    log: log_path,
                }));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The test `pg_ctl start --wait` uses: `postmaster.pid` names our child and its status
    /// line (line 8, PostgreSQL 10+) says `ready`; and the socket exists.
    fn accepts_connections(&self, pid: u32) -> bool {
        let Ok(pid_file) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = pid_file.lines().collect();
        let names_child = lines.first().map(|line| line.trim()) == Some(&*pid.to_string());
        let ready = lines.get(7).map(|line| line.trim()) == Some("ready");
        names_child && ready && self.socket_dir.join(SOCKET_FILE).exists()
    }

    pub(super) fn remove_private_socket_dir(&mut self) {
        if self.socket_dir_is_private {
            let _ = fs::remove_dir_all(&self.socket_dir);
            self.socket_dir_is_private = false;
        }
    }
}

enum StartFailure {
    /// Another postmaster still holds this directory's lock file or shared memory.
    LockHeld(EmbeddedError),
    Other(EmbeddedError),
}

impl From<EmbeddedError> for StartFailure {
    fn from(error: EmbeddedError) -> Self {
        StartFailure::Other(error)
    }
}

/// PostgreSQL's messages when an older postmaster (alive, or its backends) still owns the
/// directory: `lock file "postmaster.pid" already exists`, the same for the socket's lock file,
/// and `pre-existing shared memory block ... is still in use`.
fn lock_held_by_older_server(log_tail: &str) -> bool {
    (log_tail.contains("lock file") && log_tail.contains("already exists"))
        || log_tail.contains("pre-existing shared memory block")
}

/// The last lines the server wrote since byte `start` of its log (at most 8 KiB read).
fn read_log_since(path: &Path, start: u64) -> String {
    const MAX_BYTES: u64 = 8 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let end = file.metadata().map(|meta| meta.len()).unwrap_or(start);
    let from = start.max(end.saturating_sub(MAX_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(cannot read {})", path.display());
    }
    last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES)
}

pub(super) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_messages_are_recognised() {
        assert!(lock_held_by_older_server(
            "FATAL:  lock file \"postmaster.pid\" already exists\nHINT: ..."
        ));
        assert!(lock_held_by_older_server(
            "FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use"
        ));
        assert!(!lock_held_by_older_server(
            "FATAL:  data directory has wrong ownership"
        ));
    }
}
