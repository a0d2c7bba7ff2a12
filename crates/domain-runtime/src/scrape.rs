//! Series rendered at scrape time, next to the `metrics` registry's output.
//!
//! The `metrics` registry never forgets a series, and its idle timeout applies to every gauge
//! of a kind at once (most gauges here are set only when their value changes, so they would
//! vanish). Series whose label set changes at run time (one per sequencer instance row, one
//! per loaded certificate) and values read from the kernel at scrape time therefore live
//! here instead:
//! - [`replace_gauge_family`]: a gauge whose whole set of series is replaced on each refresh,
//!   so a series that is no longer refreshed disappears at the next scrape;
//! - TLS certificate expiry per certificate `domain-tls` loaded;
//! - process metrics read from `/proc/self` (Linux only; elsewhere they are absent).
//!
//! Every series carries the same global labels as the recorder's (`component`, and `domain`
//! when configured).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Gauge: TLS certificate `notAfter` as a Unix timestamp, per loaded certificate.
pub const TLS_CERTIFICATE_EXPIRY: &str = "tls_certificate_expiry_timestamp_seconds";
/// Counter: user plus system CPU time of the process.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Gauge: resident set size.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Gauge: virtual memory size.
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// Gauge: open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge: the soft limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Gauge: start time of the process as a Unix timestamp.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// Gauge: OS threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";

struct Family {
    help: &'static str,
    label: &'static str,
    series: Vec<(String, f64)>,
}

#[derive(Default)]
struct State {
    global_labels: Vec<(String, String)>,
    families: BTreeMap<&'static str, Family>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(State::default))
}

/// Sets the labels every scrape-time series carries (called when the recorder is installed).
pub(crate) fn set_global_labels(labels: Vec<(String, String)>) {
    with_state(|s| s.global_labels = labels);
}

/// Replaces every series of the gauge `name` (one per value of `label`). Series absent from
/// `series` are gone from the next scrape on; an empty `series` removes the gauge.
pub fn replace_gauge_family(
    name: &'static str,
    help: &'static str,
    label: &'static str,
    series: Vec<(String, f64)>,
) {
    with_state(|s| {
        s.families.insert(
            name,
            Family {
                help,
                label,
                series,
            },
        );
    });
}

/// Renders every scrape-time series in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    with_state(|s| {
        let globals = &s.global_labels;
        for (name, family) in &s.families {
            if family.series.is_empty() {
                continue;
            }
            header(&mut out, name, family.help, "gauge");
            for (value, sample) in &family.series {
                line(&mut out, name, globals, &[(family.label, value)], *sample);
            }
        }
        // Certificates are remembered by `domain-tls` as it loads them (a leaf crate the
        // client library uses without this runtime).
        let certificates = domain_tls::loaded_certificates();
        if !certificates.is_empty() {
            header(
                &mut out,
                TLS_CERTIFICATE_EXPIRY,
                "notAfter of each loaded TLS certificate (Unix seconds), by role, file and subject",
                "gauge",
            );
            for c in &certificates {
                line(
                    &mut out,
                    TLS_CERTIFICATE_EXPIRY,
                    globals,
                    &[
                        ("role", &c.role),
                        ("path", &c.path),
                        ("subject", &c.subject),
                    ],
                    c.not_after_unix as f64,
                );
            }
        }
        if let Some(process) = ProcessStats::read() {
            process.render(&mut out, globals);
        }
    });
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn line(
    out: &mut String,
    name: &str,
    globals: &[(String, String)],
    labels: &[(&str, &str)],
    value: f64,
) {
    out.push_str(name);
    let mut first = true;
    let pairs = globals
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(labels.iter().copied());
    for (key, val) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(key);
        out.push_str("=\"");
        escape_into(out, val);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Process figures from procfs.
#[derive(Debug, Clone, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    start_time: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    open_fds: f64,
    max_fds: Option<f64>,
}

/// Linux reports times in /proc in USER_HZ, which the kernel fixes at 100 for userspace on
/// every architecture (the real tick rate is hidden); reading sysconf would need `unsafe`.
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Self::parse(&stat, &boot, &status, limits.as_deref(), open_fds)
    }

    fn parse(
        stat: &str,
        boot: &str,
        status: &str,
        limits: Option<&str>,
        open_fds: f64,
    ) -> Option<Self> {
        // The command name (field 2) is in parentheses and may contain spaces; the fields
        // after the last ')' start with field 3 (state).
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let utime = field(14)?;
        let stime = field(15)?;
        let start_ticks = field(22)?;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let kib = |key: &str| -> Option<f64> {
            let value = status.lines().find_map(|l| l.strip_prefix(key))?;
            let number = value.trim().trim_end_matches("kB").trim();
            number.parse::<f64>().ok().map(|v| v * 1024.0)
        };
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))?
            .trim()
            .parse()
            .ok()?;
        let max_fds = limits.and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        });
        Some(Self {
            cpu_seconds: (utime + stime) / USER_HZ,
            start_time: btime + start_ticks / USER_HZ,
            resident_bytes: kib("VmRSS:")?,
            virtual_bytes: kib("VmSize:")?,
            threads,
            open_fds,
            max_fds,
        })
    }

    fn render(&self, out: &mut String, globals: &[(String, String)]) {
        let mut one = |name: &str, help: &str, kind: &str, value: f64| {
            header(out, name, help, kind);
            line(out, name, globals, &[], value);
        };
        one(
            PROCESS_CPU_SECONDS,
            "Total user and system CPU time spent in seconds",
            "counter",
            self.cpu_seconds,
        );
        one(
            PROCESS_START_TIME,
            "Start time of the process since unix epoch in seconds",
            "gauge",
            self.start_time,
        );
        one(
            PROCESS_RESIDENT_MEMORY,
            "Resident memory size in bytes",
            "gauge",
            self.resident_bytes,
        );
        one(
            PROCESS_VIRTUAL_MEMORY,
            "Virtual memory size in bytes",
            "gauge",
            self.virtual_bytes,
        );
        one(
            PROCESS_THREADS,
            "Number of OS threads in the process",
            "gauge",
            self.threads,
        );
        one(
            PROCESS_OPEN_FDS,
            "Number of open file descriptors",
            "gauge",
            self.open_fds,
        );
        if let Some(max) = self.max_fds {
            one(
                PROCESS_MAX_FDS,
                "Maximum number of open file descriptors",
                "gauge",
                max,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_with_spaces_in_the_command_name() {
        let stat = "4242 (seq uencer) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 \
                    12345 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let status = "Name:\tseq\nVmSize:\t  2048 kB\nVmRSS:\t    1024 kB\nThreads:\t12\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let p = ProcessStats::parse(stat, boot, status, Some(limits), 7.0).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time, 1_700_000_000.0 + 123.45);
        assert_eq!(p.resident_bytes, 1024.0 * 1024.0);
        assert_eq!(p.virtual_bytes, 2048.0 * 1024.0);
        assert_eq!(p.threads, 12.0);
        assert_eq!(p.max_fds, Some(1024.0));
        assert_eq!(p.open_fds, 7.0);
    }

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read().expect("procfs on Linux");
        assert!(p.resident_bytes > 0.0);
        assert!(p.open_fds >= 3.0);
        let now = domain_time::now_micros() as f64 / 1e6;
        // Started within the last day and not in the future (tick rounding aside).
        assert!(p.start_time <= now + 1.0 && p.start_time > now - 86_400.0);
    }

    #[test]
    fn escapes_label_values() {
        let mut out = String::new();
        line(
            &mut out,
            "m",
            &[("component".into(), "x".into())],
            &[("path", "a\"b\\c\nd")],
            1.5,
        );
        assert_eq!(out, "m{component=\"x\",path=\"a\\\"b\\\\c\\nd\"} 1.5\n");
    }
}
