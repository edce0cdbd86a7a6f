//! What a named counters' store knows of their counts ([`NameView`]): a bounded map from name
//! to the count last committed or read, written only by the store thread, in the order its
//! statements ran, and read by every core to answer GET without a query. Two generations: new
//! entries go to the young map; when it is full, it becomes the old one and the old one is
//! dropped, so memory stays bounded however many names clients use, and a name read or
//! written again moves back to the young map.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A count and when the store last confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) count: i64,
    pub(super) at: Instant,
}

#[derive(Debug)]
pub(super) struct NameView {
    /// Entries per generation.
    generation: usize,
    young: HashMap<Box<str>, Entry>,
    old: HashMap<Box<str>, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seen: Seen,
    /// A refresh was asked for since the count was last confirmed.
    asked: bool,
}

impl NameView {
    /// At most `capacity` names (two generations of half each).
    pub(super) fn new(capacity: usize) -> NameView {
        NameView {
            generation: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    #[cfg(test)]
    fn get(&self, name: &str) -> Option<Seen> {
        self.young
            .get(name)
            .or_else(|| self.old.get(name))
            .map(|entry| entry.seen)
    }

    /// The count of `name`, if known, and whether a refresh should be asked for now: it is
    /// older than `fresh_for` and none was asked for since.
    pub(super) fn ask(&mut self, name: &str, fresh_for: Duration) -> Option<(i64, bool)> {
        let entry = match self.young.get_mut(name) {
            Some(entry) => entry,
            None => self.old.get_mut(name)?,
        };
        let refresh = !entry.asked && entry.seen.at.elapsed() >= fresh_for;
        entry.asked |= refresh;
        Some((entry.seen.count, refresh))
    }

    /// Records what a statement found: a commit's count, or a read's (which may be lower than
    /// what the view held only when the counter was deleted, here or by another instance:
    /// this store's commits and reads run in order).
    pub(super) fn put(&mut self, name: &str, count: i64, at: Instant) {
        let seen = Entry {
            seen: Seen { count, at },
            asked: false,
        };
        if let Some(entry) = self.young.get_mut(name) {
            *entry = seen;
            return;
        }
        let name: Box<str> = match self.old.remove_entry(name) {
            Some((name, _)) => name,
            None => name.into(),
        };
        if self.young.len() >= self.generation {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(name, seen);
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.young.remove(name);
        self.old.remove(name);
    }

    pub(super) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_stays_bounded_and_keeps_names_in_use() {
        let at = Instant::now();
        let mut view = NameView::new(4);
        for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            view.put(name, i as i64, at);
            // "a" is written again each time: it stays.
            view.put("a", 100, at);
        }
        assert!(view.len() <= 4, "{} entries", view.len());
        assert_eq!(view.get("a").map(|s| s.count), Some(100));
        assert_eq!(view.get("e").map(|s| s.count), Some(4));
        assert_eq!(view.get("b"), None, "the oldest name was dropped");
        view.put("e", 2, at);
        assert_eq!(
            view.get("e").map(|s| s.count),
            Some(2),
            "a read after a delete"
        );
        view.remove("e");
        assert_eq!(view.get("e"), None);
    }

    #[test]
    fn a_stale_count_is_answered_and_refreshed_once() {
        let fresh_for = Duration::from_millis(200);
        let mut view = NameView::new(8);
        let old = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("a second after boot");
        view.put("a", 5, old);
        assert_eq!(view.ask("a", fresh_for), Some((5, true)));
        assert_eq!(view.ask("a", fresh_for), Some((5, false)), "asked once");
        view.put("a", 6, Instant::now());
        assert_eq!(view.ask("a", fresh_for), Some((6, false)));
        assert_eq!(view.ask("b", fresh_for), None);
    }
}
