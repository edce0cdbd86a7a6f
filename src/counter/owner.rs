//! The owner core: its lease (proof of life, see the `counter` module comment) and the loop
//! that forms one transaction from every batch queued meanwhile and answers each core.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{Ordering::AcqRel, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;
use std::time::Instant;

use super::batcher::gather;
use super::shared::{OWNER_FINISHED, OWNER_RUNNING, OWNER_STOPPED};
use super::wiring::{BatchAnswer, CoreBatch, OwnerPort};
use super::{CounterShared, KeyedIncrement};

impl OwnerPort {
    /// The owner's proof of life. Keep it where it is dropped whatever happens to the owner's
    /// loop: on the owner thread's stack, not in a task (glommio leaks the pending tasks of an
    /// executor that panicked, so a task's locals may never be dropped). `run_owner` takes it
    /// itself if nobody did.
    pub fn lease(&mut self, shared: &Arc<CounterShared>) -> OwnerLease {
        shared.owner.store(OWNER_RUNNING, Release);
        OwnerLease {
            _alive: self.alive.take(),
            shared: shared.clone(),
        }
    }
}

/// While it lives, the cores wait for the owner's replies; once dropped, they fail what they
/// sent (outcome unknown), refuse new increments, and readiness turns false.
pub struct OwnerLease {
    _alive: Option<flume::Sender<Infallible>>,
    shared: Arc<CounterShared>,
}

impl Drop for OwnerLease {
    fn drop(&mut self) {
        let was = self.shared.owner.swap(OWNER_STOPPED, AcqRel);
        if was == OWNER_FINISHED {
            self.shared.owner.store(OWNER_FINISHED, Release);
        } else {
            log::error!(
                "the counter's owner core stopped before the counter finished: every increment \
                 now gets 503 and /api/v1/system/ready is 503; restart tally"
            );
        }
    }
}

/// The owner loop: one transaction in flight, every batch that queued meanwhile in the next.
/// Ends when every core has dropped its sender and the queue is empty, so every increment
/// received before shutdown is committed and answered.
///
/// A key already in the transaction being formed ends it: the repeat goes in the next one and
/// so waits for the first and replays its result (docs/api.md, "Idempotency-Key").
pub async fn run_owner(mut port: OwnerPort, shared: Arc<CounterShared>) {
    let _lease = port.alive.is_some().then(|| port.lease(&shared));
    let mut queue: VecDeque<CoreBatch> = VecDeque::new();
    while gather(&mut queue, &port.batches).await {
        shared
            .pending_increments
            .store(queue.iter().map(|b| u64::from(b.requests)).sum(), Relaxed);

        let (take, requests, delta) = next_transaction(&queue, shared.max_batch);
        let key_counts: Vec<usize> = queue.iter().take(take).map(|b| b.keyed.len()).collect();
        let keyed: Vec<KeyedIncrement> = queue
            .iter_mut()
            .take(take)
            .flat_map(|b| std::mem::take(&mut b.keyed))
            .collect();
        let started = Instant::now();
        let result = shared.store.add_batch(delta, keyed).await;
        shared
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(committed) => {
                shared.batch_size.observe(f64::from(requests));
                let mut base = committed.unkeyed_end - delta;
                let mut outcomes = committed.keyed.into_iter();
                for (batch, keys) in queue.drain(..take).zip(key_counts) {
                    let keyed = outcomes.by_ref().take(keys).collect();
                    let _ = port.replies[batch.core].send(Ok(BatchAnswer { base, keyed }));
                    base += batch.delta;
                }
            }
            Err(err) => {
                shared.failed_commits.fetch_add(1, Relaxed);
                log::warn!("counter commit of {requests} increments failed: {err}");
                for batch in queue.drain(..take) {
                    let _ = port.replies[batch.core].send(Err(err.clone()));
                }
            }
        }
    }
    shared.pending_increments.store(0, Relaxed);
    shared.owner.store(OWNER_FINISHED, Release);
}

/// How many queued batches form the next transaction, with their request count and unkeyed
/// delta. A batch repeating a key already taken starts the next transaction.
fn next_transaction(queue: &VecDeque<CoreBatch>, max_batch: usize) -> (usize, u32, i64) {
    let (mut take, mut requests, mut delta) = (0, 0u32, 0i64);
    // Allocates only when a batch has keys, and then once.
    let key_count = queue.iter().map(|b| b.keyed.len()).sum();
    let mut keys: HashSet<&str> = HashSet::with_capacity(key_count);
    for batch in queue {
        let over = max_batch > 0 && (requests + batch.requests) as usize > max_batch;
        let repeats_a_key = batch.keyed.iter().any(|k| keys.contains(&*k.key));
        if take > 0 && (over || repeats_a_key) {
            break;
        }
        keys.extend(batch.keyed.iter().map(|k| &*k.key));
        take += 1;
        requests += batch.requests;
        delta += batch.delta;
    }
    (take, requests, delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(core: usize, requests: u32, delta: i64) -> CoreBatch {
        CoreBatch {
            core,
            requests,
            delta,
            keyed: Vec::new(),
        }
    }

    fn keyed_batch(core: usize, keys: &[&str]) -> CoreBatch {
        CoreBatch {
            keyed: keys
                .iter()
                .map(|&key| KeyedIncrement {
                    key: key.into(),
                    by: 1,
                })
                .collect(),
            ..batch(core, keys.len() as u32, 0)
        }
    }

    #[test]
    fn a_repeated_key_waits_for_the_next_transaction() {
        let q: VecDeque<_> = [
            keyed_batch(0, &["a", "b"]),
            batch(1, 2, 2),
            keyed_batch(1, &["c"]),
            keyed_batch(2, &["b"]),
            keyed_batch(3, &["d"]),
        ]
        .into();
        assert_eq!(next_transaction(&q, 0), (3, 5, 2));
    }

    #[test]
    fn a_transaction_takes_every_queued_batch_without_a_cap() {
        let q: VecDeque<_> = [batch(0, 3, 3), batch(1, 5, 9)].into();
        assert_eq!(next_transaction(&q, 0), (2, 8, 12));
    }

    #[test]
    fn a_cap_of_one_gives_one_increment_per_transaction() {
        let q: VecDeque<_> = [batch(0, 1, 4), batch(1, 1, 1)].into();
        assert_eq!(next_transaction(&q, 1), (1, 1, 4));
    }
}
