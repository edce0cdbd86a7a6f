//! Named counters in the store: committing a batch of increments to many names in one
//! transaction ([`ADD_NAMED`](super::sql::ADD_NAMED), rows locked in name order), settling one
//! whose outcome was lost, reads, deletes, and keeping the limit on how many counters the
//! database holds (`limit`).
//!
//! An unkeyed batch is one statement, [`ADD_NAMED`](super::sql::ADD_NAMED), which also records
//! the batch id and its counts in this store's row of `tally_instances`, as the single
//! counter's `ADD` does; with keys, `BEGIN; ADD_NAMED; ADD_NAMED_KEYED; COMMIT`, pipelined (one
//! round trip). Settling an in-doubt batch locks its rows in name order, then this store's
//! row, so it waits for the old session's transaction to end, then reads the batch id there
//! (the `store` module comment), with the batch's counts in `named_counts`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::connect::Connection;
use super::digest::key_digest;
use super::error::{classify, CommitError, StoreError};
use super::limit::NamedLimit;
use super::messages::{KeyOutcome, NamedCommitted, NamedReply, NamedWork};
use super::state::Store;
use std::collections::HashMap;

use tokio_postgres::error::SqlState;

/// How often the number of named counters is read again from PostgreSQL (other instances
/// create counters too).
pub(super) const RECOUNT_INTERVAL: Duration = Duration::from_secs(10);

impl Store<'_> {
    fn named_limit(&self) -> Option<&NamedLimit> {
        self.config.named.as_ref().map(|named| &*named.limit)
    }

    /// Records counts a statement found in the view that answers GET (see `view`).
    fn saw_named<'n>(&self, found: impl Iterator<Item = (&'n str, i64)>) {
        let now = Instant::now();
        if let Ok(mut view) = self.shared.view.lock() {
            for (name, count) in found {
                view.put(name, count, now);
            }
        }
    }

    /// Commits a named batch. `refused` is filled (once, on the first attempt) with the names
    /// the counter limit refuses; the others are sent.
    pub(super) async fn commit_named(
        &self,
        connection: &Connection,
        id: i64,
        work: &NamedWork,
        refused: &mut Vec<bool>,
        deadline: Instant,
    ) -> Result<NamedCommitted, CommitError> {
        self.may_send(connection, deadline).await?;
        let statement_deadline = deadline - self.config.commit_timeout / 4;
        let reserved = match tokio::time::timeout_at(
            statement_deadline.into(),
            self.admit(connection, work, refused),
        )
        .await
        {
            Err(_elapsed) => return Err(CommitError::Timeout),
            Ok(result) => result?,
        };
        let (names, deltas) = sent(work, refused);
        if names.is_empty() {
            return Ok(NamedCommitted {
                counts: vec![None; work.names.len()],
                keyed: vec![None; work.keyed.len()],
            });
        }
        let keys = KeyedParams::new(work, refused);
        let retention = self.config.idempotency_retention.as_secs_f64();
        let client = &connection.client;
        let add_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&names, &deltas, &self.instance, &id];
        let keyed_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&keys.names, &keys.digests, &keys.bys, &retention, &id];
        // Only a keyed batch needs these (empty vectors do not allocate).
        let (running, keyed_sums) = if keys.names.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (keys.running(), keys.sums(&names))
        };
        let fresh_params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &names,
            &deltas,
            &self.instance,
            &id,
            &keyed_sums,
            &keys.names,
            &keys.digests,
            &keys.bys,
            &running,
        ];
        let transaction = async {
            if keys.names.is_empty() {
                // One statement, its own transaction (as the single counter's `ADD`).
                let rows = client
                    .query(&connection.named.add, &add_params)
                    .await
                    .map_err(|error| classify(&error))?;
                return Ok::<_, CommitError>((rows, Some(Vec::new())));
            }
            // First as if every key were new (the common case): one statement. A stored key
            // fails it on the primary key, nothing is applied, and the batch runs the long way.
            match client
                .query(&connection.named.add_fresh_keys, &fresh_params)
                .await
            {
                Ok(rows) => return Ok((rows, None)),
                Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(error) => return Err(classify(&error)),
            }
            // Pipelined: one round trip. A failed statement turns the COMMIT into a rollback.
            let (begin, add, keyed, commit) = tokio::join!(
                client.batch_execute("BEGIN"),
                client.query(&connection.named.add, &add_params),
                client.query(&connection.named.add_keyed, &keyed_params),
                client.batch_execute("COMMIT"),
            );
            begin.map_err(|error| classify(&error))?;
            let rows = add.map_err(|error| classify(&error))?;
            let keyed = keyed.map_err(|error| classify(&error))?;
            commit.map_err(|error| classify(&error))?;
            Ok((rows, Some(keyed)))
        };
        let result = tokio::time::timeout_at(statement_deadline.into(), transaction).await;
        let (rows, keyed_rows) = match result {
            Err(_elapsed) => return Err(CommitError::Timeout),
            Ok(Err(error)) => {
                if let Some(limit) = self.named_limit() {
                    // Known not applied only when refused; in doubt, settling keeps it reserved.
                    if matches!(error, CommitError::Unavailable(_)) {
                        limit.release(reserved);
                    }
                }
                return Err(error);
            }
            Ok(Ok(answer)) => answer,
        };
        let unreadable = |error: tokio_postgres::Error| {
            CommitError::Unknown(format!("unreadable count: {error}"))
        };
        let mut counts = Vec::with_capacity(rows.len());
        let mut created = 0;
        let mut marked = true;
        for row in &rows {
            counts.push(row.try_get::<_, i64>(0).map_err(unreadable)?);
            created += i64::from(row.try_get::<_, bool>(1).map_err(unreadable)?);
            marked &= row.try_get::<_, bool>(2).map_err(unreadable)?;
        }
        if let Some(limit) = self.named_limit() {
            limit.release(reserved - created);
        }
        let keyed = match keyed_rows {
            Some(rows) => keys.outcomes(&rows).map_err(|error| {
                CommitError::Unknown(format!("unreadable keyed result: {error}"))
            })?,
            // Every key was new: each counted after its name's unkeyed part, in order.
            None => {
                let ends: HashMap<&str, i64> =
                    names.iter().copied().zip(counts.iter().copied()).collect();
                keys.names
                    .iter()
                    .zip(&running)
                    .map(|(name, running)| {
                        ends.get(name)
                            .map(|end| KeyOutcome::Counted(end + running))
                            .ok_or_else(|| {
                                CommitError::Unknown("a key's counter was not counted".into())
                            })
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        self.recreate_row_if_unmarked(connection, marked).await;
        self.committed_named(work, refused, &names, &deltas, counts, keyed, &keys)
    }

    /// Records a committed named batch (statistics, the view) and spreads its answer over the
    /// batch's names and keyed increments.
    #[allow(clippy::too_many_arguments)]
    fn committed_named(
        &self,
        work: &NamedWork,
        refused: &[bool],
        names: &[&str],
        deltas: &[i64],
        counts: Vec<i64>,
        keyed: Vec<KeyOutcome>,
        keys: &KeyedParams<'_>,
    ) -> Result<NamedCommitted, CommitError> {
        let added: i64 = keyed
            .iter()
            .zip(&keys.bys)
            .filter(|(outcome, _)| matches!(outcome, KeyOutcome::Counted(_)))
            .map(|(_, by)| by)
            .sum();
        self.counted_named(deltas, added);
        // The view gets each name's count after its keyed increments too.
        let mut last: HashMap<&str, i64> =
            names.iter().copied().zip(counts.iter().copied()).collect();
        for (outcome, name) in keyed.iter().zip(&keys.names) {
            if let (KeyOutcome::Counted(count), Some(seen)) = (outcome, last.get_mut(name)) {
                *seen = (*seen).max(*count);
            }
        }
        self.saw_named(last.into_iter());
        let mut committed = spread(work, refused, counts)?;
        let mut outcomes = keyed.into_iter();
        let mut sent_keys = keys.index.iter().peekable();
        for (i, slot) in committed.keyed.iter_mut().enumerate() {
            if sent_keys.next_if(|&&at| at == i).is_some() {
                *slot = outcomes.next();
            }
        }
        Ok(committed)
    }

    /// Decides which new names the counter limit admits (see [`NamedLimit`]): without a limit
    /// or with room for every name of the batch, all (no statement); else only as many new
    /// names as there is room for, found with [`EXISTING_NAMES`](super::sql::EXISTING_NAMES).
    /// Returns how many creations it reserved.
    async fn admit(
        &self,
        connection: &Connection,
        work: &NamedWork,
        refused: &mut Vec<bool>,
    ) -> Result<i64, CommitError> {
        let Some(limit) = self.named_limit() else {
            return Ok(0);
        };
        if !refused.is_empty() {
            // Admitted on an earlier attempt: the same names go again.
            return Ok(0);
        }
        let n = work.names.len() as i64;
        if limit.reserve(n) {
            return Ok(n);
        }
        let names: Vec<&str> = work.names.iter().map(|(name, _)| &**name).collect();
        let rows = connection
            .client
            .query(&connection.named.existing, &[&names])
            .await
            .map_err(|error| classify(&error))?;
        let mut existing = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let name: &str = row
                .try_get(0)
                .map_err(|error| CommitError::Unknown(format!("unreadable name: {error}")))?;
            existing.insert(name.to_owned());
        }
        let new = names
            .iter()
            .filter(|name| !existing.contains(**name))
            .count() as i64;
        let mut room = limit.reserve_up_to(new);
        let reserved = room;
        refused.clear();
        for name in &names {
            let admitted = existing.contains(*name) || {
                let fits = room > 0;
                room -= i64::from(fits);
                fits
            };
            refused.push(!admitted);
        }
        Ok(reserved)
    }

    fn counted_named(&self, deltas: &[i64], keyed: i64) {
        let stats = &self.shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        let sum: i64 = deltas.iter().sum::<i64>() + keyed;
        stats
            .committed_delta_sum
            .fetch_add(sum.unsigned_abs(), Ordering::Relaxed);
    }

    pub(super) fn answer_named(
        &self,
        reply: NamedReply,
        result: Result<NamedCommitted, CommitError>,
    ) {
        if let Err(error) = &result {
            self.count_error(error);
            log::warn!("named increments not confirmed: {error}");
        }
        let _ = reply.send(result);
    }

    /// Settles an in-doubt named batch in one transaction (see the module comment): its
    /// counts if it committed, else it runs again. `None` when this store's row is gone.
    /// The flag says whether it had committed before.
    pub(super) async fn settle_named(
        &self,
        connection: &Connection,
        id: i64,
        work: &NamedWork,
        refused: &[bool],
    ) -> Result<Option<(NamedCommitted, bool)>, StoreError> {
        let client = &connection.client;
        let (names, deltas) = sent(work, refused);
        client.batch_execute("BEGIN").await?;
        client.query(&connection.named.lock, &[&names]).await?;
        let found = client
            .query_opt(&connection.named.find_batch, &[&self.instance])
            .await?;
        let settled = match found {
            None => {
                client
                    .execute(&connection.insert_instance, &[&self.instance])
                    .await?;
                None
            }
            Some(row) if row.try_get::<_, Option<i64>>(0)? == Some(id) => {
                let counts: Vec<i64> = row.try_get::<_, Option<Vec<i64>>>(1)?.unwrap_or_default();
                let keys = KeyedParams::new(work, refused);
                let keyed = self.find_named_keys(connection, id, &keys).await?;
                let committed =
                    self.committed_named(work, refused, &names, &deltas, counts, keyed, &keys)?;
                Some((committed, true))
            }
            Some(_) => {
                let keys = KeyedParams::new(work, refused);
                let retention = self.config.idempotency_retention.as_secs_f64();
                let rows = client
                    .query(
                        &connection.named.add,
                        &[&names, &deltas, &self.instance, &id],
                    )
                    .await?;
                let counts = rows
                    .iter()
                    .map(|row| row.try_get::<_, i64>(0))
                    .collect::<Result<Vec<_>, _>>()?;
                let keyed_rows = if keys.names.is_empty() {
                    Vec::new()
                } else {
                    client
                        .query(
                            &connection.named.add_keyed,
                            &[&keys.names, &keys.digests, &keys.bys, &retention, &id],
                        )
                        .await?
                };
                let keyed = keys.outcomes(&keyed_rows)?;
                let committed =
                    self.committed_named(work, refused, &names, &deltas, counts, keyed, &keys)?;
                Some((committed, false))
            }
        };
        client.batch_execute("COMMIT").await?;
        Ok(settled)
    }

    /// What each key of a named batch found committed got: counted by it, or by an earlier
    /// batch (replayed, or a mismatch).
    async fn find_named_keys(
        &self,
        connection: &Connection,
        id: i64,
        keys: &KeyedParams<'_>,
    ) -> Result<Vec<KeyOutcome>, StoreError> {
        if keys.names.is_empty() {
            return Ok(Vec::new());
        }
        let rows = connection
            .client
            .query(&connection.named.find_keys, &[&keys.digests])
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let digest: uuid::Uuid = row.try_get(0)?;
            let by: i64 = row.try_get(1)?;
            let count: i64 = row.try_get(2)?;
            let batch_id: i64 = row.try_get(3)?;
            found.insert(digest, (by, count, batch_id));
        }
        keys.digests
            .iter()
            .zip(&keys.bys)
            .zip(&keys.keys)
            .map(|((digest, &mine), key)| {
                let &(by, count, batch_id) = found
                    .get(digest)
                    .ok_or_else(|| StoreError::KeyGone((*key).into()))?;
                Ok(if batch_id == id {
                    KeyOutcome::Counted(count)
                } else if by == mine {
                    KeyOutcome::Replayed(count)
                } else {
                    KeyOutcome::Mismatch
                })
            })
            .collect()
    }

    /// The counts of `names` (0 for a name without a row).
    pub(super) async fn read_named(
        &self,
        connection: &Connection,
        names: &[Box<str>],
    ) -> Result<Vec<i64>, CommitError> {
        let keys: Vec<&str> = names.iter().map(|name| &**name).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&keys];
        let read = connection.client.query(&connection.named.read, &params);
        let rows = match tokio::time::timeout(self.config.commit_timeout, read).await {
            Err(_elapsed) => return Err(CommitError::Timeout),
            Ok(result) => result.map_err(|error| classify(&error))?,
        };
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let unreadable = |error: tokio_postgres::Error| {
                CommitError::Unknown(format!("unreadable named count: {error}"))
            };
            let name: &str = row.try_get(0).map_err(unreadable)?;
            let count: i64 = row.try_get(1).map_err(unreadable)?;
            found.insert(name.to_owned(), count);
        }
        let counts: Vec<i64> = keys
            .iter()
            .map(|name| found.get(*name).copied().unwrap_or(0))
            .collect();
        self.saw_named(keys.iter().copied().zip(counts.iter().copied()));
        Ok(counts)
    }

    /// Deletes the counter `name`: its last count, `None` if it had no row.
    pub(super) async fn delete_named(
        &self,
        connection: &Connection,
        name: &str,
    ) -> Result<Option<i64>, CommitError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
        let delete = connection
            .client
            .query_opt(&connection.named.delete, &params);
        let row = match tokio::time::timeout(self.config.commit_timeout, delete).await {
            Err(_elapsed) => return Err(CommitError::Timeout),
            Ok(result) => result.map_err(|error| classify(&error))?,
        };
        if let Ok(mut view) = self.shared.view.lock() {
            view.remove(name);
        }
        let Some(row) = row else {
            return Ok(None);
        };
        if let Some(limit) = self.named_limit() {
            limit.release(1);
        }
        row.try_get::<_, i64>(0)
            .map(Some)
            .map_err(|error| CommitError::Unknown(format!("unreadable count: {error}")))
    }

    /// Reads how many named counters the database holds, at most every [`RECOUNT_INTERVAL`].
    pub(super) async fn recount_named(&self, connection: &Connection) -> Result<(), StoreError> {
        let Some(limit) = self.named_limit() else {
            return Ok(());
        };
        if Instant::now() < self.named_recount_at.get() {
            return Ok(());
        }
        let row = connection
            .client
            .query_one(super::sql::COUNT_NAMED, &[])
            .await?;
        let rows: i64 = row.try_get(0)?;
        limit.set_rows(rows);
        self.named_recount_at.set(Instant::now() + RECOUNT_INTERVAL);
        Ok(())
    }
}

/// The keyed increments a batch sends (those whose name the limit did not refuse), as
/// [`ADD_NAMED_KEYED`](super::sql::ADD_NAMED_KEYED) takes them.
struct KeyedParams<'w> {
    names: Vec<&'w str>,
    keys: Vec<&'w str>,
    digests: Vec<uuid::Uuid>,
    bys: Vec<i64>,
    /// Each one's index in the batch's `keyed`, ascending.
    index: Vec<usize>,
}

impl<'w> KeyedParams<'w> {
    fn new(work: &'w NamedWork, refused: &[bool]) -> Self {
        let mut params = KeyedParams {
            names: Vec::new(),
            keys: Vec::new(),
            digests: Vec::new(),
            bys: Vec::new(),
            index: Vec::new(),
        };
        for (i, keyed) in work.keyed.iter().enumerate() {
            let at = keyed.name as usize;
            if refused.get(at).copied().unwrap_or(false) {
                continue;
            }
            let Some((name, _)) = work.names.get(at) else {
                continue;
            };
            params.names.push(name);
            params.keys.push(&keyed.key);
            params.digests.push(key_digest(name, &keyed.key));
            params.bys.push(keyed.by);
            params.index.push(i);
        }
        params
    }

    /// Per increment, the sum of the `by`s of its name's increments up to and including its own
    /// (for [`ADD_NAMED_FRESH_KEYS`](super::sql::ADD_NAMED_FRESH_KEYS)).
    fn running(&self) -> Vec<i64> {
        let mut sums: HashMap<&str, i64> = HashMap::new();
        self.names
            .iter()
            .zip(&self.bys)
            .map(|(name, by)| {
                let sum = sums.entry(name).or_insert(0);
                *sum += by;
                *sum
            })
            .collect()
    }

    /// Per name of `names`, the sum of its keyed increments' `by`s (0 for most).
    fn sums(&self, names: &[&str]) -> Vec<i64> {
        let mut sums: HashMap<&str, i64> = HashMap::new();
        for (name, by) in self.names.iter().zip(&self.bys) {
            *sums.entry(name).or_insert(0) += by;
        }
        names
            .iter()
            .map(|name| sums.get(name).copied().unwrap_or(0))
            .collect()
    }

    /// Each sent increment's outcome from [`ADD_NAMED_KEYED`](super::sql::ADD_NAMED_KEYED)'s
    /// rows (seen live, the `by` then, the count).
    fn outcomes(
        &self,
        rows: &[tokio_postgres::Row],
    ) -> Result<Vec<KeyOutcome>, tokio_postgres::Error> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for (row, &mine) in rows.iter().zip(&self.bys) {
            let seen: bool = row.try_get(0)?;
            let by: i64 = row.try_get(1)?;
            let count: i64 = row.try_get(2)?;
            outcomes.push(match (seen, by == mine) {
                (false, _) => KeyOutcome::Counted(count),
                (true, true) => KeyOutcome::Replayed(count),
                (true, false) => KeyOutcome::Mismatch,
            });
        }
        Ok(outcomes)
    }
}

/// The names and deltas a batch sends: those the limit did not refuse.
fn sent<'w>(work: &'w NamedWork, refused: &[bool]) -> (Vec<&'w str>, Vec<i64>) {
    work.names
        .iter()
        .enumerate()
        .filter(|(i, _)| !refused.get(*i).copied().unwrap_or(false))
        .map(|(_, (name, delta))| (&**name, *delta))
        .unzip()
}

/// The counts of the names sent, spread over the batch's names (`None` where refused).
fn spread(
    work: &NamedWork,
    refused: &[bool],
    counts: Vec<i64>,
) -> Result<NamedCommitted, CommitError> {
    let mut counts = counts.into_iter();
    let spread: Option<Vec<Option<i64>>> = (0..work.names.len())
        .map(|i| {
            if refused.get(i).copied().unwrap_or(false) {
                Some(None)
            } else {
                counts.next().map(Some)
            }
        })
        .collect();
    match (spread, counts.next()) {
        (Some(counts), None) => Ok(NamedCommitted {
            counts,
            keyed: vec![None; work.keyed.len()],
        }),
        _ => Err(CommitError::Unknown(
            "the store answered a different number of named counts than it sent".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(names: &[(&str, i64)]) -> NamedWork {
        NamedWork {
            names: names.iter().map(|&(n, d)| (n.into(), d)).collect(),
            keyed: Vec::new(),
        }
    }

    #[test]
    fn counts_go_back_to_their_names_and_refused_names_get_none() {
        let w = work(&[("a", 1), ("b", 2), ("c", 3)]);
        let refused = [false, true, false];
        assert_eq!(sent(&w, &refused), (vec!["a", "c"], vec![1, 3]));
        assert_eq!(
            spread(&w, &refused, vec![10, 30]).map(|c| c.counts),
            Ok(vec![Some(10), None, Some(30)])
        );
        assert!(spread(&w, &refused, vec![10]).is_err());
        assert!(spread(&w, &[], vec![1, 2, 3, 4]).is_err());
    }
}
