//! Committing a batch: the one-statement `ADD` for unkeyed increments, the row-locked
//! `ADD_FRESH_KEYS` (then, if a key was stored already, `ADD_KEYED`) transaction for keyed
//! ones, and answering the caller. A lost outcome is handed to `in_doubt`; the count goes
//! through `lowered_row` before anyone sees it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::connect::Connection;
use super::digest::key_digest;
use super::error::{classify, CommitError};
use super::messages::{Add, Committed, Job, KeyOutcome, KeyedIncrement, Reply};
use super::state::{InDoubt, Store};

impl Store<'_> {
    /// Commits `add` and answers it; false when its outcome is in doubt, to be settled on a new
    /// connection (its state is unknown: a statement may still be running on this one).
    pub(super) async fn run_add(&self, connection: &Connection, add: Add) -> bool {
        let id = self.next_batch_id.get();
        self.next_batch_id.set(id.wrapping_add(1));
        let deadline = add.deadline;
        let in_doubt = match add.job {
            Job::Single {
                delta,
                keyed,
                reply,
            } => match self.commit(connection, id, delta, &keyed, deadline).await {
                Err(why @ (CommitError::Timeout | CommitError::Unknown(_))) => Some((
                    why,
                    Job::Single {
                        delta,
                        keyed,
                        reply,
                    },
                )),
                result => {
                    self.answer(delta, reply, result);
                    None
                }
            },
            Job::Named {
                work,
                mut refused,
                reply,
            } => {
                let result = self
                    .commit_named(connection, id, &work, &mut refused, deadline)
                    .await;
                match result {
                    Err(why @ (CommitError::Timeout | CommitError::Unknown(_))) => Some((
                        why,
                        Job::Named {
                            work,
                            refused,
                            reply,
                        },
                    )),
                    result => {
                        self.answer_named(reply, result);
                        None
                    }
                }
            }
        };
        let Some((why, job)) = in_doubt else {
            return true;
        };
        log::warn!(
            "{} (batch {id}) in doubt: {why}; reconnecting to settle it",
            job.what()
        );
        self.in_doubt.set(Some(InDoubt {
            id,
            add: Add { job, deadline },
            why,
        }));
        false
    }

    /// Answers a job that failed before or without a result.
    pub(super) fn fail(&self, job: Job, error: CommitError) {
        match job {
            Job::Single { delta, reply, .. } => self.answer(delta, reply, Err(error)),
            Job::Named { reply, .. } => self.answer_named(reply, Err(error)),
        }
    }

    pub(super) fn answer(&self, delta: i64, reply: Reply, result: Result<Committed, CommitError>) {
        if let Ok(committed) = &result {
            let stats = &self.shared.stats;
            for outcome in &committed.keyed {
                let counter = match outcome {
                    KeyOutcome::Counted(_) => continue,
                    KeyOutcome::Replayed(_) => &stats.key_replays,
                    KeyOutcome::Mismatch => &stats.key_mismatches,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        match &result {
            // Logged as an error once, when found; not again for every batch.
            Err(error @ CommitError::RowLowered { .. }) => self.count_error(error),
            Err(error) => {
                self.count_error(error);
                log::warn!("increment by {delta} not confirmed: {error}");
            }
            Ok(_) => {}
        }
        let _ = reply.send(result);
    }

    /// Sends the batch `id` and waits for its result, within the deadline less the part kept
    /// for settling. `Timeout` or `Unknown` leave the batch in doubt.
    async fn commit(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
        deadline: Instant,
    ) -> Result<Committed, CommitError> {
        self.may_send(connection, deadline).await?;
        // A quarter of the timeout is kept to settle the batch if its outcome is lost.
        let statement_deadline = deadline - self.config.commit_timeout / 4;
        if !keyed.is_empty() {
            return self
                .commit_keyed(connection, id, delta, keyed, statement_deadline)
                .await;
        }
        let answer = tokio::time::timeout_at(
            statement_deadline.into(),
            self.run_unkeyed(connection, id, delta),
        )
        .await;
        let (count, marked) = match answer {
            Err(_elapsed) => return Err(CommitError::Timeout),
            Ok(result) => result?,
        };
        self.recreate_row_if_unmarked(connection, marked).await;
        self.confirm(count, delta).map(|count| Committed {
            unkeyed_end: count,
            keyed: Vec::new(),
        })
    }

    /// Whether the batch may go out at all: in time, on an open connection, and not while the
    /// row is lowered. Refused here, nothing was sent.
    pub(super) async fn may_send(
        &self,
        connection: &Connection,
        deadline: Instant,
    ) -> Result<(), CommitError> {
        if Instant::now() >= deadline {
            return Err(CommitError::Unavailable(
                "waited past the commit timeout before it could be sent".into(),
            ));
        }
        if connection.client.is_closed() {
            return Err(CommitError::Unavailable(
                "connection to PostgreSQL closed".into(),
            ));
        }
        if self.shared.row_lowered().is_some() {
            // Only a read may lift the refusal: the row is not touched while it is low. A
            // failed read leaves the refusal as it is (the refresh notices a dead connection).
            let _ = tokio::time::timeout_at(deadline.into(), self.read_row(connection)).await;
            if let Some(lowered) = self.shared.row_lowered() {
                return Err(lowered.into());
            }
        }
        Ok(())
    }

    /// A batch with keyed increments: [`ADD_KEYED`](super::sql::ADD_KEYED) in a transaction behind
    /// the row lock.
    async fn commit_keyed(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
        statement_deadline: Instant,
    ) -> Result<Committed, CommitError> {
        let client = &connection.client;
        // Pipelined: one round trip. A failed statement turns the COMMIT into a rollback.
        let transaction = async {
            // The common case first: every key fresh (see ADD_FRESH_KEYS). `None` when a key
            // is already stored: rolled back, nothing counted; the general statement follows.
            if connection.legacy_keys().is_none() {
                let (begin, lock, run, commit) = tokio::join!(
                    client.batch_execute("BEGIN"),
                    client.query_opt(&connection.lock_row, &[]),
                    self.run_fresh_keys(connection, id, delta, keyed),
                    client.batch_execute("COMMIT"),
                );
                begin.map_err(|error| classify(&error))?;
                lock.map_err(|error| classify(&error))?;
                if let Some(result) = run? {
                    commit.map_err(|error| classify(&error))?;
                    return Ok(result);
                }
            }
            let (begin, lock, run, commit) = tokio::join!(
                client.batch_execute("BEGIN"),
                client.query_opt(&connection.lock_row, &[]),
                self.run_keyed(connection, id, delta, keyed),
                client.batch_execute("COMMIT"),
            );
            begin.map_err(|error| classify(&error))?;
            lock.map_err(|error| classify(&error))?;
            let (count, added, committed, marked) = run?;
            commit.map_err(|error| classify(&error))?;
            Ok::<_, CommitError>((count, added, committed, marked))
        };
        let (count, added, committed, marked) =
            match tokio::time::timeout_at(statement_deadline.into(), transaction).await {
                Err(_elapsed) => return Err(CommitError::Timeout),
                Ok(result) => result?,
            };
        self.recreate_row_if_unmarked(connection, marked).await;
        self.confirm(count, added).map(|_| committed)
    }

    /// Runs [`ADD`](super::sql::ADD): the count after the batch, and whether this store's row
    /// recorded it.
    pub(super) async fn run_unkeyed(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
    ) -> Result<(i64, bool), CommitError> {
        let row = connection
            .client
            .query_opt(&connection.add, &[&delta, &id, &self.instance])
            .await
            .map_err(|error| classify(&error))?
            // Committed, but it touched nothing: the row is gone. Reconnecting recreates it.
            .ok_or_else(|| CommitError::Unknown("tally_counter has no row with id = 1".into()))?;
        let unreadable = |error: tokio_postgres::Error| {
            CommitError::Unknown(format!("unreadable count: {error}"))
        };
        let count: i64 = row.try_get(0).map_err(unreadable)?;
        let marked: bool = row.try_get(1).map_err(unreadable)?;
        Ok((count, marked))
    }

    /// A batch committed, answered, but not recorded: this store's row was deleted behind its
    /// back. Nothing is in doubt now, so the row can be recreated; if that fails, the next
    /// connection does it (until then a lost outcome is reported unknown, never guessed).
    pub(super) async fn recreate_row_if_unmarked(&self, connection: &Connection, marked: bool) {
        if marked {
            return;
        }
        log::warn!(
            "the row {} of tally_instances was deleted behind tally's back; recreating it",
            self.instance
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.instance];
        let insert = connection
            .client
            .execute(&connection.insert_instance, &params);
        match tokio::time::timeout(self.config.commit_timeout, insert).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => log::warn!("recreating the row of tally_instances: {error}"),
            Err(_elapsed) => log::warn!("recreating the row of tally_instances timed out"),
        }
    }

    /// Runs [`ADD_FRESH_KEYS`](super::sql::ADD_FRESH_KEYS) (the row lock must be held): as
    /// [`run_keyed`](Self::run_keyed), every key counted; `None` when a key was already stored
    /// (the statement failed on the primary key, and its transaction with it).
    async fn run_fresh_keys(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
    ) -> Result<Option<(i64, i64, Committed, bool)>, CommitError> {
        let digests = digests(keyed);
        let bys: Vec<i64> = keyed.iter().map(|k| k.by).collect();
        let running: Vec<i64> = bys
            .iter()
            .scan(0i64, |sum, by| {
                *sum += by;
                Some(*sum)
            })
            .collect();
        let keyed_total = running.last().copied().unwrap_or(0);
        let params: [&(dyn ToSql + Sync); 7] = [
            &delta,
            &digests,
            &bys,
            &id,
            &running,
            &self.instance,
            &keyed_total,
        ];
        let row = match connection
            .client
            .query_opt(&connection.add_fresh_keys, &params)
            .await
        {
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
            Err(error) => return Err(classify(&error)),
            // No row: tally_counter has no row (the UPDATE touched nothing).
            Ok(None) => {
                return Err(CommitError::Unknown(
                    "tally_counter has no row with id = 1".into(),
                ))
            }
            Ok(Some(row)) => row,
        };
        let unreadable = |error: tokio_postgres::Error| {
            CommitError::Unknown(format!("unreadable keyed result: {error}"))
        };
        let unkeyed_end: i64 = row.try_get(0).map_err(unreadable)?;
        let marked: bool = row.try_get(1).map_err(unreadable)?;
        let (added, outcomes) = key_outcomes(keyed, delta, unkeyed_end, Vec::new())?;
        let committed = Committed {
            unkeyed_end,
            keyed: outcomes,
        };
        Ok(Some((unkeyed_end + keyed_total, added, committed, marked)))
    }

    /// Runs [`ADD_KEYED`](super::sql::ADD_KEYED) (the row lock must be held): the count after the
    /// batch, what it added, each key's outcome, and whether this store's row recorded the batch.
    pub(super) async fn run_keyed(
        &self,
        connection: &Connection,
        id: i64,
        delta: i64,
        keyed: &[KeyedIncrement],
    ) -> Result<(i64, i64, Committed, bool), CommitError> {
        let digests = digests(keyed);
        let bys: Vec<i64> = keyed.iter().map(|k| k.by).collect();
        let retention = self.config.idempotency_retention.as_secs_f64();
        let client = &connection.client;
        let rows = match connection.legacy_keys() {
            None => {
                let params: [&(dyn ToSql + Sync); 6] =
                    [&delta, &digests, &bys, &id, &retention, &self.instance];
                client.query(&connection.add_keyed, &params).await
            }
            Some(legacy) => {
                let keys: Vec<&str> = keyed.iter().map(|k| &*k.key).collect();
                let params: [&(dyn ToSql + Sync); 7] = [
                    &delta,
                    &digests,
                    &bys,
                    &id,
                    &retention,
                    &self.instance,
                    &keys,
                ];
                client.query(&legacy.add_keyed, &params).await
            }
        }
        .map_err(|error| classify(&error))?;
        let unreadable = |error: tokio_postgres::Error| {
            CommitError::Unknown(format!("unreadable keyed result: {error}"))
        };
        // No row at all: tally_counter has no row (the UPDATE touched nothing).
        let first = rows
            .first()
            .ok_or_else(|| CommitError::Unknown("tally_counter has no row with id = 1".into()))?;
        let unkeyed_end: i64 = first.try_get(0).map_err(unreadable)?;
        let marked: bool = first.try_get(1).map_err(unreadable)?;
        // Keys seen before, by position (from 1, ascending); the rest were counted now.
        let mut seen = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(pos) = row.try_get::<_, Option<i64>>(2).map_err(unreadable)? else {
                continue;
            };
            let by: i64 = row.try_get(3).map_err(unreadable)?;
            let count: i64 = row.try_get(4).map_err(unreadable)?;
            seen.push((pos, by, count));
        }
        let (added, outcomes) = key_outcomes(keyed, delta, unkeyed_end, seen)?;
        let count = unkeyed_end + (added - delta);
        let committed = Committed {
            unkeyed_end,
            keyed: outcomes,
        };
        Ok((count, added, committed, marked))
    }

    pub(super) fn count_error(&self, error: &CommitError) {
        let stats = &self.shared.stats;
        let counter = match error {
            CommitError::Unavailable(_) | CommitError::InvalidDelta(_) => {
                &stats.commit_errors_unavailable
            }
            CommitError::Timeout => &stats.commit_errors_timeout,
            CommitError::Unknown(_) => &stats.commit_errors_unknown,
            CommitError::RowLowered { .. } => &stats.commit_errors_row_lowered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The scope of the keys of `/api/v1/counter`, the one counter the store keeps (see
/// [`key_digest`]).
pub(super) const COUNTER_SCOPE: &str = "";

/// The digests the keys of `keyed` are stored as, in order.
pub(super) fn digests(keyed: &[KeyedIncrement]) -> Vec<uuid::Uuid> {
    keyed
        .iter()
        .map(|k| key_digest(COUNTER_SCOPE, &k.key))
        .collect()
}

/// What each keyed increment of a batch became, from the keys [`ADD_KEYED`](super::sql::ADD_KEYED)
/// found `seen` before (position from 1, ascending; its `by`; its count): replayed, a mismatch, or
/// counted now, after the unkeyed `delta` ending at `unkeyed_end`, in order. Also the batch's
/// total, `delta` plus the counted `by`s.
fn key_outcomes(
    keyed: &[KeyedIncrement],
    delta: i64,
    unkeyed_end: i64,
    seen: Vec<(i64, i64, i64)>,
) -> Result<(i64, Vec<KeyOutcome>), CommitError> {
    let mut seen = seen.into_iter().peekable();
    let mut added = delta;
    let mut outcomes = Vec::with_capacity(keyed.len());
    for (pos, increment) in (1..).zip(keyed) {
        outcomes.push(match seen.next_if(|&(at, _, _)| at == pos) {
            Some((_, by, count)) if by == increment.by => KeyOutcome::Replayed(count),
            Some(_) => KeyOutcome::Mismatch,
            None => {
                added += increment.by;
                KeyOutcome::Counted(unkeyed_end + (added - delta))
            }
        });
    }
    if seen.next().is_some() {
        return Err(CommitError::Unknown(
            "the keyed batch answered a key position out of range".into(),
        ));
    }
    Ok((added, outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(bys: &[i64]) -> Vec<KeyedIncrement> {
        (0..)
            .zip(bys)
            .map(|(i, &by)| KeyedIncrement {
                key: format!("k{i}").into(),
                by,
            })
            .collect()
    }

    #[test]
    fn fresh_keys_count_after_the_unkeyed_delta_in_order_and_seen_ones_replay_or_mismatch() {
        // Unkeyed 3 ends at 10; key 2 was seen with by 5 (count 4), key 3 with another by.
        let (added, outcomes) =
            key_outcomes(&keyed(&[2, 5, 1, 4]), 3, 10, vec![(2, 5, 4), (3, 7, 6)])
                .expect("positions in range");
        assert_eq!(added, 3 + 2 + 4);
        assert_eq!(
            outcomes,
            [
                KeyOutcome::Counted(12),
                KeyOutcome::Replayed(4),
                KeyOutcome::Mismatch,
                KeyOutcome::Counted(16),
            ]
        );
    }

    #[test]
    fn a_seen_position_past_the_batch_is_an_unknown_outcome() {
        let result = key_outcomes(&keyed(&[1]), 0, 5, vec![(2, 1, 3)]);
        assert!(matches!(result, Err(CommitError::Unknown(_))));
    }
}
