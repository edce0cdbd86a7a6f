//! The second guarantee, no value returned twice: every count a commit or a read finds goes
//! through here, and a row below a count this store returned stops all increments until a read
//! finds it raised again (docs/operations.md, "When the counter row goes backwards").

use std::sync::atomic::Ordering;

use super::connect::Connection;
use super::error::{classify, CommitError, RowLowered};
use super::shared::NOT_SEEN;
use super::state::Store;

impl Store<'_> {
    /// Records the count a committed batch of `delta` returned, unless it would hand out a
    /// value twice (see the module comment).
    pub(super) fn confirm(&self, count: i64, delta: i64) -> Result<i64, CommitError> {
        // The values this commit hands out are count - delta + 1 ..= count. Every one of them
        // is above highest_returned unless the row went down since our last commit.
        let highest_returned = self.shared.highest_returned.load(Ordering::Acquire);
        if highest_returned != NOT_SEEN && count - delta < highest_returned {
            self.shared.lowered_row.store(count, Ordering::Release);
            log::error!(
                "the counter row went backwards: PostgreSQL returned {count} after this \
                 instance had returned {highest_returned} (restored backup? manual UPDATE?). \
                 Refusing every increment until the row is raised to at least \
                 {highest_returned}: UPDATE tally_counter SET count = GREATEST(count, \
                 {highest_returned}) WHERE id = 1"
            );
            return Err(CommitError::RowLowered {
                row: count,
                highest_returned,
            });
        }
        self.shared.highest_returned.store(count, Ordering::Release);
        self.shared.highest_seen.fetch_max(count, Ordering::AcqRel);
        let stats = &self.shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .committed_delta_sum
            .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        Ok(count)
    }

    /// Records a count read from the row: raises `highest_seen`, and ends or updates the
    /// refusal of a lowered row. `Err(RowLowered)` while the row is still too low.
    pub(super) fn saw_row(&self, count: i64) -> Result<(), CommitError> {
        self.shared.highest_seen.fetch_max(count, Ordering::AcqRel);
        let Some(lowered) = self.shared.row_lowered() else {
            return Ok(());
        };
        if count >= lowered.highest_returned {
            self.shared.lowered_row.store(NOT_SEEN, Ordering::Release);
            log::warn!(
                "the counter row is back at {count}, at or above {}, the highest count this \
                 instance returned: increments are served again",
                lowered.highest_returned
            );
            Ok(())
        } else {
            self.shared.lowered_row.store(count, Ordering::Release);
            Err(RowLowered {
                row: count,
                ..lowered
            }
            .into())
        }
    }

    /// Reads the row while it is known to be lowered, to see whether it was raised again.
    pub(super) async fn read_row(&self, connection: &Connection) -> Result<(), CommitError> {
        let row = connection
            .client
            .query_opt(&connection.read, &[])
            .await
            .map_err(|error| classify(&error))?
            .ok_or_else(|| CommitError::Unknown("tally_counter has no row with id = 1".into()))?;
        let count = row
            .try_get::<_, i64>(0)
            .map_err(|error| CommitError::Unknown(format!("unreadable count: {error}")))?;
        self.saw_row(count)
    }
}
