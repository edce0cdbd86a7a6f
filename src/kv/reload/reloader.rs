//! The reload thread: [`Reloader`] waits for requests, checks the memory a reload could need,
//! parses the file, builds every core's replica (copies on their own threads) and waits until
//! every core serves it, then records the outcome in the [`ReloadStatus`]. The only file here
//! that reads the dataset file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::copy::{spawn_copy, ReplicaCopy};
use super::error::ReloadError;
use super::idle::{copy_cpus, run_when_idle, spare_cpus};
use super::status::ReloadStatus;
use super::swap::{Swap, Swapped, SWAP_WAIT};
use super::trigger::{ReloadReason, ReloadRequests};
use crate::kv::{load, Replica};

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
    /// Starts the reload thread; it ends when every [`ReloadTrigger`](super::ReloadTrigger) is
    /// dropped. Nobody joins it: a reload under way when tally stops is abandoned with the
    /// process.
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
                self.status.reloaded(pairs, started.elapsed());
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
                self.status.failed(err.to_string());
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
        let replica = Replica::from_dataset(dataset);
        let new_replica_bytes = replica.memory_bytes() as u64;
        let replica = self.copy_for(others, replica, spare, (&done_tx, &done), deadline)?;
        let swap = Swap {
            replica,
            done: done_tx,
        };
        let old = self.swap_last_and_wait(last, swap, &done, deadline)?;
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

    /// Copies `replica` for each core of `others`, each copy on a thread of its own that hands
    /// it to its core (which answers on `done`); gives `replica` back once no copier uses it.
    fn copy_for(
        &self,
        others: &[flume::Sender<Swap>],
        replica: Replica,
        spare: &[usize],
        (done_tx, done): (&flume::Sender<Swapped>, &flume::Receiver<Swapped>),
        deadline: Instant,
    ) -> Result<Replica, ReloadError> {
        let replica = Arc::new(replica);
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
            return Err(self.swap_timeout(done.len()));
        }
        // A copier that panicked may still hold its reference while unwinding: copy then.
        Ok(Arc::try_unwrap(replica).unwrap_or_else(|shared| Replica::clone(&shared)))
    }

    /// Hands the last core its `swap` and waits until every core has swapped (the copies are
    /// on their way): the old replicas, one a core.
    fn swap_last_and_wait(
        &self,
        last: &flume::Sender<Swap>,
        swap: Swap,
        done: &flume::Receiver<Swapped>,
        deadline: Instant,
    ) -> Result<Vec<Replica>, ReloadError> {
        match last.send_deadline(swap, deadline) {
            Ok(()) => {}
            Err(flume::SendTimeoutError::Timeout(_)) => return Err(self.swap_timeout(done.len())),
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
                Err(flume::RecvTimeoutError::Timeout) => return Err(self.swap_timeout(old.len())),
            }
        }
        Ok(old)
    }

    /// Not every core swapped by the deadline; `swapped` did.
    fn swap_timeout(&self, swapped: usize) -> ReloadError {
        ReloadError::SwapTimeout {
            swapped,
            cores: self.cores.len(),
        }
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
        let mut metrics = String::new();
        status.render(&mut metrics);
        assert!(metrics.contains("tally_kv_pairs 100\n"), "{metrics}");
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
