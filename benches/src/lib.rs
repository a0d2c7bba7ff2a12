//! Load generators and benchmarks for the domain runtime; `seqbench` (see
//! [`seqbench`]) measures the sequencer end to end over real processes.
//!
//! Modules:
//! - [`cli`]: the `seqbench` command line.
//! - [`crypto`]: phase 0, the cost of the per-event ed25519 work on this machine.
//! - [`floor`]: phase 0b, the transport floor: one `Send` and one delivery over TLS with
//!   nothing behind them, and the ceiling of events/s the floors give.
//! - [`rawpg`]: phase 1, the raw PostgreSQL insert limit for the sequencer's row shape.
//! - [`load`]: phases 2 and 3, senders and verifying subscribers against a real cluster.
//! - [`idle`]: idle subscribers, and the sequencer RSS they cost.
//! - [`jetstream`]: optional phase 4, the same load against NATS JetStream.
//! - [`sysstat`]: CPU accounting per process group from `/proc`.
//! - [`pgstat`]: PostgreSQL transaction, row and WAL counters per phase.
//! - [`prom`]: scraping and diffing the sequencer's Prometheus metrics.
//! - [`report`]: the printed table and the JSON summary.
//! - [`seqbench`]: the orchestration of all phases.

pub mod cli;
pub mod crypto;
pub mod floor;
pub mod idle;
pub mod jetstream;
pub mod load;
pub mod pgstat;
pub mod prom;
pub mod rawpg;
pub mod report;
pub mod seqbench;
pub mod sysstat;

use hdrhistogram::Histogram;

pub use domain_time::now_micros;

/// A latency histogram in microseconds, 1 µs to 100 s, 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds are valid")
}

/// Percentiles of a microsecond histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}
