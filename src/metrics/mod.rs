//! Metrics: the primitives (single-writer per-core counters, shared histograms, the Prometheus
//! text format) and each core's HTTP metrics. Knows no routes: the route labels are given when
//! a core's [`CoreMetrics`] is made, so the route table stays the one source of them.
//!
//! Each core writes only its own [`CoreMetrics`] (single writer, so plain relaxed load+store,
//! no locked read-modify-write on the request path); `/metrics` reads every core's copy.

pub mod process;
mod text;

pub use text::{write_header, write_single};

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::http::Status;

/// One metric's value (a count or a gauge) written by one core only.
#[derive(Default)]
pub struct CoreValue(AtomicU64);

impl CoreValue {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the request-duration buckets, in microseconds (Prometheus' default
/// buckets, with three finer ones below 1 ms where tally's requests are).
const DURATION_BOUNDS_MICROS: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// One route's request durations on one core (single writer, like [`CoreValue`]).
#[derive(Default)]
struct DurationHistogram {
    buckets: [CoreValue; DURATION_BOUNDS_MICROS.len()],
    sum_micros: CoreValue,
    count: CoreValue,
}

impl DurationHistogram {
    #[inline]
    fn observe(&self, micros: u64) {
        // Most requests land in the first buckets, so a linear scan ends early.
        if let Some(i) = DURATION_BOUNDS_MICROS.iter().position(|&b| micros <= b) {
            self.buckets[i].add(1);
        }
        self.sum_micros.add(micros);
        self.count.add(1);
    }
}

/// One core's metrics, padded to its own cache lines so cores never share one.
#[repr(align(128))]
pub struct CoreMetrics {
    /// Metric label of each route index; the last one is for requests no route matched.
    route_labels: &'static [&'static str],
    /// Requests answered, indexed by `route * Status::COUNT + status.index()`.
    requests: Box<[CoreValue]>,
    /// Request durations by route index.
    durations: Box<[DurationHistogram]>,
    pub open_connections: CoreValue,
    pub accepted_connections: CoreValue,
    pub refused_connections: CoreValue,
    pub timed_out_connections: CoreValue,
    pub kv_replica_bytes: CoreValue,
    pub kv_replica_pairs: CoreValue,
}

impl CoreMetrics {
    /// `route_labels[i]` names route index `i`; route indices past the end count under the last.
    pub fn new(route_labels: &'static [&'static str]) -> Self {
        assert!(
            !route_labels.is_empty(),
            "at least the label for unmatched requests"
        );
        CoreMetrics {
            route_labels,
            requests: (0..route_labels.len() * Status::COUNT)
                .map(|_| CoreValue::default())
                .collect(),
            durations: (0..route_labels.len())
                .map(|_| DurationHistogram::default())
                .collect(),
            open_connections: CoreValue::default(),
            accepted_connections: CoreValue::default(),
            refused_connections: CoreValue::default(),
            timed_out_connections: CoreValue::default(),
            kv_replica_bytes: CoreValue::default(),
            kv_replica_pairs: CoreValue::default(),
        }
    }

    /// Counts one answered request and the time from its bytes' arrival to its response's
    /// departure.
    #[inline]
    pub fn record_request(&self, route: usize, status: Status, duration: Duration) {
        let route = route.min(self.route_labels.len() - 1);
        self.requests[route * Status::COUNT + status.index()].add(1);
        self.durations[route].observe(duration.as_micros() as u64);
    }

    fn requests(&self, route: usize, status: Status) -> u64 {
        self.requests[route * Status::COUNT + status.index()].get()
    }
}

/// Appends the Prometheus text for all cores' metrics to `out`.
pub fn render_cores(cores: &[CoreMetrics], out: &mut String) {
    render_requests(cores, out);
    render_durations(cores, out);
    type Gauge = (
        &'static str,
        &'static str,
        &'static str,
        fn(&CoreMetrics) -> u64,
    );
    let gauges: [Gauge; 6] = [
        (
            "tally_open_connections",
            "gauge",
            "Open client connections.",
            |m| m.open_connections.get(),
        ),
        (
            "tally_accepted_connections_total",
            "counter",
            "Connections accepted.",
            |m| m.accepted_connections.get(),
        ),
        (
            "tally_refused_connections_total",
            "counter",
            "Connections refused with 503 at the per-core cap.",
            |m| m.refused_connections.get(),
        ),
        (
            "tally_timed_out_connections_total",
            "counter",
            "Connections closed by the request or idle timeout.",
            |m| m.timed_out_connections.get(),
        ),
        (
            "tally_kv_replica_bytes",
            "gauge",
            "Heap bytes of this core's key/value replica.",
            |m| m.kv_replica_bytes.get(),
        ),
        (
            "tally_kv_replica_pairs",
            "gauge",
            "Pairs in this core's key/value replica.",
            |m| m.kv_replica_pairs.get(),
        ),
    ];
    for (name, kind, help, get) in gauges {
        write_header(out, name, kind, help);
        for (core, m) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", get(m));
        }
    }
}

fn render_requests(cores: &[CoreMetrics], out: &mut String) {
    write_header(
        out,
        "tally_http_requests_total",
        "counter",
        "HTTP requests answered, by route, status and core.",
    );
    for (core, m) in cores.iter().enumerate() {
        for (r, route) in m.route_labels.iter().enumerate() {
            for status in Status::ALL {
                let n = m.requests(r, status);
                if n > 0 {
                    let code = status.code();
                    let _ = writeln!(
                        out,
                        "tally_http_requests_total{{route=\"{route}\",status=\"{code}\",core=\"{core}\"}} {n}"
                    );
                }
            }
        }
    }
}

fn render_durations(cores: &[CoreMetrics], out: &mut String) {
    const NAME: &str = "tally_http_request_duration_seconds";
    write_header(
        out,
        NAME,
        "histogram",
        "Time from a request's arrival to its response being written, by route and core \
         (requests answered together share the batch's time).",
    );
    for (core, m) in cores.iter().enumerate() {
        for (route, h) in m.route_labels.iter().zip(m.durations.iter()) {
            let count = h.count.get();
            if count == 0 {
                continue;
            }
            let labels = format!("route=\"{route}\",core=\"{core}\"");
            let mut cumulative = 0;
            for (bound, bucket) in DURATION_BOUNDS_MICROS.iter().zip(&h.buckets) {
                cumulative += bucket.get();
                let le = *bound as f64 / 1e6;
                let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{NAME}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let sum = h.sum_micros.get() as f64 / 1e6;
            let _ = writeln!(out, "{NAME}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{NAME}_count{{{labels}}} {count}");
        }
    }
}

/// A fixed-bucket histogram shared between threads (for batch sizes and commit latencies,
/// written by the owner core, read by `/metrics`).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation; the sum is kept in millionths to stay an integer.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum.fetch_add((v * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        write_header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static LABELS: [&str; 3] = ["/a", "/b", "other"];

    #[test]
    fn requests_are_rendered_by_route_status_and_core() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::new(&LABELS)).collect();
        let ms = Duration::from_millis(1);
        cores[1].record_request(1, Status::NotFound, ms);
        cores[1].record_request(1, Status::NotFound, ms);
        cores[0].record_request(7, Status::InternalServerError, ms);
        let mut out = String::new();
        render_cores(&cores, &mut out);
        assert!(out.contains("tally_http_requests_total{route=\"/b\",status=\"404\",core=\"1\"} 2"));
        assert!(
            out.contains("tally_http_requests_total{route=\"other\",status=\"500\",core=\"0\"} 1"),
            "a route index past the labels counts as the last label"
        );
        assert!(out.contains("tally_open_connections{core=\"1\"} 0"));
    }

    #[test]
    fn request_durations_are_cumulative_buckets_in_seconds() {
        let cores = [CoreMetrics::new(&LABELS)];
        for micros in [40, 90, 90, 7_000_000] {
            cores[0].record_request(0, Status::Ok, Duration::from_micros(micros));
        }
        let mut out = String::new();
        render_cores(&cores, &mut out);
        let line = |s: &str| out.lines().any(|l| l == s);
        let d = "tally_http_request_duration_seconds";
        assert!(
            line(&format!(
                "{d}_bucket{{route=\"/a\",core=\"0\",le=\"0.00005\"}} 1"
            )),
            "{out}"
        );
        assert!(line(&format!(
            "{d}_bucket{{route=\"/a\",core=\"0\",le=\"0.0001\"}} 3"
        )));
        assert!(line(&format!(
            "{d}_bucket{{route=\"/a\",core=\"0\",le=\"5\"}} 3"
        )));
        assert!(line(&format!(
            "{d}_bucket{{route=\"/a\",core=\"0\",le=\"+Inf\"}} 4"
        )));
        assert!(line(&format!("{d}_count{{route=\"/a\",core=\"0\"}} 4")));
        assert!(line(&format!("{d}_sum{{route=\"/a\",core=\"0\"}} 7.00022")));
        assert!(
            !out.contains("route=\"/b\",core"),
            "routes without requests are left out"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        static BOUNDS: [f64; 3] = [1.0, 10.0, 100.0];
        let h = Histogram::new(&BOUNDS);
        for v in [0.5, 5.0, 5.0, 1000.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render("x", "test", &mut out);
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"10\"} 3\n"));
        assert!(out.contains("x_bucket{le=\"100\"} 3\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"));
        assert_eq!(h.count(), 4);
    }
}
