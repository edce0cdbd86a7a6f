//! Setup flags for glommio's io_uring rings, which glommio 0.9 creates with none and offers no
//! way to set.
//!
//! The linker's `--wrap=io_uring_queue_init_params` (in `build.rs`) sends glommio's calls to
//! liburing's ring constructor through [`__wrap_io_uring_queue_init_params`] below, which adds
//! `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG` (Linux 5.19+) and calls the real
//! one; a kernel that refuses the flags (`EINVAL`) gets the ring without them.
//!
//! Why: without COOP_TASKRUN, every completion that needs task work (a socket poll firing, a
//! timeout expiring) interrupts the core with an IPI to run it at once. With it, the work waits
//! for the core's next kernel entry, which a busy core makes soon (it submits and reaps all
//! the time) and an idle one makes when it wakes for the completion anyway: fewer
//! interruptions, less CPU per request. `BASELINE_ARGS="--io-ring-taskrun-flags false"
//! bench/run.sh` measures the difference (docs/benchmarks.md). What it must not break, and the
//! tests below check, is glommio's preemption: a CPU-bound task that calls `yield_if_needed`
//! still yields to timers and I/O.
//!
//! Invariants: the flags are added only while enabled ([`set_enabled`], once at start-up); a
//! ring the kernel refuses with them is asked for again without them. May touch:
//! the flags word of the params glommio passes to liburing, and the process-wide ring counts.
//! tally's own ring (`tally_ring`) sets its flags itself and does not come through here.

#[cfg(test)]
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// `IORING_SETUP_COOP_TASKRUN` (include/uapi/linux/io_uring.h).
const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;
/// `IORING_SETUP_TASKRUN_FLAG`: the kernel marks the SQ ring when task work is pending.
const IORING_SETUP_TASKRUN_FLAG: u32 = 1 << 9;
/// What is added to every ring glommio creates.
pub const ADDED_FLAGS: u32 = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;

/// Whether rings created from now on get [`ADDED_FLAGS`]; set once at start-up.
static ENABLED: AtomicBool = AtomicBool::new(true);
/// Rings created with [`ADDED_FLAGS`] (the kernel accepted them).
static RINGS_WITH_FLAGS: AtomicUsize = AtomicUsize::new(0);
/// Rings the kernel refused with the flags and that were created without them.
static RINGS_REFUSED: AtomicUsize = AtomicUsize::new(0);

#[cfg(test)]
thread_local! {
    /// Tests only: the flags added to this thread's rings instead of [`ADDED_FLAGS`] (to make
    /// the kernel refuse them), and this thread's (with flags, refused) ring counts.
    static TEST_FLAGS: Cell<Option<u32>> = const { Cell::new(None) };
    static TEST_COUNTS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

fn added_flags() -> u32 {
    #[cfg(test)]
    if let Some(flags) = TEST_FLAGS.get() {
        return flags;
    }
    ADDED_FLAGS
}

fn count(with_flags: bool) {
    let counter = if with_flags {
        &RINGS_WITH_FLAGS
    } else {
        &RINGS_REFUSED
    };
    counter.fetch_add(1, Relaxed);
    #[cfg(test)]
    TEST_COUNTS.set({
        let (with, refused) = TEST_COUNTS.get();
        if with_flags {
            (with + 1, refused)
        } else {
            (with, refused + 1)
        }
    });
}

/// Chooses whether the rings of executors started from now on get the flags.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Relaxed);
    // Keeps the wrapper linked in: see `build.rs` (it must be in an object the linker pulls
    // in before it reads glommio's, and this function is called on every start-up).
    std::hint::black_box(__wrap_io_uring_queue_init_params as *const ());
}

/// (rings created with the flags, rings whose creation fell back to none).
pub fn ring_counts() -> (usize, usize) {
    (RINGS_WITH_FLAGS.load(Relaxed), RINGS_REFUSED.load(Relaxed))
}

/// The start of liburing's `struct io_uring_params`: `flags` is its third `u32`.
#[repr(C)]
pub struct IoUringParamsHead {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
}

extern "C" {
    /// liburing's constructor, as `--wrap` renames it.
    fn __real_io_uring_queue_init_params(
        entries: libc::c_uint,
        ring: *mut libc::c_void,
        params: *mut IoUringParamsHead,
    ) -> libc::c_int;
}

/// Called instead of liburing's `io_uring_queue_init_params` (see the module comment).
///
/// # Safety
/// Same contract as liburing's function: `ring` and `params` point to valid, writable
/// `struct io_uring` and `struct io_uring_params`.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_queue_init_params(
    entries: libc::c_uint,
    ring: *mut libc::c_void,
    params: *mut IoUringParamsHead,
) -> libc::c_int {
    // SAFETY: the caller passes a valid params struct (liburing's contract); only the flags
    // word at its start is read and written here.
    unsafe {
        if params.is_null() || !ENABLED.load(Relaxed) {
            return __real_io_uring_queue_init_params(entries, ring, params);
        }
        let requested = (*params).flags;
        (*params).flags = requested | added_flags();
        let rc = __real_io_uring_queue_init_params(entries, ring, params);
        if rc == 0 {
            count(true);
            return rc;
        }
        // liburing returns -errno. EINVAL: a kernel older than 5.19 does not know the flags.
        (*params).flags = requested;
        let rc = __real_io_uring_queue_init_params(entries, ring, params);
        if rc == 0 {
            count(false);
        }
        rc
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    type Body<T> = Pin<Box<dyn Future<Output = T>>>;

    /// Runs `f` on a fresh executor (on its own thread, with a 10 ms preemption timer) whose
    /// rings get `flags` added, and returns its output with that thread's ring counts.
    fn on_executor<T: Send + 'static>(
        flags: u32,
        f: impl FnOnce() -> Body<T> + Send + 'static,
    ) -> (T, (usize, usize)) {
        set_enabled(true);
        std::thread::spawn(move || {
            TEST_FLAGS.set(Some(flags));
            let out = LocalExecutorBuilder::new(Placement::Unbound)
                .preempt_timer(Duration::from_millis(10))
                .io_memory(64 * 1024)
                .make()
                .expect("an executor")
                .run(f());
            (out, TEST_COUNTS.get())
        })
        .join()
        .expect("the executor thread")
    }

    /// Spins, yielding only when glommio says it must, until `done` or `limit`.
    async fn cpu_bound(done: Rc<Cell<bool>>, limit: Duration) {
        let started = Instant::now();
        while !done.get() && started.elapsed() < limit {
            std::hint::black_box((0..1000u64).sum::<u64>());
            glommio::yield_if_needed().await;
        }
    }

    #[test]
    fn glommios_rings_are_created_with_the_taskrun_flags() {
        let ((), (with_flags, refused)) = on_executor(ADDED_FLAGS, || Box::pin(async {}));
        assert_eq!(refused, 0, "this kernel (>= 5.19) refused the flags");
        // glommio makes at least three rings per executor: main, latency and poll.
        assert!(with_flags >= 3, "{with_flags} rings got the flags");
    }

    #[test]
    fn rings_the_kernel_refuses_with_the_flags_are_made_without_them() {
        // No kernel knows setup flag 1 << 31: io_uring_setup answers EINVAL.
        let (slept, (with_flags, refused)) = on_executor(ADDED_FLAGS | 1 << 31, || {
            Box::pin(async {
                let asked = Instant::now();
                glommio::timer::sleep(Duration::from_millis(5)).await;
                asked.elapsed()
            })
        });
        assert_eq!(with_flags, 0);
        assert!(refused >= 3, "{refused} rings fell back");
        assert!(
            slept >= Duration::from_millis(5),
            "the executor works without the flags"
        );
    }

    #[test]
    fn a_cpu_bound_task_still_yields_to_a_timer() {
        let (late, _) = on_executor(ADDED_FLAGS, || {
            Box::pin(async {
                let done = Rc::new(Cell::new(false));
                // Spawned first, so its timer is armed before the spinner starts.
                let timer = glommio::spawn_local({
                    let done = done.clone();
                    async move {
                        let asked = Instant::now();
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                        done.set(true);
                        asked.elapsed()
                    }
                });
                glommio::spawn_local(cpu_bound(done, Duration::from_secs(3))).await;
                timer.await
            })
        });
        // Without preemption the timer would wait for the spinner's 3 s; with it, 20 ms plus at
        // most one 10 ms preemption period, flags or not. The bound leaves room for a loaded
        // CI machine.
        assert!(
            late < Duration::from_millis(500),
            "the timer fired after {late:?}"
        );
    }

    #[test]
    fn a_cpu_bound_task_still_yields_to_socket_io() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            let (mut stream, _) = listener.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(20));
            stream.write_all(b"x").expect("write");
            Instant::now()
        });
        let (read_at, _) = on_executor(ADDED_FLAGS, move || {
            Box::pin(async move {
                use futures_lite::AsyncReadExt as _;
                let mut stream = glommio::net::TcpStream::connect(addr)
                    .await
                    .expect("connect");
                let done = Rc::new(Cell::new(false));
                let spinner = glommio::spawn_local(cpu_bound(done.clone(), Duration::from_secs(3)));
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.expect("read");
                let at = Instant::now();
                done.set(true);
                spinner.await;
                at
            })
        });
        let written_at = writer.join().expect("writer thread");
        let late = read_at.saturating_duration_since(written_at);
        assert!(
            late < Duration::from_millis(500),
            "the read completed {late:?} after the write"
        );
    }
}
