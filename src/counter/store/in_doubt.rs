//! Settling a batch whose COMMIT outcome was lost (the module comment of `store` says how):
//! on a fresh connection, under the counter row's lock, its id in this store's row of
//! `tally_instances` says whether it committed; if not, it runs again in that transaction.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::commit::{digests, COUNTER_SCOPE};
use super::connect::Connection;
use super::digest::key_digest;
use super::error::{CommitError, StoreError};
use super::messages::{Committed, Job, KeyOutcome, KeyedIncrement, NamedCommitted};
use super::state::{InDoubt, Store};

/// A settled single-counter batch: the count after it, what it added, what its callers get.
struct Outcome {
    count: i64,
    added: i64,
    committed: Committed,
}

/// A settled batch's answer, for its kind of job.
enum Answer {
    Single(Result<Committed, CommitError>),
    Named(Result<NamedCommitted, CommitError>),
}

/// What settling an in-doubt batch came to.
enum Settled<T> {
    /// Its result: committed before (found) or now (run again).
    Answer(T),
    /// The settling itself failed; the connection is of no further use, try another.
    Retry(StoreError),
    /// The deadline passed: the caller was answered with the outcome unknown.
    Expired,
}

impl<T> Settled<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Settled<U> {
        match self {
            Settled::Answer(found) => Settled::Answer(f(found)),
            Settled::Retry(error) => Settled::Retry(error),
            Settled::Expired => Settled::Expired,
        }
    }
}

impl Store<'_> {
    /// Its deadline passed (or the store is shutting down) before it could be settled.
    pub(super) fn answer_in_doubt(&self, batch: InDoubt) {
        self.fail(batch.add.job, batch.why);
    }

    pub(super) fn in_doubt_deadline(&self) -> Option<Instant> {
        let batch = self.in_doubt.take();
        let deadline = batch.as_ref().map(|batch| batch.add.deadline);
        self.in_doubt.set(batch);
        deadline
    }

    /// Settles the in-doubt batch, if any, on a fresh connection (see the module comment);
    /// with none, makes sure this store's row exists. `Err` when this connection could not: the
    /// batch stays in doubt (or, [`StoreError::SettleExpired`], was answered unknown), and the
    /// connection is spent.
    pub(super) async fn settle_in_doubt(&self, connection: &Connection) -> Result<(), StoreError> {
        let Some(batch) = self.in_doubt.take() else {
            // Nothing in doubt: (re)creating the row cannot make a commit look absent.
            return self.upkeep_instances(connection, true).await;
        };
        let settled = match &batch.add.job {
            Job::Single { delta, keyed, .. } => self
                .settle(
                    &batch,
                    self.settle_transaction(connection, &batch, *delta, keyed),
                )
                .await
                .map(|found| {
                    found.map(|found| {
                        Answer::Single(
                            self.confirm(found.count, found.added)
                                .map(|_| found.committed),
                        )
                    })
                }),
            Job::Named { work, refused, .. } => self
                .settle(
                    &batch,
                    self.settle_named(connection, batch.id, work, refused),
                )
                .await
                .map(|found| found.map(|counts| Answer::Named(Ok(counts)))),
        };
        match settled {
            Settled::Answer(Some(answer)) => {
                match (batch.add.job, answer) {
                    (Job::Single { delta, reply, .. }, Answer::Single(result)) => {
                        self.answer(delta, reply, result)
                    }
                    (Job::Named { reply, .. }, Answer::Named(result)) => {
                        self.answer_named(reply, result)
                    }
                    (job, _) => self.fail(job, batch.why),
                }
                Ok(())
            }
            Settled::Answer(None) => {
                self.fail(batch.add.job, batch.why);
                Ok(())
            }
            Settled::Retry(error) => {
                self.in_doubt.set(Some(batch));
                Err(error)
            }
            Settled::Expired => {
                self.answer_in_doubt(batch);
                Err(StoreError::SettleExpired)
            }
        }
    }

    /// Runs `settling` within the batch's deadline, and counts and logs how it went. Its
    /// `None` means this store's row of `tally_instances` was gone: the outcome is unknown.
    async fn settle<T>(
        &self,
        batch: &InDoubt,
        settling: impl std::future::Future<Output = Result<Option<(T, bool)>, StoreError>>,
    ) -> Settled<Option<T>> {
        match tokio::time::timeout_at(batch.add.deadline.into(), settling).await {
            Err(_elapsed) => Settled::Expired,
            Ok(Err(error)) => Settled::Retry(error),
            Ok(Ok(None)) => {
                log::error!(
                    "in-doubt batch {} cannot be settled: the row {} of tally_instances was \
                     deleted (recreated now); its outcome stays unknown",
                    batch.id,
                    self.instance
                );
                Settled::Answer(None)
            }
            Ok(Ok(Some((found, committed_before)))) => {
                let how = if committed_before {
                    "had committed"
                } else {
                    "had not committed; ran it again"
                };
                log::info!("in-doubt batch {} settled: it {how}", batch.id);
                self.shared.stats.settled.fetch_add(1, Ordering::Relaxed);
                Settled::Answer(Some(found))
            }
        }
    }

    /// The settling transaction: waits for the row lock, then reads this store's row. `None`
    /// when that row is gone (recreated now): the outcome cannot be known.
    async fn settle_transaction(
        &self,
        connection: &Connection,
        batch: &InDoubt,
        delta: i64,
        keyed: &[KeyedIncrement],
    ) -> Result<Option<(Outcome, bool)>, StoreError> {
        let client = &connection.client;
        client.batch_execute("BEGIN").await?;
        // Waits for the old session's transaction, which held this lock, to end.
        client.query_opt(&connection.lock_row, &[]).await?;
        let found = client
            .query_opt(&connection.find_batch, &[&self.instance])
            .await?;
        let outcome = match found {
            // The row was deleted behind our back: whether the batch committed is lost.
            // Recreate it (nothing else is in doubt now) and report the outcome unknown.
            None => {
                client
                    .execute(&connection.insert_instance, &[&self.instance])
                    .await?;
                None
            }
            Some(row) if row.try_get::<_, Option<i64>>(0)? == Some(batch.id) => {
                let count: i64 = row.try_get(1)?;
                let keyed_delta: i64 = row.try_get(2)?;
                let unkeyed_end = count - keyed_delta;
                let keyed = self.find_keys(connection, batch.id, keyed).await?;
                Some((
                    Outcome {
                        count,
                        added: delta + keyed_delta,
                        committed: Committed { unkeyed_end, keyed },
                    },
                    true,
                ))
            }
            Some(_) => Some((
                self.run_again(connection, batch.id, delta, keyed).await?,
                false,
            )),
        };
        client.batch_execute("COMMIT").await?;
        Ok(outcome)
    }

    /// Runs a batch found not committed again, with its id, in the settling transaction.
    async fn run_again(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
    ) -> Result<Outcome, StoreError> {
        let (count, added, committed) = if keyed.is_empty() {
            let (count, _marked) = self.run_unkeyed(connection, id, delta).await?;
            let committed = Committed {
                unkeyed_end: count,
                keyed: Vec::new(),
            };
            (count, delta, committed)
        } else {
            let (count, added, committed, _marked) =
                self.run_keyed(connection, id, delta, keyed).await?;
            (count, added, committed)
        };
        Ok(Outcome {
            count,
            added,
            committed,
        })
    }

    /// What each key of a batch found committed got: counted by it, or by an earlier batch.
    async fn find_keys(
        &self,
        connection: &Connection,
        id: i64,
        keyed: &[KeyedIncrement],
    ) -> Result<Vec<KeyOutcome>, StoreError> {
        if keyed.is_empty() {
            return Ok(Vec::new());
        }
        let digests = digests(keyed);
        let rows = connection
            .client
            .query(&connection.find_keys, &[&digests])
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let digest: uuid::Uuid = row.try_get(0)?;
            let by: i64 = row.try_get(1)?;
            let count: i64 = row.try_get(2)?;
            let batch_id: i64 = row.try_get(3)?;
            found.insert(digest, (by, count, batch_id));
        }
        // Keys of earlier versions a batch replayed: only where tally_keys has none.
        if let Some(legacy) = connection.legacy_keys() {
            let keys: Vec<&str> = keyed.iter().map(|k| &*k.key).collect();
            let rows = connection.client.query(&legacy.find_keys, &[&keys]).await?;
            for row in rows {
                let key: &str = row.try_get(0)?;
                let by: i64 = row.try_get(1)?;
                let count: i64 = row.try_get(2)?;
                let batch_id: i64 = row.try_get(3)?;
                found
                    .entry(key_digest(COUNTER_SCOPE, key))
                    .or_insert((by, count, batch_id));
            }
        }
        keyed
            .iter()
            .map(|increment| {
                let &(by, count, batch_id) = found
                    .get(&key_digest(COUNTER_SCOPE, &increment.key))
                    .ok_or_else(|| StoreError::KeyGone(increment.key.clone()))?;
                Ok(if batch_id == id {
                    KeyOutcome::Counted(count)
                } else if by == increment.by {
                    KeyOutcome::Replayed(count)
                } else {
                    KeyOutcome::Mismatch
                })
            })
            .collect()
    }
}
