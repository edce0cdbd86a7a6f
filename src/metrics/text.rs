//! The Prometheus text exposition format: a metric's HELP and TYPE lines, and a metric with
//! one sample.

use std::fmt::Write as _;

/// Appends a metric's `# HELP` and `# TYPE` lines (Prometheus text format 0.0.4).
pub fn write_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a metric with one unlabelled sample.
pub fn write_single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    write_header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}
