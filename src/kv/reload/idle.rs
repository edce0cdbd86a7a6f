//! Where and at what priority the reload's threads run: SCHED_IDLE ([`run_when_idle`]), on
//! the CPUs no core serves on ([`spare_cpus`]) or, for a copy, its own core's CPU
//! ([`copy_cpus`]); and [`end_idle_priority`] to let them finish at shutdown. Touches only the
//! calling thread's scheduling (libc), never a serving core's.

/// The CPUs this process may use that no core serves on.
pub(super) fn spare_cpus(allowed: &[usize], serving: &[usize]) -> Vec<usize> {
    let mut spare: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|cpu| !serving.contains(cpu))
        .collect();
    spare.sort_unstable();
    spare.dedup();
    spare
}

/// Where core `core`'s copy runs: its own CPU (`cpu`) and the spare ones.
pub(super) fn copy_cpus(cpu: Option<usize>, spare: &[usize]) -> Vec<usize> {
    let mut cpus: Vec<usize> = cpu.into_iter().chain(spare.iter().copied()).collect();
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

/// Makes the calling thread (`what`, for the log) SCHED_IDLE and, if `cpus` is not empty,
/// keeps it on those CPUs.
///
/// SCHED_IDLE rather than a nice value: a thread at nice 10 on a serving core's CPU still gets
/// a share of it in slices of milliseconds, and a lookup that arrives during one waits for its
/// end (the p99 across a reload at nice 10 and at SCHED_IDLE, from `bench/run.sh reload`, is
/// in docs/benchmarks.md, "Dataset reload"). The scheduler
/// preempts a SCHED_IDLE thread as soon as a normal one wakes, so a serving core or the load
/// generator never waits behind it. If the kernel refuses, nice 19 is the next best thing.
///
/// The returned guard lists the thread for [`end_idle_priority`] while it lives.
pub(super) fn run_when_idle(what: &str, cpus: &[usize]) -> IdleThread {
    let param = libc::sched_param { sched_priority: 0 };
    let idle = IdleThread::register();
    // SAFETY: sched_setscheduler on the calling thread (Linux: pid 0 is this thread) with a
    // valid parameter for SCHED_IDLE (priority 0).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        let idle_error = std::io::Error::last_os_error();
        // SAFETY: setpriority on the calling thread (Linux: `who` 0 with PRIO_PROCESS is this
        // thread, not the whole process).
        let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        log::debug!(
            "key/value reload: {what} cannot run SCHED_IDLE ({idle_error}); nice 19: {}",
            if nice == 0 { "yes" } else { "refused too" }
        );
    }
    if cpus.is_empty() {
        return idle;
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET is given CPUs below
    // CPU_SETSIZE only; sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of `set`.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if pinned != 0 {
        log::debug!(
            "key/value reload: cannot keep {what} on CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    idle
}

/// The threads [`run_when_idle`] made SCHED_IDLE and that are still running, by thread id.
static IDLE_THREADS: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

/// A thread listed in [`IDLE_THREADS`] while this lives (on that thread's stack).
pub(super) struct IdleThread(libc::pid_t);

impl IdleThread {
    fn register() -> IdleThread {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        if let Ok(mut threads) = IDLE_THREADS.lock() {
            threads.push(tid);
        }
        IdleThread(tid)
    }
}

impl Drop for IdleThread {
    fn drop(&mut self) {
        if let Ok(mut threads) = IDLE_THREADS.lock() {
            threads.retain(|&tid| tid != self.0);
        }
    }
}

/// Gives the reload's SCHED_IDLE threads normal priority back, at shutdown: a process has
/// exited only once every thread has, and a SCHED_IDLE thread on a busy CPU can wait seconds
/// for the moment of CPU it needs to do so (a reload during the drain, with both CPUs busy,
/// was seen to delay the exit by seconds after "stopped").
pub fn end_idle_priority() {
    let Ok(threads) = IDLE_THREADS.lock() else {
        return;
    };
    let param = libc::sched_param { sched_priority: 0 };
    for &tid in threads.iter() {
        // SAFETY: sched_setscheduler on a thread of this process (listed only while it
        // runs, under the lock) with a valid parameter for SCHED_OTHER. A thread that has
        // just ended makes it fail with ESRCH, which is fine.
        unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_cpus_are_the_allowed_ones_no_core_serves_on() {
        assert_eq!(spare_cpus(&[0, 1, 2, 3], &[0, 2]), [1, 3]);
        assert_eq!(spare_cpus(&[0], &[0]), [] as [usize; 0]);
        assert_eq!(spare_cpus(&[], &[0]), [] as [usize; 0]);
    }

    #[test]
    fn a_copy_runs_on_its_core_cpu_or_a_spare_one() {
        assert_eq!(copy_cpus(Some(2), &[]), [2]);
        assert_eq!(copy_cpus(Some(2), &[3, 1]), [1, 2, 3]);
        assert_eq!(copy_cpus(None, &[1]), [1]);
    }

    #[test]
    fn reload_threads_run_sched_idle() {
        let policy = std::thread::spawn(|| {
            let _idle = run_when_idle("a test thread", &[]);
            // SAFETY: sched_getscheduler on the calling thread only reads.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_IDLE);
    }
}
