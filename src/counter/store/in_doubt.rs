//! Settling a batch whose COMMIT outcome was lost (the module comment of `store` says how):
//! on a fresh connection, under the counter row's lock, its id in this store's row of
//! `tally_instances` says whether it committed; if not, it runs again in that transaction.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::connect::Connection;
use super::session::Store;
use super::{CommitError, Committed, KeyOutcome, KeyedIncrement, Reply};

/// A batch whose commit outcome was lost: settled on the next connection, or answered `why`
/// at its deadline.
pub(super) struct InDoubt {
    pub(super) id: i64,
    pub(super) delta: i64,
    pub(super) keyed: Vec<KeyedIncrement>,
    pub(super) deadline: Instant,
    pub(super) reply: Reply,
    /// `Timeout` or `Unknown`: what the caller is told if it cannot be settled in time.
    pub(super) why: CommitError,
}

/// What settling an in-doubt batch came to.
enum Settled {
    /// Its result: committed before (found) or now (run again).
    Answer(Result<Committed, CommitError>),
    /// The settling itself failed; the connection is of no further use, try another.
    Retry(String),
    /// The deadline passed: the caller was answered with the outcome unknown.
    Expired,
}

impl Store<'_> {
    /// Its deadline passed (or the store is shutting down) before it could be settled.
    pub(super) fn answer_in_doubt(&self, batch: InDoubt) {
        self.answer(batch.delta, batch.reply, Err(batch.why));
    }

    pub(super) fn in_doubt_deadline(&self) -> Option<Instant> {
        let batch = self.in_doubt.take();
        let deadline = batch.as_ref().map(|batch| batch.deadline);
        self.in_doubt.set(batch);
        deadline
    }

    /// Settles the in-doubt batch, if any, on a fresh connection (see the module comment);
    /// with none, makes sure this store's row exists. `Err` when this connection could not: the
    /// batch stays in doubt, the connection is spent.
    pub(super) async fn settle_in_doubt(&self, connection: &Connection) -> Result<(), String> {
        let Some(batch) = self.in_doubt.take() else {
            // Nothing in doubt: (re)creating the row cannot make a commit look absent.
            return self.upkeep_instances(connection, true).await;
        };
        match self.settle(connection, &batch).await {
            Settled::Answer(result) => {
                self.answer(batch.delta, batch.reply, result);
                Ok(())
            }
            Settled::Retry(error) => {
                self.in_doubt.set(Some(batch));
                Err(error)
            }
            Settled::Expired => {
                self.answer_in_doubt(batch);
                Err("the batch's deadline passed while settling it".into())
            }
        }
    }

    async fn settle(&self, connection: &Connection, batch: &InDoubt) -> Settled {
        let client = &connection.client;
        let text = |error: tokio_postgres::Error| error.to_string();
        let settling = async {
            client.batch_execute("BEGIN").await.map_err(text)?;
            // Waits for the old session's transaction, which held this lock, to end.
            client
                .query_opt(&connection.lock_row, &[])
                .await
                .map_err(text)?;
            let found = client
                .query_opt(&connection.find_batch, &[&self.instance])
                .await
                .map_err(text)?;
            let outcome = match found {
                // The row was deleted behind our back: whether the batch committed is lost.
                // Recreate it (nothing else is in doubt now) and report the outcome unknown.
                None => {
                    client
                        .execute(&connection.insert_instance, &[&self.instance])
                        .await
                        .map_err(text)?;
                    None
                }
                Some(row) if row.try_get::<_, Option<i64>>(0).map_err(text)? == Some(batch.id) => {
                    let count: i64 = row.try_get(1).map_err(text)?;
                    let keyed_delta: i64 = row.try_get(2).map_err(text)?;
                    let unkeyed_end = count - keyed_delta;
                    let keyed = self.find_keys(connection, batch).await?;
                    let committed = Committed { unkeyed_end, keyed };
                    Some((count, batch.delta + keyed_delta, committed, true))
                }
                Some(_) if batch.keyed.is_empty() => {
                    let (count, _marked) = self
                        .run_unkeyed(connection, batch.id, batch.delta)
                        .await
                        .map_err(|error| error.to_string())?;
                    let committed = Committed {
                        unkeyed_end: count,
                        keyed: Vec::new(),
                    };
                    Some((count, batch.delta, committed, false))
                }
                Some(_) => {
                    let (count, added, committed, _marked) = self
                        .run_keyed(connection, batch.id, batch.delta, &batch.keyed)
                        .await
                        .map_err(|error| error.to_string())?;
                    Some((count, added, committed, false))
                }
            };
            client.batch_execute("COMMIT").await.map_err(text)?;
            Ok::<_, String>(outcome)
        };
        match tokio::time::timeout_at(batch.deadline.into(), settling).await {
            Err(_elapsed) => Settled::Expired,
            Ok(Err(error)) => Settled::Retry(error),
            Ok(Ok(None)) => {
                log::error!(
                    "in-doubt batch {} cannot be settled: the row {} of tally_instances was \
                     deleted (recreated now); its outcome stays unknown",
                    batch.id,
                    self.instance
                );
                Settled::Answer(Err(batch.why.clone()))
            }
            Ok(Ok(Some((count, added, committed, committed_before)))) => {
                let how = if committed_before {
                    "had committed"
                } else {
                    "had not committed; ran it again"
                };
                log::info!("in-doubt batch {} settled: it {how}", batch.id);
                self.shared.stats.settled.fetch_add(1, Ordering::Relaxed);
                Settled::Answer(self.confirm(count, added).map(|_| committed))
            }
        }
    }

    /// What each key of a batch found committed got: counted by it, or by an earlier batch.
    async fn find_keys(
        &self,
        connection: &Connection,
        batch: &InDoubt,
    ) -> Result<Vec<KeyOutcome>, String> {
        let text = |error: tokio_postgres::Error| error.to_string();
        if batch.keyed.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = batch.keyed.iter().map(|k| &*k.key).collect();
        let rows = connection
            .client
            .query(&connection.find_keys, &[&keys])
            .await
            .map_err(text)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let key: String = row.try_get(0).map_err(text)?;
            let by: i64 = row.try_get(1).map_err(text)?;
            let count: i64 = row.try_get(2).map_err(text)?;
            let batch_id: i64 = row.try_get(3).map_err(text)?;
            found.insert(key, (by, count, batch_id));
        }
        batch
            .keyed
            .iter()
            .map(|increment| {
                let &(by, count, batch_id) = found.get(&*increment.key).ok_or_else(|| {
                    format!("key {:?} of a committed batch is gone", increment.key)
                })?;
                Ok(if batch_id == batch.id {
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
