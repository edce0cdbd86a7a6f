//! The standard `process_*` metrics every Prometheus client library exports (CPU seconds,
//! resident and virtual memory, open and maximum file descriptors, start time), read from
//! `/proc/self` when `/metrics` is scraped. Names and units follow the Prometheus client
//! guidelines ("Process metrics"), so existing dashboards work unchanged.

use std::fmt::Write as _;

use super::text::write_header;

/// Appends the `process_*` metrics; a value `/proc` cannot give is left out, not invented.
pub fn render(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    // SAFETY: sysconf has no memory-safety requirements.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;

    if let Some(f) = &fields {
        gauge_f64(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (f.utime + f.stime) as f64 / ticks,
        );
        gauge_f64(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (f.rss_pages * page) as f64,
        );
        gauge_f64(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            f.vsize_bytes as f64,
        );
        if let Some(boot) = boot_time_secs() {
            gauge_f64(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + f.start_ticks as f64 / ticks,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries; it is not the process's own.
        let open = dir.count().saturating_sub(1);
        gauge_f64(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        gauge_f64(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            limit.rlim_cur as f64,
        );
    }
}

fn gauge_f64(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    write_header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The fields of `/proc/self/stat` used here (proc(5) numbering in comments).
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,       // (14) clock ticks in user mode
    stime: u64,       // (15) clock ticks in kernel mode
    start_ticks: u64, // (22) clock ticks after boot at which the process started
    vsize_bytes: u64, // (23)
    rss_pages: u64,   // (24)
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // after_name starts at field 3 (state).
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(StatFields {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// Seconds since the epoch at which the machine booted (`btime` in `/proc/stat`).
fn boot_time_secs() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c) R 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 17 18 333 444 555 rest";
        assert_eq!(
            stat_fields(stat),
            Some(StatFields {
                utime: 111,
                stime: 222,
                start_ticks: 333,
                vsize_bytes: 444,
                rss_pages: 555,
            })
        );
    }

    #[test]
    fn every_standard_process_metric_is_rendered_on_linux() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing:\n{out}"
            );
        }
    }
}
