//! CPU accounting from `/proc`: the machine's busy/iowait time and the CPU time of
//! the sequencer processes, PostgreSQL (every process named `postgres`), and this
//! bench, so a report can say who used the cores.

use std::collections::BTreeMap;
use std::time::Instant;

/// Kernel clock ticks per second of `/proc` times (USER_HZ; 100 on Linux/x86).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of the CPU counters.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// Ticks per group name: "sequencer", "postgres", "bench".
    groups: BTreeMap<&'static str, u64>,
    /// Machine-wide ticks: (user+nice, system+irq+softirq, iowait, idle, steal).
    machine: [u64; 5],
}

/// CPU use between two samples, in percent of one core (a 2-core box has 200 %).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CpuUsage {
    pub seconds: f64,
    pub cores: usize,
    pub sequencer_pct: f64,
    pub postgres_pct: f64,
    pub bench_pct: f64,
    /// Machine busy time not attributed to the three groups (other tenants, kernel threads).
    pub other_pct: f64,
    #[serde(flatten)]
    pub machine: MachineCpu,
}

/// Machine-wide CPU time between two samples, % of one core; shared by every phase's
/// report (serialized flat, as `machine_*_pct`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MachineCpu {
    #[serde(rename = "machine_user_pct")]
    pub user_pct: f64,
    #[serde(rename = "machine_system_pct")]
    pub system_pct: f64,
    #[serde(rename = "machine_iowait_pct")]
    pub iowait_pct: f64,
    #[serde(rename = "machine_idle_pct")]
    pub idle_pct: f64,
    #[serde(rename = "machine_steal_pct")]
    pub steal_pct: f64,
}

/// Takes a sample; `sequencer_pids` are the instance processes.
pub fn sample(sequencer_pids: &[u32]) -> CpuSample {
    let mut groups = BTreeMap::new();
    let seq: u64 = sequencer_pids
        .iter()
        .filter_map(|p| process_ticks(*p))
        .sum();
    groups.insert("sequencer", seq);
    groups.insert("postgres", postgres_ticks());
    groups.insert("bench", process_ticks(std::process::id()).unwrap_or(0));
    CpuSample {
        at: Instant::now(),
        groups,
        machine: machine_ticks().unwrap_or_default(),
    }
}

impl CpuUsage {
    pub fn between(a: &CpuSample, b: &CpuSample) -> Self {
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let pct = |ticks: u64| ticks as f64 / TICKS_PER_SEC / secs * 100.0;
        let d = |name: &str| {
            b.groups
                .get(name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(a.groups.get(name).copied().unwrap_or(0))
        };
        let m: Vec<u64> = (0..5)
            .map(|i| b.machine[i].saturating_sub(a.machine[i]))
            .collect();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let (seq, pg, bench) = (pct(d("sequencer")), pct(d("postgres")), pct(d("bench")));
        let busy = pct(m[0]) + pct(m[1]);
        Self {
            seconds: secs,
            cores,
            sequencer_pct: seq,
            postgres_pct: pg,
            bench_pct: bench,
            other_pct: (busy - seq - pg - bench).max(0.0),
            machine: MachineCpu {
                user_pct: pct(m[0]),
                system_pct: pct(m[1]),
                iowait_pct: pct(m[2]),
                idle_pct: pct(m[3]),
                steal_pct: pct(m[4]),
            },
        }
    }
}

/// utime + stime of one process (all its threads), in ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, so utime (14) is index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(process_ticks)
        .sum()
}

fn machine_ticks() -> Option<[u64; 5]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some([
        get(0) + get(1),
        get(2) + get(5) + get(6),
        get(4),
        get(3),
        get(7),
    ])
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`), or
/// None when the process is gone or the line is missing.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status`, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    // The kernel always prints kB (KiB) here; anything else is not a status file we know.
    (fields.next()? == "kB").then_some(value * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tsequencer\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn own_rss_is_positive() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
