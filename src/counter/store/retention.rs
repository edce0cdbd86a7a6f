//! Retention: the paced sweep of expired idempotency keys (`tally_idempotency`) and the
//! upkeep of `tally_instances` (this store's row touched, rows of long-gone stores deleted).
//! Runs between commits on the serving connection; touches only those two tables. The pace
//! and the cursor are `sweep`'s.

use std::time::Instant;

use super::connect::Connection;
use super::error::{statement_was_rejected, StoreError};
use super::sql::{PRUNE_INSTANCES, TOUCH_INSTANCE};
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
    /// now, or `None` when the connection should be dropped.
    pub(super) async fn prune(&self, connection: &Connection) -> Option<bool> {
        let retention = self.config.idempotency_retention;
        let mut sweep = self.sweep.get();
        sweep.tick(retention);
        let slice = sweep.slice();
        let upkeep_due = Instant::now() >= self.instance_upkeep_at.get();
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
            connection
                .client
                .query_one(&connection.sweep_keys, &[&slice.0, &slice.1, &retention])
                .await
        };
        let row = match tokio::time::timeout(self.config.commit_timeout, delete).await {
            Ok(Ok(row)) => row,
            Ok(Err(error)) => {
                log::warn!("pruning expired keys: {error}");
                self.sweep.set(sweep);
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
        let more = sweep.advance(slice, table_pages);
        self.sweep.set(sweep);
        Some(more)
    }
}
