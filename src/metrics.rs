//! Per-core metrics and their Prometheus rendering.
//!
//! Each core writes only its own [`CoreMetrics`] (single writer, so plain relaxed load+store,
//! no locked read-modify-write on the request path); `/metrics` reads every core's copy.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::http::Status;

/// Routes as counted in metrics; `Other` is every unknown path.
pub const ROUTE_NAMES: [&str; 6] = [
    "/api/v1/counter",
    "/get_value",
    "/api/v1/system/health",
    "/api/v1/system/ready",
    "/metrics",
    "other",
];
pub const ROUTE_OTHER: usize = 5;

/// A counter written by one core only.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
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

/// One core's metrics, padded to its own cache lines so cores never share one.
#[repr(align(128))]
#[derive(Default)]
pub struct CoreMetrics {
    requests: [[Counter; Status::COUNT]; ROUTE_NAMES.len()],
    pub open_connections: Counter,
    pub accepted_connections: Counter,
    pub refused_connections: Counter,
    pub timed_out_connections: Counter,
    pub kv_replica_bytes: Counter,
    pub kv_replica_pairs: Counter,
}

impl CoreMetrics {
    #[inline]
    pub fn count_request(&self, route: usize, status: Status) {
        self.requests[route.min(ROUTE_OTHER)][status.index()].add(1);
    }
}

/// Appends a metric's `# HELP` and `# TYPE` lines (Prometheus text format 0.0.4).
pub fn write_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a metric with one unlabelled sample.
pub fn write_single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    write_header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Appends the Prometheus text for all cores' metrics to `out`.
pub fn render_cores(cores: &[CoreMetrics], out: &mut String) {
    write_header(
        out,
        "tally_http_requests_total",
        "counter",
        "HTTP requests answered, by route, status and core.",
    );
    for (core, m) in cores.iter().enumerate() {
        for (r, route) in ROUTE_NAMES.iter().enumerate() {
            for (s, status) in Status::ALL.iter().enumerate() {
                let n = m.requests[r][s].get();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tally_http_requests_total{{route=\"{route}\",status=\"{status}\",core=\"{core}\"}} {n}"
                    );
                }
            }
        }
    }
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

    #[test]
    fn requests_are_rendered_by_route_status_and_core() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        cores[1].count_request(1, Status::NotFound);
        cores[1].count_request(1, Status::NotFound);
        cores[0].count_request(ROUTE_OTHER, Status::InternalServerError);
        let mut out = String::new();
        render_cores(&cores, &mut out);
        assert!(out.contains(
            "tally_http_requests_total{route=\"/get_value\",status=\"404\",core=\"1\"} 2"
        ));
        assert!(
            out.contains("tally_http_requests_total{route=\"other\",status=\"500\",core=\"0\"} 1")
        );
        assert!(out.contains("tally_open_connections{core=\"1\"} 0"));
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
