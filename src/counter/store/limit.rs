//! [`NamedLimit`]: how many named counters the database may hold (`--max-counters`) and how
//! many this instance knows it holds. Arithmetic on atomics; `named` reserves and releases.

use std::sync::atomic::{AtomicI64, Ordering};

/// The limit on named counters (`--max-counters`) and this instance's count of them, shared by
/// the instance's stores: each adds what it creates and removes what it deletes, and the
/// count is read again from PostgreSQL every `named::RECOUNT_INTERVAL`. Other instances' new
/// counters are seen at that read, so several instances may pass the limit by what they
/// create meanwhile; one instance alone never does.
#[derive(Debug)]
pub struct NamedLimit {
    max: i64,
    rows: AtomicI64,
}

impl NamedLimit {
    pub fn new(max: u64) -> NamedLimit {
        NamedLimit {
            max: i64::try_from(max).unwrap_or(i64::MAX),
            rows: AtomicI64::new(0),
        }
    }

    pub fn max(&self) -> i64 {
        self.max
    }

    /// The named counters in the database, as this instance last knew.
    pub fn rows(&self) -> i64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Reserves room for `n` new counters if there is, all or nothing.
    pub(super) fn reserve(&self, n: i64) -> bool {
        let before = self.rows.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) <= self.max {
            return true;
        }
        self.rows.fetch_sub(n, Ordering::AcqRel);
        false
    }

    /// Reserves room for at most `n` new counters: how many it got.
    pub(super) fn reserve_up_to(&self, n: i64) -> i64 {
        let mut current = self.rows.load(Ordering::Acquire);
        loop {
            let room = (self.max - current).clamp(0, n);
            match self.rows.compare_exchange_weak(
                current,
                current + room,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return room,
                Err(now) => current = now,
            }
        }
    }

    /// What PostgreSQL counted (see `named::RECOUNT_INTERVAL`).
    pub(super) fn set_rows(&self, rows: i64) {
        self.rows.store(rows, Ordering::Release);
    }

    pub(super) fn release(&self, n: i64) {
        self.rows.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_reserves_all_or_nothing_and_up_to_the_room() {
        let limit = NamedLimit::new(5);
        assert!(limit.reserve(3));
        assert!(!limit.reserve(3));
        assert_eq!(limit.rows(), 3);
        assert_eq!(limit.reserve_up_to(4), 2);
        assert_eq!(limit.reserve_up_to(1), 0);
        limit.release(1);
        assert_eq!(limit.rows(), 4);
    }
}
