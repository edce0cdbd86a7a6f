//! Checks, before any executor starts, that this process can use io_uring, and says what to
//! change when it cannot. glommio has no epoll fallback, and its own failures are terse.
//!
//! May touch: the process's memlock limit (read), `/proc/sys/kernel/io_uring_disabled`, and
//! one throwaway ring, closed at once. Not tally's ring (`tally_ring`), not glommio's flags
//! (`glommio_ring_flags`).

/// Locked memory glommio needs at the least (it refuses to start below this).
const MIN_MEMLOCK_BYTES: u64 = 512 * 1024;

/// Appended to executor start-up failures.
pub const HINT: &str = "tally needs io_uring: Linux >= 5.8, sysctl kernel.io_uring_disabled=0, \
    a seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register, and \
    `ulimit -l` of at least 512 KiB";

/// Why this process cannot use io_uring, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("io_uring is not available: {what}")]
pub struct UringError {
    what: String,
}

fn fail(what: impl Into<String>) -> Result<(), UringError> {
    Err(UringError { what: what.into() })
}

/// Verifies memlock, the io_uring sysctl, and that a ring can really be created.
pub fn check() -> Result<(), UringError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
        && limit.rlim_cur < MIN_MEMLOCK_BYTES
    {
        return fail(format!(
            "the locked-memory limit is {} KiB and glommio needs at least 512 KiB: \
             raise it with `ulimit -l 8192`, LimitMEMLOCK= in a systemd unit, or \
             `ulimits: memlock` in compose.yaml",
            limit.rlim_cur / 1024
        ));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match text.trim() {
            "0" => {}
            "1" => {
                // 1: only members of kernel.io_uring_group (or CAP_SYS_ADMIN) may use it; the
                // probe below tells whether this process is one of them.
            }
            v => {
                return fail(format!(
                    "sysctl kernel.io_uring_disabled is {v}: set it to 0 \
                     (`sysctl -w kernel.io_uring_disabled=0`, see sysctl.conf)"
                ))
            }
        }
    }
    probe_ring()
}

/// Creates and closes a one-entry ring with the raw system call.
fn probe_ring() -> Result<(), UringError> {
    // struct io_uring_params is 120 bytes; zeroed is a valid request for default flags.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params`, a buffer of the kernel's struct size.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd is the ring the kernel just gave us.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let why = match err.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (Linux >= 5.8 is needed) or a seccomp \
            profile hides it (Docker's default does: use the seccomp profile shipped with tally)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "permission denied: kernel.io_uring_disabled \
            forbids it for this user, or a seccomp profile blocks io_uring_setup (Docker's \
            default does: use the seccomp profile shipped with tally)"
        }
        Some(libc::ENOMEM) => "out of locked memory: raise `ulimit -l` (memlock)",
        _ => "",
    };
    fail(format!("io_uring_setup failed: {err}. {why}"))
}
