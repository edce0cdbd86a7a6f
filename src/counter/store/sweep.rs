//! The pace of retention: the intervals of the upkeep of `tally_instances`, and [`Sweep`],
//! the cursor over `tally_keys` (or `tally_idempotency`) that says which slice of expired keys
//! is next and when.
//! Arithmetic only; `retention` runs the statements.

use std::time::Duration;

/// How long the row of a store that stopped writing is kept. A live store touches its row far
/// more often, and its in-doubt batch is settled within a commit timeout.
pub(super) const INSTANCE_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub(super) const INSTANCE_TOUCH_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the sweep of expired idempotency keys ([`SWEEP_KEYS`](super::sql::SWEEP_KEYS))
/// takes its next slice; again at once, between commits, while it is behind its pace.
pub(super) const PRUNE_INTERVAL: Duration = Duration::from_millis(250);
/// Most pages of `tally_keys` one sweep statement reads (256 KiB of 8 KiB pages): a
/// slice small enough that no DELETE holds the store's connection, or row locks, for long
/// (its cost is measured in commit 8423579).
const SWEEP_SLICE_PAGES: i64 = 32;
/// The sweep goes over the whole table once per retention / this: an expired key is deleted
/// at most a quarter of the retention after it expired (it counts again from its expiry
/// anyway: [`ADD_KEYED`](super::sql::ADD_KEYED) checks `created_at`), and the sweep reads each
/// stored row about this many times in its life, whatever the retention and the rate of keys.
pub(super) const SWEEPS_PER_RETENTION: f64 = 4.0;

/// The sweep over `tally_keys` (see [`SWEEP_KEYS`](super::sql::SWEEP_KEYS)): a cursor
/// over its pages, paced
/// so that the whole table is read once per retention / [`SWEEPS_PER_RETENTION`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Sweep {
    /// The first page of the next slice.
    next_page: i64,
    /// The table's size in pages, as the last slice found it.
    pub(super) table_pages: i64,
    /// Pages the pace allows to read now (fractions build up between ticks).
    budget: f64,
}

impl Sweep {
    /// One tick of [`PRUNE_INTERVAL`]: the pace adds to the budget, at most one whole sweep.
    pub(super) fn tick(&mut self, retention: Duration) {
        let period = retention.as_secs_f64() / SWEEPS_PER_RETENTION;
        let share = (PRUNE_INTERVAL.as_secs_f64() / period.max(f64::MIN_POSITIVE)).min(1.0);
        let table = self.table_pages.max(1) as f64;
        self.budget = (self.budget + table * share).min(table);
    }

    /// The pages of the next slice: `[start, end)`, empty while the budget is below a page.
    pub(super) fn slice(&self) -> (i64, i64) {
        let pages = (self.budget as i64).min(SWEEP_SLICE_PAGES);
        (self.next_page, self.next_page + pages)
    }

    /// After the slice `[start, end)` ran on a table of `table_pages` pages: moves the cursor
    /// (back to the first page past the end) and says whether the pace wants another slice now.
    pub(super) fn advance(&mut self, (start, end): (i64, i64), table_pages: i64) -> bool {
        self.budget -= (end - start) as f64;
        self.table_pages = table_pages;
        self.next_page = if end >= table_pages { 0 } else { end };
        self.budget >= 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_reads_a_small_table_whole_each_tick_when_the_retention_is_short() {
        let mut sweep = Sweep::default();
        let retention = PRUNE_INTERVAL.mul_f64(SWEEPS_PER_RETENTION);
        sweep.tick(retention);
        assert_eq!(sweep.slice(), (0, 1), "the size is not known yet: one page");
        assert!(!sweep.advance((0, 1), 3));
        sweep.tick(retention);
        assert_eq!(sweep.slice(), (1, 4));
        assert!(!sweep.advance((1, 4), 3));
        assert_eq!(sweep.next_page, 0, "back to the start past the last page");
    }

    #[test]
    fn a_sweep_reads_each_page_once_per_quarter_retention_in_bounded_slices() {
        let retention = Duration::from_secs(24 * 3600);
        let mut sweep = Sweep {
            table_pages: 400,
            ..Sweep::default()
        };
        // 400 pages over 6 hours: one page per 54 s, 216 ticks.
        let mut ticks = 0;
        loop {
            ticks += 1;
            sweep.tick(retention);
            if sweep.slice() != (0, 0) {
                break;
            }
        }
        assert_eq!((ticks, sweep.slice()), (216, (0, 1)));

        // A table that grew past its pace (or a long disconnection): at most one sweep is
        // owed, taken a slice at a time, again at once while the budget lasts.
        let mut behind = Sweep {
            table_pages: 100,
            budget: 1e9,
            ..Sweep::default()
        };
        behind.tick(retention);
        assert_eq!(behind.budget, 100.0);
        let mut slices = Vec::new();
        loop {
            let slice = behind.slice();
            slices.push(slice);
            if !behind.advance(slice, 100) {
                break;
            }
        }
        assert_eq!(slices, [(0, 32), (32, 64), (64, 96), (96, 100)]);
        assert_eq!(behind.next_page, 0);
    }
}
