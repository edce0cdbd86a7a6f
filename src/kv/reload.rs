//! Reloading the dataset while tally serves: parse and validate the file on the reload thread
//! (never on a serving core's thread), turn the parsed arrays into the last core's new
//! [`Replica`] (no copy), copy it for the other cores on one thread each, and hand each core
//! its replica, which the core swaps in between two requests (a pointer swap). A lookup
//! therefore sees the old or the new dataset, never a mix, and a core never stops serving while
//! a replica is built.
//!
//! Every thread of a reload runs SCHED_IDLE ([`run_when_idle`]): it gets only CPU time that
//! no serving core, and nothing else on the machine, wants, so a reload costs lookups no
//! latency and takes longer only on a busy machine. It runs on the CPUs tally may use but
//! serves on none of (`taskset` wider than `--cores`) when there are any; otherwise in the
//! serving CPUs' idle time, each copy on its own core's CPU (its memory first touched there,
//! as at start-up).
//!
//! Memory: the old replicas are freed on the reload thread once every core has swapped. The
//! peak is the old replicas plus the new dataset being parsed (the file's bytes and the
//! dataset, each at most the file's size) or plus the new replicas (each at most the file's
//! size): at most `old + file size x (1 + cores)`, checked against `max_bytes` before anything
//! is read.
//!
//! Requests (SIGHUP, the file watcher, the admin endpoint) go through a [`ReloadTrigger`]; one
//! reload runs at a time and requests that arrive meanwhile are folded into one more.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{load, LoadError, Replica};
use crate::metrics;

/// How long the reload thread waits for every core to swap before it reports the reload as
/// finished anyway (a core that is draining for shutdown never swaps).
const SWAP_WAIT: Duration = Duration::from_secs(30);

/// Why a reload was asked for, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadReason {
    Signal,
    FileChanged,
    Admin,
}

impl std::fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReloadReason::Signal => "SIGHUP",
            ReloadReason::FileChanged => "the file changed",
            ReloadReason::Admin => "POST /admin/kv/reload",
        })
    }
}

/// What became of a reload request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// A reload will start (or one already waiting will include this request).
    Queued,
    /// tally serves the built-in sample: there is no file to reload.
    NothingToReload,
    /// The reload thread is gone (tally is stopping).
    Stopped,
}

/// Asks the reload thread for a reload; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ReloadTrigger {
    /// Bounded to one: a request that finds one waiting is folded into it.
    tx: flume::Sender<ReloadReason>,
    has_file: bool,
}

impl ReloadTrigger {
    pub fn request(&self, reason: ReloadReason) -> Requested {
        if !self.has_file {
            log::info!(
                "key/value reload ({reason}): nothing to reload, tally serves the built-in sample \
                 (no --kv-data)"
            );
            return Requested::NothingToReload;
        }
        match self.tx.try_send(reason) {
            Ok(()) | Err(flume::TrySendError::Full(_)) => Requested::Queued,
            Err(flume::TrySendError::Disconnected(_)) => Requested::Stopped,
        }
    }
}

/// The reload thread's receiving end, until [`spawn`] starts it.
pub struct ReloadRequests {
    rx: flume::Receiver<ReloadReason>,
}

/// A trigger and the requests it sends. Made before start-up so SIGHUP can be handled from the
/// start; requests made before the reload thread runs wait for it.
pub fn reload_channel(file: Option<&std::path::Path>) -> (ReloadTrigger, ReloadRequests) {
    let (tx, rx) = flume::bounded(1);
    (
        ReloadTrigger {
            tx,
            has_file: file.is_some(),
        },
        ReloadRequests { rx },
    )
}

/// A new replica for one core, and where to say it is in.
pub struct Swap {
    pub replica: Replica,
    /// The core sends its id and its old replica once the new one serves: the reload thread
    /// frees the old ones (at 10M pairs, unmapping 0.4 GB is a pause no serving core should
    /// take), after every core has swapped.
    pub done: flume::Sender<Swapped>,
}

/// A core's answer to a [`Swap`].
pub struct Swapped {
    pub core: usize,
    pub old: Replica,
}

/// The dataset's state for `/metrics`; written by the reload thread, read by any core.
#[derive(Default)]
pub struct ReloadStatus {
    /// 1 for the dataset loaded at start-up, +1 for every reload every core swapped in.
    generation: AtomicU64,
    pairs: AtomicU64,
    /// Unix seconds when the current dataset finished loading (every core swapped).
    loaded_unix_seconds: AtomicU64,
    /// Parse + build + swap of the current dataset, in microseconds.
    load_micros: AtomicU64,
    failures: AtomicU64,
    /// The last failure's message (file, position, reason); empty after a success.
    last_error: Mutex<String>,
}

impl ReloadStatus {
    /// The status of the dataset loaded at start-up.
    pub fn initial(pairs: usize, load_time: Duration) -> ReloadStatus {
        let status = ReloadStatus::default();
        status.generation.store(1, Relaxed);
        status.loaded(pairs, load_time);
        status
    }

    fn loaded(&self, pairs: usize, took: Duration) {
        self.pairs.store(pairs as u64, Relaxed);
        self.loaded_unix_seconds.store(unix_seconds(), Relaxed);
        self.load_micros.store(took.as_micros() as u64, Relaxed);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    fn lock_error(&self) -> std::sync::MutexGuard<'_, String> {
        // A panic while holding it leaves a plain String, still usable.
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the dataset metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let singles: [(&str, &str, &str, u64); 4] = [
            (
                "tally_kv_generation",
                "gauge",
                "Key/value dataset generation: 1 at start-up, +1 per reload every core swapped in.",
                self.generation(),
            ),
            (
                "tally_kv_pairs",
                "gauge",
                "Pairs in the current key/value dataset.",
                self.pairs.load(Relaxed),
            ),
            (
                "tally_kv_last_load_timestamp_seconds",
                "gauge",
                "Unix time the current key/value dataset finished loading.",
                self.loaded_unix_seconds.load(Relaxed),
            ),
            (
                "tally_kv_reload_failures_total",
                "counter",
                "Key/value reloads refused or failed (the previous dataset kept serving).",
                self.failures(),
            ),
        ];
        for (name, kind, help, value) in singles {
            metrics::write_single(out, name, kind, help, value);
        }
        metrics::write_header(
            out,
            "tally_kv_last_load_duration_seconds",
            "gauge",
            "Time to parse the current key/value dataset and build and swap in every replica.",
        );
        let seconds = self.load_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "tally_kv_last_load_duration_seconds {seconds}");
        let error = self.lock_error();
        if !error.is_empty() {
            metrics::write_header(
                out,
                "tally_kv_last_reload_error_info",
                "gauge",
                "The last failed key/value reload's reason (file, position, cause).",
            );
            let _ = writeln!(
                out,
                "tally_kv_last_reload_error_info{{reason=\"{}\"}} 1",
                escape_label(&error)
            );
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prometheus label value escaping: backslash, double quote and newline.
fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// Why a reload did not happen; the old dataset keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "{}: refused: the reload could need {needed} bytes (old replicas {old} + the new \
         file's {file_bytes} bytes x (1 + {cores} cores)), over --kv-reload-max-bytes {limit}",
        path.display()
    )]
    OverMemoryLimit {
        path: PathBuf,
        needed: u64,
        old: u64,
        file_bytes: u64,
        cores: usize,
        limit: u64,
    },
    #[error("{}: cannot read the dataset file: {reason}", path.display())]
    Stat {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("tally is stopping")]
    Stopping,
    #[error(
        "only {swapped} of {cores} cores swapped in the new dataset within {SWAP_WAIT:?}; \
         the others serve the old one until they do"
    )]
    SwapTimeout { swapped: usize, cores: usize },
}

/// A reload that every core swapped in.
struct Loaded {
    pairs: usize,
    /// Reading, validating and sorting the file.
    parse: Duration,
    /// From the end of the parse until the last core swapped (the copies and the swaps).
    swap_after_parse: Duration,
}

/// What the reload thread is given.
pub struct Reloader {
    pub path: PathBuf,
    /// Refuse a reload whose estimated peak is above this many bytes (`None`: no limit).
    pub max_bytes: Option<u64>,
    /// Each core's CPU, in core order; replica `i` is built on a thread pinned to `cpus[i]`.
    pub cpus: Vec<usize>,
    /// Each core's swap channel, in core order.
    pub cores: Vec<flume::Sender<Swap>>,
    pub status: Arc<ReloadStatus>,
    /// Heap bytes of one replica of the dataset serving now.
    pub replica_bytes: u64,
}

impl Reloader {
    /// Starts the reload thread; it ends when every [`ReloadTrigger`] is dropped. Nobody joins
    /// it: a reload under way when tally stops is abandoned with the process.
    pub fn spawn(mut self, requests: ReloadRequests) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("tally-kv-reload".into())
            .spawn(move || {
                // The new thread has the process's CPUs (main's affinity, not a core's).
                let allowed: Vec<usize> = core_affinity::get_core_ids()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|core| core.id)
                    .collect();
                let spare = spare_cpus(&allowed, &self.cpus);
                log::debug!("key/value reload: spare CPUs {spare:?}");
                let _idle = run_when_idle("the reload thread", &spare);
                for reason in requests.rx.iter() {
                    self.reload(reason, &spare);
                }
            })
            .map(drop)
    }

    /// Reloads the file; `spare` are the CPUs no core serves on (where the copies may run).
    fn reload(&mut self, reason: ReloadReason, spare: &[usize]) {
        log::info!(
            "key/value reload ({reason}): loading {}",
            self.path.display()
        );
        let started = Instant::now();
        match self.load_and_swap(started, spare) {
            Ok(Loaded {
                pairs,
                parse,
                swap_after_parse,
            }) => {
                self.status.generation.fetch_add(1, Relaxed);
                self.status.loaded(pairs, started.elapsed());
                self.status.lock_error().clear();
                log::info!(
                    "key/value reload ({reason}): generation {}, {pairs} pairs, {} bytes per \
                     replica, every core swapped in {:?} (parsed in {parse:?}, every core \
                     swapped {swap_after_parse:?} after that)",
                    self.status.generation(),
                    self.replica_bytes,
                    started.elapsed()
                );
            }
            Err(ReloadError::Stopping) => {
                log::info!("key/value reload ({reason}) abandoned: tally is stopping")
            }
            Err(err @ ReloadError::SwapTimeout { .. }) => {
                // Some cores serve the new data, others the old: say so, count nothing.
                log::error!("key/value reload ({reason}): {err}");
            }
            Err(err) => {
                self.status.failures.fetch_add(1, Relaxed);
                *self.status.lock_error() = err.to_string();
                log::error!(
                    "key/value reload ({reason}) failed, generation {} keeps serving: {err}",
                    self.status.generation()
                );
            }
        }
    }

    /// Parses the file, builds every core's replica and waits until every core serves it.
    fn load_and_swap(&mut self, started: Instant, spare: &[usize]) -> Result<Loaded, ReloadError> {
        self.check_memory()?;
        let dataset = load(&self.path)?;
        let parsed = Instant::now();
        let parse = parsed - started;
        let pairs = dataset.len();
        log::debug!("key/value reload: {pairs} pairs parsed in {parse:?}");
        let deadline = parsed + SWAP_WAIT;
        let (done_tx, done) = flume::unbounded();
        let Some((last, others)) = self.cores.split_last() else {
            return Err(ReloadError::Stopping);
        };
        // The last core's replica is the parsed arrays; the other cores' are copies of it.
        let replica = Arc::new(Replica::from_dataset(dataset));
        let new_replica_bytes = replica.memory_bytes() as u64;
        let (copied_tx, copied) = flume::bounded::<()>(0);
        for (core, swaps) in others.iter().enumerate() {
            let copy = ReplicaCopy {
                core,
                cpus: copy_cpus(self.cpus.get(core).copied(), spare),
                original: replica.clone(),
                copied: copied_tx.clone(),
                swaps: swaps.clone(),
                done: done_tx.clone(),
            };
            spawn_copy(copy).map_err(|_| ReloadError::Stopping)?;
        }
        drop(copied_tx);
        // Every copier drops its reference before its `copied` sender: once all are gone, the
        // original is the reload thread's alone.
        if let Err(flume::RecvTimeoutError::Timeout) = copied.recv_deadline(deadline) {
            return Err(ReloadError::SwapTimeout {
                swapped: done.len(),
                cores: self.cores.len(),
            });
        }
        // A copier that panicked may still hold its reference while unwinding: copy then.
        let replica = Arc::try_unwrap(replica).unwrap_or_else(|shared| Replica::clone(&shared));
        let swap = Swap {
            replica,
            done: done_tx,
        };
        match last.send_deadline(swap, deadline) {
            Ok(()) => {}
            Err(flume::SendTimeoutError::Timeout(_)) => {
                return Err(ReloadError::SwapTimeout {
                    swapped: done.len(),
                    cores: self.cores.len(),
                })
            }
            Err(flume::SendTimeoutError::Disconnected(_)) => return Err(ReloadError::Stopping),
        }
        let mut old = Vec::with_capacity(self.cores.len());
        while old.len() < self.cores.len() {
            match done.recv_deadline(deadline) {
                Ok(Swapped { core, old: replica }) => {
                    log::debug!("key/value reload: core {core} swapped");
                    old.push(replica);
                }
                Err(flume::RecvTimeoutError::Disconnected) => return Err(ReloadError::Stopping),
                Err(flume::RecvTimeoutError::Timeout) => {
                    return Err(ReloadError::SwapTimeout {
                        swapped: old.len(),
                        cores: self.cores.len(),
                    })
                }
            }
        }
        let swap_after_parse = parsed.elapsed();
        // Every core serves the new dataset: the old replicas go now, on this thread.
        drop(old);
        self.replica_bytes = new_replica_bytes;
        Ok(Loaded {
            pairs,
            parse,
            swap_after_parse,
        })
    }

    /// Refuses a reload whose peak (old replicas + new file x (1 + cores)) would pass the limit.
    fn check_memory(&self) -> Result<(), ReloadError> {
        let Some(limit) = self.max_bytes else {
            return Ok(());
        };
        let file_bytes = std::fs::metadata(&self.path)
            .map_err(|reason| ReloadError::Stat {
                path: self.path.clone(),
                reason,
            })?
            .len();
        let cores = self.cores.len();
        let old = self.replica_bytes * cores as u64;
        let needed = reload_peak_bytes(old, file_bytes, cores);
        if needed > limit {
            return Err(ReloadError::OverMemoryLimit {
                path: self.path.clone(),
                needed,
                old,
                file_bytes,
                cores,
                limit,
            });
        }
        Ok(())
    }
}

/// The most memory a reload may hold at once: the old replicas, plus the file's bytes and the
/// parsed dataset while parsing, or the dataset and the new replicas while building (a parsed
/// dataset and a replica are each at most the file's size: a key takes 36 bytes of text and 22
/// bytes of table).
pub fn reload_peak_bytes(old_replicas: u64, file_bytes: u64, cores: usize) -> u64 {
    old_replicas.saturating_add(file_bytes.saturating_mul(1 + cores.max(1) as u64))
}

/// The CPUs this process may use that no core serves on.
fn spare_cpus(allowed: &[usize], serving: &[usize]) -> Vec<usize> {
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
fn copy_cpus(cpu: Option<usize>, spare: &[usize]) -> Vec<usize> {
    let mut cpus: Vec<usize> = cpu.into_iter().chain(spare.iter().copied()).collect();
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

/// Makes the calling thread (`what`, for the log) SCHED_IDLE and, if `cpus` is not empty,
/// keeps it on those CPUs.
///
/// SCHED_IDLE rather than a nice value: a thread at nice 10 on a serving core's CPU still gets
/// ~10% of it in slices of a few ms, and a lookup that arrives during one waits for its end
/// (p99 1.04 ms steady, 8.40 ms during a 10M-pair reload, bench/run.sh reload). The scheduler
/// preempts a SCHED_IDLE thread as soon as a normal one wakes, so a serving core or the load
/// generator never waits behind it. If the kernel refuses, nice 19 is the next best thing.
///
/// The returned guard lists the thread for [`end_idle_priority`] while it lives.
fn run_when_idle(what: &str, cpus: &[usize]) -> IdleThread {
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
struct IdleThread(libc::pid_t);

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

/// One core's copy of the new replica, made on its own thread.
struct ReplicaCopy {
    core: usize,
    /// Where the copy runs (see [`copy_cpus`]).
    cpus: Vec<usize>,
    original: Arc<Replica>,
    /// Dropped once `original` is: the reload thread then owns it alone.
    copied: flume::Sender<()>,
    swaps: flume::Sender<Swap>,
    done: flume::Sender<Swapped>,
}

/// Copies the new replica for `copy.core` on a thread of its own and sends it to the core.
fn spawn_copy(copy: ReplicaCopy) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("tally-kv-copy-{}", copy.core))
        .spawn(move || {
            let ReplicaCopy {
                core,
                cpus,
                original,
                copied,
                swaps,
                done,
            } = copy;
            let _idle = run_when_idle("a replica copier", &cpus);
            let started = Instant::now();
            let replica = Replica::clone(&original);
            drop(original);
            drop(copied);
            log::debug!(
                "key/value reload: core {core}'s replica copied in {:?}",
                started.elapsed()
            );
            // A core that stopped has dropped its receiver; the reload thread then times out.
            let _ = swaps.send(Swap { replica, done });
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_estimate_counts_old_replicas_file_and_one_copy_per_core() {
        assert_eq!(reload_peak_bytes(200, 100, 2), 200 + 300);
        assert_eq!(reload_peak_bytes(0, 100, 0), 200);
        assert_eq!(reload_peak_bytes(u64::MAX, 1, 1), u64::MAX);
    }

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

    #[test]
    fn a_request_without_a_file_is_nothing_to_reload() {
        let (trigger, _requests) = reload_channel(None);
        assert_eq!(
            trigger.request(ReloadReason::Signal),
            Requested::NothingToReload
        );
    }

    #[test]
    fn requests_made_while_one_waits_are_folded_into_it() {
        let (trigger, requests) = reload_channel(Some(std::path::Path::new("x.json")));
        for _ in 0..3 {
            assert_eq!(trigger.request(ReloadReason::Admin), Requested::Queued);
        }
        assert_eq!(requests.rx.len(), 1);
        drop(requests);
        assert_eq!(trigger.request(ReloadReason::Admin), Requested::Stopped);
    }

    #[test]
    fn metrics_report_generation_and_the_last_error_escaped() {
        let status = ReloadStatus::initial(5, Duration::from_millis(1500));
        *status.lock_error() = "a.json: line 2: \"bad\"".into();
        status.failures.fetch_add(1, Relaxed);
        let mut out = String::new();
        status.render(&mut out);
        assert!(out.contains("tally_kv_generation 1\n"), "{out}");
        assert!(out.contains("tally_kv_pairs 5\n"), "{out}");
        assert!(out.contains("tally_kv_reload_failures_total 1\n"), "{out}");
        assert!(
            out.contains("tally_kv_last_load_duration_seconds 1.5\n"),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_kv_last_reload_error_info{reason="a.json: line 2: \"bad\""} 1"#),
            "{out}"
        );
    }

    #[test]
    fn a_reload_builds_every_core_a_replica_and_counts_a_generation() {
        let dir = std::env::temp_dir().join(format!("tally-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("data.jsonl");
        let dataset = crate::kv::sample(100, 3);
        crate::kv::write(&dataset, &path).expect("write");
        let expected: Vec<(u128, String)> =
            dataset.iter().map(|(k, v)| (k, v.to_owned())).collect();
        let expected = Arc::new(expected);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| flume::unbounded()).unzip();
        let status = Arc::new(ReloadStatus::initial(10, Duration::ZERO));
        let mut reloader = Reloader {
            path: path.clone(),
            max_bytes: None,
            cpus: vec![0, 0, 0],
            cores: senders,
            status: status.clone(),
            replica_bytes: 0,
        };
        let cores: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(core, swaps)| {
                let expected = expected.clone();
                std::thread::spawn(move || {
                    let swap: Swap = swaps.recv().expect("a swap");
                    for (key, value) in expected.iter() {
                        assert_eq!(swap.replica.get(*key), Some(value.as_str()));
                    }
                    let old = Replica::build(&crate::kv::sample(1, 1));
                    swap.done.send(Swapped { core, old }).expect("done");
                })
            })
            .collect();
        reloader.reload(ReloadReason::Signal, &[]);
        for core in cores {
            core.join().expect("core");
        }
        assert_eq!(status.generation(), 2);
        assert_eq!(status.pairs.load(Relaxed), 100);
        assert!(reloader.replica_bytes > 0);

        // Over the limit: refused before reading, counted, generation unchanged.
        reloader.max_bytes = Some(1);
        reloader.reload(ReloadReason::Signal, &[]);
        assert_eq!(status.generation(), 2);
        assert_eq!(status.failures(), 1);
        assert!(status.lock_error().contains("--kv-reload-max-bytes"));

        // A broken file: the position is in the error.
        reloader.max_bytes = None;
        std::fs::write(&path, "{\"key\":\"nope\",\"value\":\"x\"}\n").expect("write");
        reloader.reload(ReloadReason::FileChanged, &[]);
        assert_eq!(status.generation(), 2);
        assert_eq!(status.failures(), 2);
        assert!(
            status.lock_error().contains("line 1"),
            "{}",
            status.lock_error()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
