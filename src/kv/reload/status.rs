//! [`ReloadStatus`]: the dataset's generation, size, load time and last failure, written by
//! the reload thread and rendered for `/metrics` by any core. Touches only its atomics and
//! the metrics text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics;

/// The dataset's state for `/metrics`; written by the reload thread, read by any core.
#[derive(Default)]
pub struct ReloadStatus {
    /// 1 for the dataset loaded at start-up, +1 for every reload every core swapped in.
    generation: AtomicU64,
    pairs: AtomicU64,
    /// Unix seconds when the current dataset finished loading (every core swapped).
    loaded_unix_seconds: AtomicU64,
    /// Parse + build + swap of the current dataset, in microseconds.
    load_micros: AtomicU64,
    failures: AtomicU64,
    /// The last failure's message (file, position, reason); empty after a success.
    last_error: Mutex<String>,
}

impl ReloadStatus {
    /// The status of the dataset loaded at start-up.
    pub fn initial(pairs: usize, load_time: Duration) -> ReloadStatus {
        let status = ReloadStatus::default();
        status.generation.store(1, Relaxed);
        status.loaded(pairs, load_time);
        status
    }

    fn loaded(&self, pairs: usize, took: Duration) {
        self.pairs.store(pairs as u64, Relaxed);
        self.loaded_unix_seconds.store(unix_seconds(), Relaxed);
        self.load_micros.store(took.as_micros() as u64, Relaxed);
    }

    /// A reload every core swapped in: the next generation, and no error to report.
    pub(super) fn reloaded(&self, pairs: usize, took: Duration) {
        self.generation.fetch_add(1, Relaxed);
        self.loaded(pairs, took);
        self.lock_error().clear();
    }

    /// A reload refused or failed: counted, and its message kept for `/metrics`.
    pub(super) fn failed(&self, message: String) {
        self.failures.fetch_add(1, Relaxed);
        *self.lock_error() = message;
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    pub(super) fn lock_error(&self) -> std::sync::MutexGuard<'_, String> {
        // A panic while holding it leaves a plain String, still usable.
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the dataset metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let singles: [(&str, &str, &str, u64); 4] = [
            (
                "tally_kv_generation",
                "gauge",
                "Key/value dataset generation: 1 at start-up, +1 per reload every core swapped in.",
                self.generation(),
            ),
            (
                "tally_kv_pairs",
                "gauge",
                "Pairs in the current key/value dataset.",
                self.pairs.load(Relaxed),
            ),
            (
                "tally_kv_last_load_timestamp_seconds",
                "gauge",
                "Unix time the current key/value dataset finished loading.",
                self.loaded_unix_seconds.load(Relaxed),
            ),
            (
                "tally_kv_reload_failures_total",
                "counter",
                "Key/value reloads refused or failed (the previous dataset kept serving).",
                self.failures(),
            ),
        ];
        for (name, kind, help, value) in singles {
            metrics::write_single(out, name, kind, help, value);
        }
        metrics::write_header(
            out,
            "tally_kv_last_load_duration_seconds",
            "gauge",
            "Time to parse the current key/value dataset and build and swap in every replica.",
        );
        let seconds = self.load_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "tally_kv_last_load_duration_seconds {seconds}");
        let error = self.lock_error();
        if !error.is_empty() {
            metrics::write_header(
                out,
                "tally_kv_last_reload_error_info",
                "gauge",
                "The last failed key/value reload's reason (file, position, cause).",
            );
            let _ = writeln!(
                out,
                "tally_kv_last_reload_error_info{{reason=\"{}\"}} 1",
                escape_label(&error)
            );
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prometheus label value escaping: backslash, double quote and newline.
fn escape_label(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_report_generation_and_the_last_error_escaped() {
        let status = ReloadStatus::initial(5, Duration::from_millis(1500));
        *status.lock_error() = "a.json: line 2: \"bad\"".into();
        status.failures.fetch_add(1, Relaxed);
        let mut out = String::new();
        status.render(&mut out);
        assert!(out.contains("tally_kv_generation 1\n"), "{out}");
        assert!(out.contains("tally_kv_pairs 5\n"), "{out}");
        assert!(out.contains("tally_kv_reload_failures_total 1\n"), "{out}");
        assert!(
            out.contains("tally_kv_last_load_duration_seconds 1.5\n"),
            "{out}"
        );
        assert!(
            out.contains(r#"tally_kv_last_reload_error_info{reason="a.json: line 2: \"bad\""} 1"#),
            "{out}"
        );
    }
}
