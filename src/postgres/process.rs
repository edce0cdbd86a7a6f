//! Child processes: the signals they start with and die with, and stopping them (fast
//! shutdown, escalation, SIGKILL at the deadline). Knows nothing of PostgreSQL beyond which
//! signal means what to a postmaster.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::EmbeddedError;

/// How often a wait for a child (or for the server to accept connections) looks again.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Fast shutdown ends with a checkpoint, which is quick for one row.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `signal` (SIGINT: PostgreSQL's fast shutdown) and waits up to `timeout`; past that,
/// SIGKILL and [`EmbeddedError::StopTimeout`].
pub(super) fn stop_child(
    child: Child,
    signal_number: libc::c_int,
    timeout: Duration,
) -> Result<(), EmbeddedError> {
    stop_child_escalating(child, signal_number, None, timeout)
}

/// [`stop_child`], with `escalate`: if the child still runs after its delay, its signal too.
fn stop_child_escalating(
    mut child: Child,
    signal_number: libc::c_int,
    mut escalate: Option<(Duration, libc::c_int)>,
    timeout: Duration,
) -> Result<(), EmbeddedError> {
    signal(&child, signal_number);
    let started = Instant::now();
    while started.elapsed() < timeout {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(_) => break,
        }
        if let Some((after, next)) = escalate.filter(|&(after, _)| started.elapsed() >= after) {
            log::warn!(
                "PostgreSQL (pid {}) still runs {after:?} after signal {signal_number}; sending \
                 signal {next}",
                child.id()
            );
            signal(&child, next);
            escalate = None;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(EmbeddedError::StopTimeout {
        seconds: timeout.as_secs(),
    })
}

/// How long a postmaster stopped before it was ready gets for its fast shutdown before it is
/// told to shut down immediately.
const UNREADY_FAST_STOP: Duration = Duration::from_secs(5);

/// Stops a postmaster that has not become ready (a stop request during start-up): a fast shutdown,
/// then, if it has not ended after [`UNREADY_FAST_STOP`], an immediate one (SIGQUIT), then SIGKILL
/// at [`STOP_TIMEOUT`]. A server that never accepted a connection has nothing an immediate shutdown
/// could lose (the next start replays its WAL). The signal comes right after the spawn, in the
/// postmaster's first moments, where any loss of it (see [`default_stop_signals`] for the one
/// found) would otherwise cost the whole [`STOP_TIMEOUT`].
pub(super) fn stop_unready_child(child: Child) -> Result<(), EmbeddedError> {
    stop_unready_child_within(child, UNREADY_FAST_STOP)
}

fn stop_unready_child_within(child: Child, fast_stop: Duration) -> Result<(), EmbeddedError> {
    stop_child_escalating(
        child,
        libc::SIGINT,
        Some((fast_stop, libc::SIGQUIT)),
        STOP_TIMEOUT,
    )
}

/// An anonymous file in memory (`memfd_create`), gone when its last descriptor closes.
pub(super) fn memory_file(name: &std::ffi::CStr) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `name` is NUL-terminated; memfd_create has no other preconditions.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The signals tally stops its PostgreSQL programs with start at their default action in the
/// child, whatever tally inherited. An ignored signal stays ignored across `exec` (std resets
/// only SIGPIPE and the mask), and a shell starts every background command (`tally &` in a
/// script) with SIGINT and SIGQUIT ignored: a fast-shutdown request that reached a postmaster
/// before it installed its own handler was then dropped, and the postmaster ran on until the
/// stop timeout killed it (seen as a flaky test when the suite ran in the background).
pub(super) fn default_stop_signals(command: &mut Command) {
    // SAFETY: the closure only calls signal(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            for stop in STOP_SIGNALS {
                if libc::signal(stop, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// What [`default_stop_signals`] resets.
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP];

/// The child gets `signal` when the thread that spawned it ends (PR_SET_PDEATHSIG), even if
/// tally is SIGKILLed.
pub(super) fn die_with_parent(command: &mut Command, signal: libc::c_int) {
    // SAFETY: getpid is async-signal-safe; the closure below only calls prctl and getppid
    // (both async-signal-safe) and builds an io::Error from an errno without allocating.
    let parent = unsafe { libc::getpid() };
    unsafe {
        command.pre_exec(move || {
            // std has already switched uid/gid here; a credential change would clear the
            // death signal, which is why it is set now and not earlier.
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so the
        // pid still names it.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

pub(super) fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn an_unready_server_that_ignores_a_fast_shutdown_is_stopped_immediately() {
        let mut command = Command::new("sh");
        command.args(["-c", "trap '' INT; while :; do sleep 0.05; done"]);
        // The test's own SIGQUIT may be ignored (a background job of a shell), and a shell
        // cannot trap or reset a signal ignored on entry.
        default_stop_signals(&mut command);
        let child = command.spawn().expect("sh");
        // Let the shell install its trap first.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let stopped = stop_unready_child_within(child, Duration::from_millis(300));
        assert!(stopped.is_ok(), "{stopped:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn programs_start_with_the_stop_signals_at_their_default_action() {
        let mut command = Command::new("sh");
        // SigIgn in /proc/self/status is the mask of ignored signals (bit N-1 for signal N).
        command
            .args(["-c", "grep SigIgn /proc/self/status"])
            .stdout(Stdio::piped());
        // SAFETY: signal(2) is async-signal-safe. The child ignores them before the reset.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
        default_stop_signals(&mut command);
        let out = command.output().expect("sh");
        let line = String::from_utf8_lossy(&out.stdout);
        let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16)
            .expect("SigIgn mask");
        for stop in STOP_SIGNALS {
            assert_eq!(mask & (1 << (stop - 1)), 0, "signal {stop} ignored: {line}");
        }
    }
}
