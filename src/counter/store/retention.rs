//! Retention: the paced sweep of expired idempotency keys (`tally_keys`, and earlier
//! versions' `tally_idempotency` until it is empty) and the upkeep of `tally_instances` (this
//! store's row touched, rows of long-gone stores deleted). Runs between commits on the serving
//! connection; touches only those tables. The pace
//! and the cursor are `sweep`'s.

use std::time::Instant;

use tokio_postgres::types::ToSql;

use super::connect::{Connection, LegacyKeys};
use super::error::{statement_was_rejected, StoreError};
use super::sql::{PRUNE_INSTANCES, SWEEP_BEGIN, TOUCH_INSTANCE};
use super::state::Store;
use super::sweep::{INSTANCE_RETENTION, INSTANCE_TOUCH_INTERVAL};

impl Store<'_> {
    /// Touches this store's row (or inserts it, `insert`, only when no batch is in doubt) and
    /// deletes the rows of stores gone for [`INSTANCE_RETENTION`].
    pub(super) async fn upkeep_instances(
        &self,
        connection: &Connection,
        insert: bool,
    ) -> Result<(), StoreError> {
        let client = &connection.client;
        let ours = if insert {
            client
                .execute(&connection.insert_instance, &[&self.instance])
                .await
        } else {
            client.execute(TOUCH_INSTANCE, &[&self.instance]).await
        };
        ours.map_err(StoreError::InstanceUpkeep)?;
        let retention = INSTANCE_RETENTION.as_secs_f64();
        client
            .execute(PRUNE_INSTANCES, &[&retention])
            .await
            .map_err(StoreError::InstanceUpkeep)?;
        self.instance_upkeep_at
            .set(Instant::now() + INSTANCE_TOUCH_INTERVAL);
        Ok(())
    }

    /// Runs the sweep's next slice of expired keys (and, once per [`INSTANCE_TOUCH_INTERVAL`],
    /// keeps `tally_instances`): whether the sweep is behind its pace and wants another slice
    /// now, or `None` when the connection should be dropped. While `tally_idempotency` holds
    /// keys of an earlier version, a slice of it goes in the same transaction, at its own pace.
    pub(super) async fn prune(&self, connection: &Connection) -> Option<bool> {
        if self.config.named.is_some() {
            // A named counters' store keeps its own row only: the single counter's store, which
            // every instance has, sweeps `tally_keys` for every counter's keys.
            if Instant::now() >= self.instance_upkeep_at.get() {
                if let Err(error) = self.upkeep_instances(connection, false).await {
                    log::warn!("{error}");
                    self.instance_upkeep_at
                        .set(Instant::now() + INSTANCE_TOUCH_INTERVAL);
                }
            }
            return Some(false);
        }
        let retention = self.config.idempotency_retention;
        let mut sweep = self.sweep.get();
        sweep.tick(retention);
        let slice = sweep.slice();
        let legacy = connection.legacy_keys();
        let mut legacy_sweep = self.legacy_sweep.get();
        legacy_sweep.tick(retention);
        let legacy_slice = legacy_sweep.slice();
        let upkeep_due = Instant::now() >= self.instance_upkeep_at.get();
        let client = &connection.client;
        let delete = async {
            if upkeep_due {
                if let Err(error) = self.upkeep_instances(connection, false).await {
                    // Retried at the next interval; the row's retention is far longer.
                    log::warn!("{error}");
                    self.instance_upkeep_at
                        .set(Instant::now() + INSTANCE_TOUCH_INTERVAL);
                }
            }
            let retention = retention.as_secs_f64();
            let legacy_slice_run = async {
                match legacy {
                    Some(legacy) => client
                        .query_one(
                            &legacy.sweep,
                            &[&legacy_slice.0, &legacy_slice.1, &retention],
                        )
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            };
            let params: [&(dyn ToSql + Sync); 3] = [&slice.0, &slice.1, &retention];
            // Pipelined: one round trip, and no WAL flush of its own (see SWEEP_BEGIN).
            let (begin, row, legacy_row, commit) = tokio::join!(
                client.batch_execute(SWEEP_BEGIN),
                client.query_one(&connection.sweep_keys, &params),
                legacy_slice_run,
                client.batch_execute("COMMIT"),
            );
            begin?;
            let (row, legacy_row) = (row?, legacy_row?);
            commit?;
            Ok::<_, tokio_postgres::Error>((row, legacy_row))
        };
        let (row, legacy_row) = match tokio::time::timeout(self.config.commit_timeout, delete).await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                log::warn!("pruning expired keys: {error}");
                return statement_was_rejected(&error).then_some(false);
            }
            Err(_elapsed) => {
                log::warn!(
                    "pruning expired keys took over {:?}",
                    self.config.commit_timeout
                );
                return None;
            }
        };
        let table_pages = row.try_get::<_, i64>(1).unwrap_or(sweep.table_pages);
        let mut more = sweep.advance(slice, table_pages);
        self.sweep.set(sweep);
        if let (Some(legacy), Some(row)) = (legacy, legacy_row) {
            let table_pages = row.try_get::<_, i64>(1).unwrap_or(legacy_sweep.table_pages);
            more |= legacy_sweep.advance(legacy_slice, table_pages);
            self.legacy_sweep.set(legacy_sweep);
            if legacy_slice.1 >= table_pages {
                self.check_legacy_keys_left(connection, legacy).await;
            }
        }
        Some(more)
    }

    /// After a whole round of the sweep over `tally_idempotency`: once it holds no key, keyed
    /// batches stop looking there.
    async fn check_legacy_keys_left(&self, connection: &Connection, legacy: &LegacyKeys) {
        let left = connection.client.query_one(&legacy.left, &[]);
        match tokio::time::timeout(self.config.commit_timeout, left).await {
            Ok(Ok(row)) if !row.try_get::<_, bool>(0).unwrap_or(true) => {
                legacy.holds_keys.set(false);
                log::info!(
                    "the last key of an earlier tally version expired; tally_idempotency is \
                     empty and no longer used: drop it once no earlier tally uses this \
                     database: DROP TABLE tally_idempotency"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => log::warn!("reading tally_idempotency: {error}"),
            Err(_elapsed) => log::warn!("reading tally_idempotency timed out"),
        }
    }
}
