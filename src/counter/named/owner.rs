//! An owner core's loop ([`run_owner`]): every batch the cores sent it for its names forms
//! one transaction on its store, and each core is answered with where its increments start.
//! The owners run in parallel, each on its own store connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::counter::batcher::gather;
use crate::counter::store::{NamedCommitted, NamedKeyed, NamedWork};

use super::wiring::{BatchAnswer, CoreBatch, OwnerPort};
use super::Shared;

/// One transaction's worth of queued batches, merged: each name once with its total, and
/// where each batch's names went.
#[derive(Debug, PartialEq, Eq)]
struct Merged {
    work: NamedWork,
    /// Per batch taken, per name of it: its index in `work.names`.
    places: Vec<Vec<usize>>,
    requests: u32,
}

/// Takes batches from the front of `queue` (at most `max_batch` increments, 0 = no limit, but
/// at least one batch) and merges them.
fn merge(queue: &mut VecDeque<CoreBatch>, max_batch: usize) -> (Merged, Vec<CoreBatch>) {
    let mut requests = 0u32;
    let mut take = 0;
    // A (name, key) already taken ends the transaction: the repeat waits for the first and
    // replays its result, as for the single counter.
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    for batch in queue.iter() {
        let over = max_batch > 0 && (requests + batch.requests) as usize > max_batch;
        let pairs = batch
            .keyed
            .iter()
            .map(|k| (&*batch.names[k.name as usize].0, &*k.key));
        let repeats = pairs.clone().any(|pair| keys.contains(&pair));
        if take > 0 && (over || repeats) {
            break;
        }
        keys.extend(pairs);
        take += 1;
        requests += batch.requests;
    }
    drop(keys);
    let mut taken: Vec<CoreBatch> = queue.drain(..take).collect();
    let mut index: HashMap<Box<str>, usize> = HashMap::new();
    let mut names: Vec<(Box<str>, i64)> = Vec::new();
    let mut places = Vec::with_capacity(taken.len());
    let mut keyed = Vec::new();
    for batch in &mut taken {
        let mut batch_places = Vec::with_capacity(batch.names.len());
        for (name, delta) in &mut batch.names {
            let at = match index.get(&**name) {
                Some(&at) => {
                    names[at].1 += *delta;
                    at
                }
                None => {
                    let at = names.len();
                    index.insert(name.clone(), at);
                    names.push((std::mem::take(name), *delta));
                    at
                }
            };
            batch_places.push(at);
        }
        keyed.extend(batch.keyed.iter().map(|k| NamedKeyed {
            name: batch_places[k.name as usize] as u32,
            key: k.key.clone(),
            by: k.by,
        }));
        places.push(batch_places);
    }
    (
        Merged {
            work: NamedWork { names, keyed },
            places,
            requests,
        },
        taken,
    )
}

/// Each batch's answer from the counts after the transaction's unkeyed increments (`None`:
/// refused): a name's increments take the values just below its count, the batches in queue
/// order; the keyed outcomes go back to their batches in order.
fn answers(
    limit: i64,
    totals: &[i64],
    committed: NamedCommitted,
    batches: &[CoreBatch],
    places: &[Vec<usize>],
) -> Vec<BatchAnswer> {
    let counts = &committed.counts;
    let mut keyed = committed.keyed.into_iter();
    let mut next: Vec<Option<i64>> = counts
        .iter()
        .zip(totals)
        .map(|(count, total)| count.map(|count| count - total))
        .collect();
    batches
        .iter()
        .zip(places)
        .map(|(batch, places)| BatchAnswer {
            limit,
            keyed: keyed.by_ref().take(batch.keyed.len()).collect(),
            bases: batch
                .names
                .iter()
                .zip(places)
                .map(|((_, delta), &at)| {
                    let base = next[at]?;
                    next[at] = Some(base + delta);
                    Some(base)
                })
                .collect(),
        })
        .collect()
}

/// The owner loop: one transaction in flight, every batch that queued meanwhile in the next.
/// Ends when every core has dropped its sender and the queue is empty, so every increment
/// received before shutdown is committed and answered.
pub async fn run_owner(port: OwnerPort, shared: Arc<Shared>) {
    let store = shared.stores[port.core].clone();
    let mut queue: VecDeque<CoreBatch> = VecDeque::new();
    while gather(&mut queue, &port.batches).await {
        let (merged, batches) = merge(&mut queue, shared.max_batch);
        let totals: Vec<i64> = merged.work.names.iter().map(|(_, total)| *total).collect();
        let names = totals.len();
        match store.add_named(merged.work).await {
            Ok(committed) => {
                shared.batch_names.observe(names as f64);
                shared.batch_size.observe(f64::from(merged.requests));
                let refused = committed.counts.iter().filter(|c| c.is_none()).count();
                if refused > 0 {
                    log::debug!("{refused} new counters refused: the counter limit is reached");
                    shared.refused.fetch_add(refused as u64, Relaxed);
                }
                let answers = answers(
                    shared.limit.max(),
                    &totals,
                    committed,
                    &batches,
                    &merged.places,
                );
                for (batch, answer) in batches.iter().zip(answers) {
                    let _ = port.replies[batch.core].send((port.core, Ok(answer)));
                }
            }
            Err(err) => {
                shared.failed_commits.fetch_add(1, Relaxed);
                log::warn!(
                    "commit of {} named increments failed: {err}",
                    merged.requests
                );
                for batch in &batches {
                    let _ = port.replies[batch.core].send((port.core, Err(err.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(core: usize, names: &[(&str, i64)]) -> CoreBatch {
        CoreBatch {
            core,
            requests: names.len() as u32,
            names: names.iter().map(|&(n, d)| (n.into(), d)).collect(),
            keyed: Vec::new(),
        }
    }

    fn keyed_batch(core: usize, name: &str, keys: &[&str]) -> CoreBatch {
        CoreBatch {
            core,
            requests: keys.len() as u32,
            names: vec![(name.into(), 0)],
            keyed: keys
                .iter()
                .map(|&key| NamedKeyed {
                    name: 0,
                    key: key.into(),
                    by: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_key_repeated_on_its_name_waits_for_the_next_transaction() {
        let mut queue: VecDeque<_> = [
            keyed_batch(0, "a", &["k1", "k2"]),
            keyed_batch(1, "b", &["k1"]),
            keyed_batch(1, "a", &["k2"]),
        ]
        .into();
        let (merged, batches) = merge(&mut queue, 0);
        assert_eq!((batches.len(), queue.len()), (2, 1));
        let keyed: Vec<_> = merged
            .work
            .keyed
            .iter()
            .map(|k| (k.name, &*k.key))
            .collect();
        assert_eq!(keyed, [(0, "k1"), (0, "k2"), (1, "k1")]);
    }

    #[test]
    fn batches_merge_into_one_total_per_name_and_values_follow_queue_order() {
        let mut queue: VecDeque<_> = [
            batch(0, &[("a", 2), ("b", 1)]),
            batch(1, &[("b", 3), ("c", 1)]),
            batch(0, &[("a", 1)]),
        ]
        .into();
        let (merged, batches) = merge(&mut queue, 0);
        assert!(queue.is_empty());
        let names: Vec<_> = merged.work.names.iter().map(|(n, d)| (&**n, *d)).collect();
        assert_eq!(names, [("a", 3), ("b", 4), ("c", 1)]);
        assert_eq!(merged.places, [vec![0, 1], vec![1, 2], vec![0]]);
        // After the commit: a = 13, b = 4 (new), c refused by the limit.
        let answers = answers(
            9,
            &[3, 4, 1],
            NamedCommitted {
                counts: vec![Some(13), Some(4), None],
                keyed: Vec::new(),
            },
            &batches,
            &merged.places,
        );
        let bases: Vec<_> = answers.into_iter().map(|a| a.bases).collect();
        assert_eq!(
            bases,
            [vec![Some(10), Some(0)], vec![Some(1), None], vec![Some(12)]]
        );
    }

    #[test]
    fn a_cap_splits_the_queue_but_takes_at_least_one_batch() {
        let mut queue: VecDeque<_> =
            [batch(0, &[("a", 1), ("b", 1)]), batch(1, &[("a", 1)])].into();
        let (merged, batches) = merge(&mut queue, 1);
        assert_eq!((merged.requests, batches.len(), queue.len()), (2, 1, 1));
    }
}
