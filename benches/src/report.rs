//! The result types of a run, the printed table, and the JSON summary.

use serde::Serialize;

use crate::Percentiles;
use crate::load::Window;
use crate::prom::SequencerMetrics;
use crate::rawpg::RawResult;
use crate::sysstat::CpuUsage;

// Issue 17's targets (seqbench default shape, quiet box, one submission per `Send`).
/// Durable (acknowledged) events/s at max (phase 2).
pub const TARGET_EVENTS_PER_SEC: f64 = 18_000.0;
/// ... and as a share of the raw PostgreSQL rows/s measured in the same run (phase 1).
pub const TARGET_SHARE_OF_RAW: f64 = 0.20;
/// Send→deliver latency at a quarter of the measured maximum (phase 3).
pub const TARGET_P50_MS: f64 = 3.0;
pub const TARGET_P99_MS: f64 = 10.0;
/// PostgreSQL commits per event at a quarter of the maximum.
pub const TARGET_COMMITS_PER_EVENT_QUARTER: f64 = 1.2;
/// Sequencer CPU per event at a quarter of the maximum, µs.
pub const TARGET_SEQ_CPU_QUARTER_US: f64 = 120.0;
/// Sequencer and PostgreSQL CPU per event at max, µs.
pub const TARGET_SEQ_CPU_MAX_US: f64 = 60.0;
pub const TARGET_PG_CPU_MAX_US: f64 = 25.0;
/// Acknowledged events/s of the sequencer (phase 2) over acknowledged publishes/s of NATS
/// JetStream with `sync_interval: always` (phase 4) in the same run.
pub const TARGET_JETSTREAM_RATIO: f64 = 2.5;

/// One measured load phase (2 or 3).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseResult {
    pub name: String,
    /// Target events/s of the token bucket; None = unbounded.
    pub target_rate: Option<f64>,
    /// Acknowledged sends and deliveries in the window, with their latencies.
    #[serde(flatten)]
    pub window: Window,
    /// Paced phases only: lateness of sends against their token-bucket slot.
    pub schedule_lag: Option<Percentiles>,
    pub send_errors: u64,
    pub resubscribes: u64,
    pub cpu: CpuUsage,
    /// CPU time per acknowledged event, µs, by process group: what one event costs
    /// regardless of how busy the machine was.
    pub cpu_micros_per_event: CpuPerEvent,
    /// CPU time per delivery (one event received by one subscriber), µs: with fanout K
    /// each event is K deliveries, so this is the broadcast cost per recipient.
    pub cpu_micros_per_delivery: CpuPerEvent,
    pub sequencer: SequencerMetrics,
    pub postgres: crate::pgstat::PgDelta,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerEvent {
    pub sequencer: f64,
    pub postgres: f64,
    pub bench: f64,
}

impl CpuPerEvent {
    pub fn of(cpu: &CpuUsage, events_per_sec: f64) -> Self {
        let per = |pct: f64| {
            if events_per_sec > 0.0 {
                pct / 100.0 * 1e6 / events_per_sec
            } else {
                0.0
            }
        };
        Self {
            sequencer: per(cpu.sequencer_pct),
            postgres: per(cpu.postgres_pct),
            bench: per(cpu.bench_pct),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_gib: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Shape {
    pub instances: usize,
    pub senders: usize,
    pub subscribers: usize,
    pub fanout: usize,
    /// `--idle-subscribers`: members per instance subscribed that receive nothing.
    pub idle_subscribers_per_instance: usize,
    pub payload_bytes: usize,
    pub in_flight_per_sender: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub tls: bool,
    pub sequencer_config: String,
}

/// One target checked against a run: what is required, what was measured, whether it holds.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Targets {
    /// The targets the phases that ran can decide, in the order.
    pub checks: Vec<TargetCheck>,
    /// Phase 2 acked/s ÷ phase 4 (JetStream) acked/s, when both ran.
    pub jetstream_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub command: String,
    pub unix_time: u64,
    pub machine: Machine,
    /// Databases on the PostgreSQL server during the run besides `postgres` and the
    /// templates, the bench's own included (see `pgstat::other_databases`).
    pub server_databases: i64,
    pub shape: Shape,
    pub crypto: Option<crate::crypto::CryptoCost>,
    /// Phase 0b: one `Send` and one delivery over TLS with nothing behind them.
    pub transport_floor: Option<crate::floor::FloorResult>,
    /// The ceiling of events/s the floors of phases 0, 0b and 1 give on this box.
    pub ceiling: Option<crate::floor::Ceiling>,
    pub raw_postgres: Option<RawResult>,
    pub throughput: Option<PhaseResult>,
    pub latency: Option<PhaseResult>,
    /// `--idle-subscribers`: what the idle subscriptions cost in sequencer RSS.
    pub idle: Option<crate::idle::IdleResult>,
    /// Phase 4 (`--jetstream`): NATS JetStream under the same load.
    pub jetstream: Option<crate::jetstream::JetStreamResult>,
    pub targets: Targets,
}

impl Summary {
    pub fn evaluate_targets(&mut self) {
        let mut checks = Vec::new();
        let mut check = |target: String, measured: String, met: bool| {
            checks.push(TargetCheck {
                target,
                measured,
                met,
            });
        };
        if let Some(p) = &self.throughput {
            check(
                format!("throughput >= {TARGET_EVENTS_PER_SEC:.0} durable events/s"),
                format!("{:.0}/s", p.window.acked_per_sec),
                p.window.acked_per_sec >= TARGET_EVENTS_PER_SEC,
            );
            if let Some(raw) = &self.raw_postgres {
                let share = p.window.acked_per_sec / raw.rows_per_sec.max(1.0);
                check(
                    format!(
                        "throughput >= {:.0}% of raw PostgreSQL rows/s",
                        TARGET_SHARE_OF_RAW * 100.0
                    ),
                    format!("{:.1}% of {:.0}/s", share * 100.0, raw.rows_per_sec),
                    share >= TARGET_SHARE_OF_RAW,
                );
            }
            let cpu = &p.cpu_micros_per_event;
            check(
                format!(
                    "at max: sequencer CPU <= {TARGET_SEQ_CPU_MAX_US:.0} us/event, PostgreSQL <= {TARGET_PG_CPU_MAX_US:.0} us/event"
                ),
                format!("{:.0} / {:.0} us", cpu.sequencer, cpu.postgres),
                cpu.sequencer <= TARGET_SEQ_CPU_MAX_US && cpu.postgres <= TARGET_PG_CPU_MAX_US,
            );
        }
        if let Some(p) = &self.latency {
            let at = format!(" at {:.0}/s", p.window.acked_per_sec);
            check(
                format!(
                    "at 1/4 load: send->deliver p50 <= {TARGET_P50_MS} ms, p99 <= {TARGET_P99_MS} ms"
                ),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms{at}",
                    p.window.send_to_deliver.p50_ms, p.window.send_to_deliver.p99_ms
                ),
                p.window.send_to_deliver.p50_ms <= TARGET_P50_MS
                    && p.window.send_to_deliver.p99_ms <= TARGET_P99_MS,
            );
            check(
                format!(
                    "at 1/4 load: PostgreSQL commits/event <= {TARGET_COMMITS_PER_EVENT_QUARTER}"
                ),
                format!("{:.2}{at}", p.postgres.commits_per_event),
                p.postgres.commits_per_event <= TARGET_COMMITS_PER_EVENT_QUARTER,
            );
            check(
                format!("at 1/4 load: sequencer CPU <= {TARGET_SEQ_CPU_QUARTER_US:.0} us/event"),
                format!("{:.0} us{at}", p.cpu_micros_per_event.sequencer),
                p.cpu_micros_per_event.sequencer <= TARGET_SEQ_CPU_QUARTER_US,
            );
        }
        let jetstream_ratio = match (&self.throughput, &self.jetstream) {
            (Some(p), Some(j)) if j.window.acked_per_sec > 0.0 => {
                Some(p.window.acked_per_sec / j.window.acked_per_sec)
            }
            _ => None,
        };
        if let Some(r) = jetstream_ratio {
            check(
                format!(
                    "sequencer acked/s >= {TARGET_JETSTREAM_RATIO:.1} x JetStream acked/s (sync always)"
                ),
                format!("{r:.2} x"),
                r >= TARGET_JETSTREAM_RATIO,
            );
        }
        self.targets = Targets {
            checks,
            jetstream_ratio,
        };
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.shape;
        let m = &self.machine;
        o += "\n=== seqbench ===\n";
        o += &format!("command : {}\n", self.command);
        o += &format!(
            "machine : {} cores ({}), {} GiB, kernel {}; sequencers, PostgreSQL and the bench share it\n",
            m.cores, m.cpu_model, m.mem_gib, m.kernel
        );
        o += &format!(
            "shape   : {} instances (TLS on, loopback), {} senders x {} in flight, {} subscribers, fanout {}, {}-byte payloads, warm-up {:.0}s, window {:.0}s\n",
            s.instances,
            s.senders,
            s.in_flight_per_sender,
            s.subscribers,
            s.fanout,
            s.payload_bytes,
            s.warmup_s,
            s.duration_s
        );
        if s.idle_subscribers_per_instance > 0 {
            o += &format!(
                "idle    : {} idle subscribers per instance (subscribed, nothing addressed to them)\n",
                s.idle_subscribers_per_instance
            );
        }
        if self.server_databases > crate::pgstat::MANY_DATABASES {
            o += &format!(
                "WARNING : the PostgreSQL server held {} databases; autovacuum visiting them costs PostgreSQL CPU\n",
                self.server_databases
            );
        }
        if !s.sequencer_config.is_empty() {
            o += &format!("config  : {:?}\n", s.sequencer_config);
        }
        if let Some(c) = &self.crypto {
            o += &format!(
                "\nPhase 0 ed25519 on this box (single thread, {}-byte message): sign {:.1} us, verify {:.1} us\n",
                c.message_bytes, c.sign_us, c.verify_us
            );
            o += &format!(
                "  signature work alone caps the box at {:.0} events/s (sender sign + sequencer verify; \
                 the batch signature is once per batch); the sequencer's share alone at {:.0}/s\n",
                c.ceiling_events_per_sec, c.sequencer_only_ceiling_events_per_sec
            );
        }
        if let Some(f) = &self.transport_floor {
            o += &format!(
                "\nPhase 0b transport floor ({} TLS conns x {} in flight, {} subscribers; a {}-byte Send answered at once \
                 and a {}-byte event delivered, nothing else)\n",
                f.connections,
                f.in_flight_per_connection,
                f.subscribers,
                f.request_bytes,
                f.event_bytes
            );
            o += &format!(
                "  {:>10.0} events/s   CPU per event (sender + server + subscriber) {:.1} us   box busy {:.0}%\n",
                f.events_per_sec, f.cpu_micros_per_event, f.machine_busy_pct
            );
        }
        if let Some(c) = &self.ceiling {
            o += &format!(
                "  ceiling on this box: {} cores / ({:.1} transport + {:.1} sign + {:.1} verify + {:.1} PostgreSQL per row) \
                 = {:.0} events/s\n",
                c.cores,
                c.transport_us,
                c.sign_us,
                c.verify_us,
                c.postgres_row_us,
                c.events_per_sec
            );
        }
        if let Some(r) = &self.raw_postgres {
            let settings: Vec<String> =
                r.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            o += &format!(
                "\nPhase 1 raw PostgreSQL ({} conns x {} rows/txn, unnest, synchronous_commit on; {})\n",
                r.connections,
                r.rows_per_txn,
                settings.join(" ")
            );
            o += &format!(
                "  {:>10.0} rows/s ({} txns in {:.1}s)   txn latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
                r.rows_per_sec,
                r.transactions,
                r.seconds,
                r.txn_latency.p50_ms,
                r.txn_latency.p99_ms,
                r.txn_latency.max_ms
            );
            o += &format!(
                "  CPU (% of one core): postgres {:.0}, bench {:.0}, other {:.0}, idle {:.0}; postgres CPU per row {:.0} us\n",
                r.cpu.postgres_pct,
                r.cpu.bench_pct,
                r.cpu.other_pct,
                r.cpu.machine.idle_pct,
                r.postgres_cpu_micros_per_row
            );
        }
        if let Some(i) = &self.idle {
            let mib = |b: &[u64]| {
                b.iter()
                    .map(|v| format!("{:.1}", *v as f64 / 1048576.0))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            o += &format!(
                "\nIdle subscribers: {} per instance, {} in all, on {} TLS connections (up to {} streams each); \
                 registered in {:.1}s, subscribed in {:.1}s ({} attempts refused as busy and retried)\n",
                i.per_instance,
                i.total,
                i.connections,
                i.streams_per_connection,
                i.register_seconds,
                i.subscribe_seconds,
                i.busy_retries
            );
            o += &format!(
                "  sequencer RSS (MiB, per instance) before {} / after {}: {:.0} bytes ({:.1} KiB) per idle subscriber\n",
                mib(&i.rss_before_bytes),
                mib(&i.rss_after_bytes),
                i.rss_per_idle_subscriber_bytes,
                i.rss_per_idle_subscriber_bytes / 1024.0
            );
        }
        let phases: Vec<&PhaseResult> = [&self.throughput, &self.latency]
            .into_iter()
            .flatten()
            .collect();
        if !phases.is_empty() {
            o += "\nPhases 2-3 (acked = durable; latency send->deliver in ms, from the send instant in the payload)\n";
            o += &table(
                &[
                    &[("phase", 11), ("target/s", 9)],
                    LATENCY_COLS,
                    &[SEP, ("errs", 4), ("resub", 5)],
                ]
                .concat(),
                phases.iter().map(|p| {
                    let target = p
                        .target_rate
                        .map_or("unbound".to_string(), |r| format!("{r:.0}"));
                    let mut row = vec![p.name.clone(), target];
                    row.extend(latency_cells(&p.window));
                    row.extend([p.send_errors.to_string(), p.resubscribes.to_string()]);
                    row
                }),
            );
            for p in &phases {
                if let Some(lag) = &p.schedule_lag {
                    o += &format!(
                        "  {} pacing: sends started p50 {:.2} ms / p99 {:.2} ms after their slot\n",
                        p.name, lag.p50_ms, lag.p99_ms
                    );
                }
            }
            o += "\nSequencer metrics over each window (all instances; quantiles interpolated in Prometheus buckets)\n";
            o += &table(
                &[
                    ("phase", 11),
                    ("batches", 8),
                    ("batch avg", 9),
                    ("batch p99", 9),
                    SEP,
                    ("commit ms", 9),
                    ("c p50", 9),
                    ("c p99", 9),
                    SEP,
                    ("queue+c ms", 10),
                    ("q+c p99", 10),
                    SEP,
                    ("cuts", 6),
                    ("ckpts", 6),
                ],
                phases.iter().map(|p| {
                    let q = &p.sequencer;
                    let ms = |s: f64| s * 1e3;
                    let mut row = vec![p.name.clone()];
                    row.extend(fixed(0, &[q.batch_size.count]));
                    row.extend(fixed(1, &[q.batch_size.mean]));
                    row.extend(fixed(0, &[q.batch_size.p99]));
                    row.extend(fixed(
                        2,
                        &[
                            ms(q.commit_seconds.mean),
                            ms(q.commit_seconds.p50),
                            ms(q.commit_seconds.p99),
                            ms(q.send_latency_seconds.mean),
                            ms(q.send_latency_seconds.p99),
                        ],
                    ));
                    row.extend(fixed(0, &[q.subscribers_cut, q.checkpoints_written]));
                    row
                }),
            );
            o += "\nPostgreSQL over each window (bench database; WAL is server-wide)\n";
            o += &table(
                &[
                    ("phase", 11),
                    ("commits/s", 10),
                    ("rollbacks/s", 11),
                    ("rows ins/s", 12),
                    ("rows read/s", 11),
                    ("reads/s", 8),
                    ("WAL MB/s", 9),
                    SEP,
                    ("commits/event", 13),
                    ("WAL bytes/event", 14),
                ],
                phases.iter().map(|p| {
                    let g = &p.postgres;
                    let mut row = vec![p.name.clone()];
                    row.extend(fixed(0, &[g.commits_per_sec]));
                    row.extend(fixed(1, &[g.rollbacks_per_sec]));
                    row.extend(fixed(
                        0,
                        &[
                            g.rows_inserted_per_sec,
                            g.rows_read_per_sec,
                            g.reads_per_sec,
                        ],
                    ));
                    row.extend(fixed(1, &[g.wal_mb_per_sec]));
                    row.extend(fixed(3, &[g.commits_per_event]));
                    row.extend(fixed(0, &[g.wal_bytes_per_event]));
                    row
                }),
            );
            for p in &phases {
                let scans: Vec<String> = p
                    .postgres
                    .table_scans_per_event
                    .iter()
                    .filter(|(_, v)| **v >= 0.005)
                    .map(|(t, v)| {
                        let per_sec = p.postgres.table_scans_per_sec.get(t).copied();
                        format!("{t} {v:.2} ({:.0}/s)", per_sec.unwrap_or(0.0))
                    })
                    .collect();
                o += &format!(
                    "  {:<11} table scans per event (per second): {}\n",
                    p.name,
                    scans.join(", ")
                );
            }
            o += &format!(
                "\nCPU over each window, % of one core (this box has {} cores = {}%)\n",
                m.cores,
                m.cores * 100
            );
            o += &table(
                &[
                    ("phase", 11),
                    ("sequencers", 10),
                    ("postgres", 9),
                    ("bench", 7),
                    ("other", 7),
                    SEP,
                    ("user", 6),
                    ("system", 7),
                    ("iowait", 7),
                    ("idle", 6),
                    ("steal", 6),
                    SEP,
                    ("CPU us per acked event: seq / pg / bench", 0),
                    SEP,
                    ("per delivery", 0),
                ],
                phases.iter().map(|p| {
                    let c = &p.cpu;
                    let e = &p.cpu_micros_per_event;
                    let mut row = vec![p.name.clone()];
                    row.extend(fixed(
                        0,
                        &[
                            c.sequencer_pct,
                            c.postgres_pct,
                            c.bench_pct,
                            c.other_pct,
                            c.machine.user_pct,
                            c.machine.system_pct,
                            c.machine.iowait_pct,
                            c.machine.idle_pct,
                            c.machine.steal_pct,
                        ],
                    ));
                    row.push(fixed(0, &[e.sequencer, e.postgres, e.bench]).join(" / "));
                    let d = &p.cpu_micros_per_delivery;
                    row.push(fixed(1, &[d.sequencer, d.postgres, d.bench]).join(" / "));
                    row
                }),
            );
        }
        if let Some(j) = &self.jetstream {
            o += &format!(
                "\nPhase 4 NATS JetStream {} (sync_interval: always{}, TLS, file stream, 1 replica; \
                 same senders, in flight, subscribers, fanout, payloads; latency ms)\n",
                j.server_version,
                if j.sync_always {
                    " in force"
                } else {
                    " NOT in force"
                }
            );
            let mut row = vec!["jetstream".to_string()];
            row.extend(latency_cells(&j.window));
            o += &table(&[&[("phase", 11)], LATENCY_COLS].concat(), [row]);
            let c = &j.cpu;
            o += &format!(
                "  CPU (% of one core): nats-server {:.0}, bench {:.0}, postgres {:.0}, other {:.0}, iowait {:.0}, idle {:.0}; \
                 CPU us per acked msg: nats-server {:.0} / bench {:.0}\n",
                c.nats_server_pct,
                c.bench_pct,
                c.postgres_pct,
                c.other_pct,
                c.machine.iowait_pct,
                c.machine.idle_pct,
                j.cpu_micros_per_msg.nats_server,
                j.cpu_micros_per_msg.bench
            );
            o += &format!(
                "  verified: {} acknowledged publishes, {} stored, each delivered once to each addressee ({})\n",
                j.acked_total,
                j.stream_messages,
                j.delivered_per_subscriber
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
        o += "\nTargets (issue 17)\n";
        for c in &self.targets.checks {
            o += &format!(
                "  {}: {} ({})\n",
                c.target,
                if c.met { "MET" } else { "NOT MET" },
                c.measured
            );
        }
        o
    }
}

/// A column group separator in a [`table`] layout.
const SEP: (&str, usize) = ("|", 0);

/// One printed table: a header line, then one line per row of already formatted cells, each
/// line indented by two spaces. `cols` is the layout, `(header, width)` with [`SEP`] between
/// column groups; the first column is left-aligned, the others right-aligned.
fn table(cols: &[(&str, usize)], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let line = |cells: &[String]| {
        let mut cells = cells.iter();
        let parts: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, &(head, width))| {
                if (head, width) == SEP {
                    return SEP.0.to_string();
                }
                let cell = cells.next().map_or("", String::as_str);
                if i == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        format!("  {}\n", parts.join(" "))
    };
    let header: Vec<String> = cols
        .iter()
        .filter(|&&c| c != SEP)
        .map(|(head, _)| (*head).to_string())
        .collect();
    let mut out = line(&header);
    for row in rows {
        out += &line(&row);
    }
    out
}

/// The rate and latency columns every load phase reports (the sequencer's and JetStream's).
const LATENCY_COLS: &[(&str, usize)] = &[
    ("acked/s", 9),
    ("deliv'd/s", 11),
    SEP,
    ("p50", 7),
    ("p90", 7),
    ("p99", 7),
    ("p99.9", 7),
    ("max", 7),
    SEP,
    ("ack p50", 9),
    ("ack p99", 9),
];

/// The cells of [`LATENCY_COLS`].
fn latency_cells(w: &Window) -> Vec<String> {
    let (l, ack) = (&w.send_to_deliver, &w.send_to_ack);
    let mut cells = fixed(0, &[w.acked_per_sec, w.delivered_per_sec]);
    cells.extend(fixed(2, &[l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms]));
    cells.extend(fixed(1, &[l.max_ms]));
    cells.extend(fixed(2, &[ack.p50_ms, ack.p99_ms]));
    cells
}

/// `values` formatted with `precision` decimals, one cell each.
fn fixed(precision: usize, values: &[f64]) -> Vec<String> {
    values.iter().map(|v| format!("{v:.precision$}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout `table` replaced was written out with `format!`; the output must not change.
    #[test]
    fn table_lines_match_the_hand_formatted_layout() {
        let out = table(
            &[
                ("phase", 11),
                ("batches", 8),
                SEP,
                ("c p50", 9),
                SEP,
                ("CPU us", 0),
            ],
            [vec![
                "throughput".to_string(),
                "12".to_string(),
                "3.25".to_string(),
                "1 / 2".to_string(),
            ]],
        );
        let expected = format!(
            "  {:<11} {:>8} | {:>9} | {}\n  {:<11} {:>8} | {:>9} | {}\n",
            "phase", "batches", "c p50", "CPU us", "throughput", "12", "3.25", "1 / 2"
        );
        assert_eq!(out, expected);
        assert_eq!(fixed(2, &[1.0, 2.345]), ["1.00", "2.35"]);
    }
}
