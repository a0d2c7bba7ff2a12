//! `sequencer` binary: parses config, installs telemetry, and runs one instance.

use domain_runtime::config::load_or_exit;
use domain_runtime::service::{KeyCommand, ServiceCli};
use domain_sequencer::{Listeners, SequencerConfig};

// jemalloc instead of glibc's malloc: with 1,000 idle subscriptions per instance the
// sequencer spent 11-16 % less CPU per event (issue 17, docs/benchmarks.md "Results,
// 2026-12-08"), for about 0.5 KiB more RSS per idle subscription. mimalloc saved as much CPU
// but held 6 KiB more per idle subscription.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = ServiceCli::<KeyCommand>::parse_with(|command| {
        command
            .name("sequencer")
            .about("An active-active sequencer instance of a Canton-style domain")
            .mut_subcommand("generate-key", |generate| {
                generate.about(
                    "Generates the shared sequencer signing key (PKCS#8 PEM, mode 0600) and \
                     prints its fingerprint",
                )
            })
    });
    if let Some(command) = cli.command {
        return command.run();
    }
    let config: SequencerConfig = load_or_exit("sequencer", "SEQUENCER", &cli.common);
    // Before anything binds: an admin API off the host without mutual TLS is refused.
    let problem = match config.admin_api.admin_exposure_problem(true) {
        Some(reason) => Err(format!("invalid `admin-api`: {reason}")),
        None => domain_sequencer::validate_listeners(&config),
    };
    let labels = cli.common.metric_labels();
    domain_runtime::service::launch("sequencer", &cli.common, &config.tracing, problem, || {
        domain_runtime::service::serve_service(
            "sequencer",
            &labels,
            &[],
            bind(&config),
            |started| domain_sequencer::run(config.clone(), started),
        )
    })
}

async fn bind(config: &SequencerConfig) -> anyhow::Result<Listeners> {
    let listeners = Listeners {
        public: domain_runtime::grpc::bind(&config.public_api).await?,
        admin: domain_runtime::grpc::bind(&config.admin_api).await?,
        ops: domain_runtime::ops::bind(config.ops_listen).await?,
    };
    tracing::info!(
        public = %listeners.public.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        ops = %listeners.ops.local_addr()?,
        "listening"
    );
    Ok(listeners)
}
