//! Command line of `seqbench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The sequencer's default `public-api.max-concurrent-streams` (HTTP/2 streams per
/// connection); a client stream beyond it queues until another ends.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// End-to-end sequencer benchmark: raw PostgreSQL limit, throughput, and latency at
/// a fraction of the measured throughput, over real `sequencer` processes with TLS.
#[derive(Debug, Clone, Parser)]
#[command(name = "seqbench", version)]
pub struct Args {
    /// Sender members; spread round-robin over the instances.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Subscriber members; subscriber i subscribes on instance i mod instances.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Subscribers each message is addressed to (1..=subscribers), rotating.
    #[arg(long, default_value_t = 1)]
    pub fanout: usize,
    /// Extra members per instance that subscribe and receive nothing (no message is
    /// addressed to them), to measure what an idle subscription costs: sequencer RSS per
    /// idle subscriber, and database reads/s against the number of subscribers.
    #[arg(long, default_value_t = 0)]
    pub idle_subscribers: usize,
    /// Idle subscriptions multiplexed as HTTP/2 streams over one TLS connection (1 = one
    /// connection per idle subscriber). At most 1024, the sequencer's default
    /// `public-api.max-concurrent-streams`: a stream beyond it would wait forever.
    #[arg(long, default_value_t = 1000)]
    pub idle_streams_per_connection: usize,
    /// Envelope content size in bytes (the first 21 bytes carry the send instant and ids).
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Measured window of each of phases 2 and 3.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before each measured window that is not counted.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Target events/s of phase 3 (token bucket over all senders; 0 = unbounded).
    /// Default: a quarter of the acknowledged sends/s measured in phase 2.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Concurrent outstanding sends per sender.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Sequencer instances (processes) over the one database.
    #[arg(long, default_value_t = 2)]
    pub instances: usize,
    /// Phase 1 duration.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub raw_duration: Duration,
    /// Phase 1 concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub raw_connections: usize,
    /// Phase 1 rows per transaction.
    #[arg(long, default_value_t = 500)]
    pub raw_batch: usize,
    /// Skip phase 0b (the transport floor: `Send`s and deliveries over TLS with nothing
    /// behind them).
    #[arg(long)]
    pub skip_floor: bool,
    /// Skip phase 1.
    #[arg(long)]
    pub skip_raw: bool,
    /// Skip phase 2 (then phase 3 needs an explicit --rate).
    #[arg(long)]
    pub skip_throughput: bool,
    /// Skip phase 3.
    #[arg(long)]
    pub skip_latency: bool,
    /// Extra TOML appended to the top level of every instance's config, e.g.
    /// `--sequencer-config '[writer]\nmax-batch = 500'`.
    #[arg(long, default_value = "")]
    pub sequencer_config: String,
    /// Keep the sequencer logs and configs (target/test-logs/seqbench-*).
    #[arg(long)]
    pub keep_logs: bool,
    /// Self-check: corrupt subscriber 0's stream at counter 10; the run must fail.
    #[arg(long, value_enum)]
    pub inject_fault: Option<crate::load::Fault>,
    /// Phase 4: the same load against NATS JetStream (`sync_interval: always`, TLS) for
    /// comparison. The value is the `nats-server` binary; without one, `NATS_SERVER`,
    /// then `target/nats-server/nats-server` (benches/scripts/nats-server.sh), then PATH.
    #[arg(long, value_name = "NATS_SERVER")]
    pub jetstream: Option<Option<PathBuf>>,
    /// Write a JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Args {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.senders >= 1, "--senders must be at least 1");
        anyhow::ensure!(self.subscribers >= 1, "--subscribers must be at least 1");
        anyhow::ensure!(self.instances >= 1, "--instances must be at least 1");
        anyhow::ensure!(self.in_flight >= 1, "--in-flight must be at least 1");
        anyhow::ensure!(
            (1..=self.subscribers).contains(&self.fanout),
            "--fanout must be in 1..=--subscribers"
        );
        anyhow::ensure!(
            self.payload_bytes >= crate::load::HEADER_LEN,
            "--payload-bytes must be at least {}",
            crate::load::HEADER_LEN
        );
        anyhow::ensure!(
            (1..=MAX_STREAMS_PER_CONNECTION).contains(&self.idle_streams_per_connection),
            "--idle-streams-per-connection must be in 1..={MAX_STREAMS_PER_CONNECTION}"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        anyhow::ensure!(
            !self.skip_throughput || self.rate.is_some(),
            "--skip-throughput needs an explicit --rate for phase 3"
        );
        anyhow::ensure!(
            self.raw_connections >= 1 && self.raw_batch >= 1,
            "raw phase needs connections and rows"
        );
        Ok(())
    }
}
