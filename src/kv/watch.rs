//! `--kv-watch`: reload the dataset when its file is replaced or rewritten.
//!
//! inotify watches the file's *directory*, not the file: an atomic replace (write a temporary
//! file, rename it over the dataset) gives the path a new inode, and a watch on the old inode
//! would never hear of it; the directory reports `MOVED_TO` with the file's name. Writes in
//! place report `MODIFY`/`CLOSE_WRITE`. Every event for the name restarts a quiet period
//! ([`QUIET`]); the reload is asked for once none came for that long, so a file written in
//! pieces is read once, whole. A writer that pauses longer than that mid-file makes a reload
//! fail on the half-written file (counted, the old dataset keeps serving); the next events
//! bring the whole file in.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchMask};

use super::{ReloadReason, ReloadTrigger};

/// No event for the file for this long: the writer is done. Long enough for a writer's
/// consecutive `write`s (microseconds apart), short enough to feel immediate.
pub const QUIET: Duration = Duration::from_millis(200);

/// Why the file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {} for --kv-watch: {reason}", dir.display())]
pub struct WatchError {
    dir: PathBuf,
    /// Not a `#[source]`: the message says it already (as `LoadError` does).
    reason: std::io::Error,
}

/// Starts the `tally-kv-watch` thread, which asks `trigger` for a reload whenever `file` is
/// replaced or rewritten. Errors only if the directory cannot be watched; the thread is never
/// joined (it sleeps in `poll` and ends with the process).
pub fn watch(file: &Path, trigger: ReloadTrigger) -> Result<(), WatchError> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let error = |reason| WatchError {
        dir: dir.clone(),
        reason,
    };
    let inotify = Inotify::init().map_err(error)?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE,
        )
        .map_err(error)?;
    log::info!(
        "--kv-watch: reloading {} when it changes (inotify on {})",
        file.display(),
        dir.display()
    );
    std::thread::Builder::new()
        .name("tally-kv-watch".into())
        .spawn(move || run(inotify, &name, &trigger))
        .map(drop)
        .map_err(error)
}

fn run(mut inotify: Inotify, name: &OsString, trigger: &ReloadTrigger) {
    let mut buffer = [0_u8; 4096];
    loop {
        // Sleep until the file is touched, then until it has been quiet for QUIET.
        match wait_for_change(&mut inotify, &mut buffer, name, None) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => return log::error!("--kv-watch stopped: {err}"),
        }
        loop {
            match wait_for_change(&mut inotify, &mut buffer, name, Some(QUIET)) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(err) => return log::error!("--kv-watch stopped: {err}"),
            }
        }
        trigger.request(ReloadReason::FileChanged);
    }
}

/// Waits up to `timeout` (forever with `None`) for inotify events; whether one of them was
/// about the file `name`.
fn wait_for_change(
    inotify: &mut Inotify,
    buffer: &mut [u8],
    name: &OsString,
    timeout: Option<Duration>,
) -> std::io::Result<bool> {
    let mut fds = libc::pollfd {
        fd: inotify.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.map_or(-1, |t| t.as_millis() as libc::c_int);
    // SAFETY: one valid pollfd for the inotify descriptor, which `inotify` keeps open.
    let ready = unsafe { libc::poll(&mut fds, 1, millis) };
    if ready < 0 {
        let err = std::io::Error::last_os_error();
        return match err.kind() {
            std::io::ErrorKind::Interrupted => Ok(false),
            _ => Err(err),
        };
    }
    if ready == 0 {
        return Ok(false);
    }
    let events = match inotify.read_events(buffer) {
        Ok(events) => events,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
        Err(err) => return Err(err),
    };
    let mut about_file = false;
    for event in events {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: the file may have changed.
            about_file = true;
        }
        if event.name.is_some_and(|n| n == name.as_os_str()) {
            about_file = true;
        }
    }
    Ok(about_file)
}
