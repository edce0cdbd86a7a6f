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
//!
//! The path may also change under another name: a Kubernetes ConfigMap mounts the file as a
//! symlink through `..data`, and an update renames a new `..data` over the old one, so the
//! only event names `..data`. So an event for any other name in the directory counts when
//! what the path resolves to ([`Identity`]: device, inode, size, modification time) changed.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
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
    let file_path = file.to_owned();
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
        .spawn(move || run(inotify, Target::new(file_path, name), &trigger))
        .map(drop)
        .map_err(error)
}

/// What the path resolves to, following symlinks; `None` while it does not resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_nanos: i128,
}

impl Identity {
    fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_nanos: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// The watched file: its name in the directory, and what its path resolved to when last seen.
struct Target {
    path: PathBuf,
    name: OsString,
    seen: Option<Identity>,
}

impl Target {
    fn new(path: PathBuf, name: OsString) -> Target {
        let seen = Identity::of(&path);
        Target { path, name, seen }
    }

    /// Whether the path resolves to something else than when last asked.
    fn resolves_elsewhere(&mut self) -> bool {
        let now = Identity::of(&self.path);
        now != std::mem::replace(&mut self.seen, now)
    }
}

fn run(mut inotify: Inotify, mut target: Target, trigger: &ReloadTrigger) {
    let mut buffer = [0_u8; 4096];
    loop {
        // Sleep until the file is touched, then until it has been quiet for QUIET.
        match wait_for_change(&mut inotify, &mut buffer, &mut target, None) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => return log::error!("--kv-watch stopped: {err}"),
        }
        loop {
            match wait_for_change(&mut inotify, &mut buffer, &mut target, Some(QUIET)) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(err) => return log::error!("--kv-watch stopped: {err}"),
            }
        }
        trigger.request(ReloadReason::FileChanged);
    }
}

/// Waits up to `timeout` (forever with `None`) for inotify events; whether one of them was
/// about the file: it names the file, or it names another entry and the file's path now
/// resolves elsewhere.
fn wait_for_change(
    inotify: &mut Inotify,
    buffer: &mut [u8],
    target: &mut Target,
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
    let mut about_others = false;
    for event in events {
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: the file may have changed.
            about_file = true;
        }
        match event.name {
            Some(n) if n == target.name.as_os_str() => about_file = true,
            _ => about_others = true,
        }
    }
    // Asked on every batch of events, so `seen` follows the file through its own changes too
    // and an unrelated entry touched later does not count as a change.
    let elsewhere = (about_file || about_others) && target.resolves_elsewhere();
    Ok(about_file || elsewhere)
}
