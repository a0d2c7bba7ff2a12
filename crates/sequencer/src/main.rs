//! `sequencer` binary: parses config, installs telemetry, and runs one instance.

use clap::{Parser, Subcommand};
use domain_runtime::config::{CommonArgs, load_or_exit};
use domain_sequencer::{Listeners, SequencerConfig};

/// An active-active sequencer instance of a Canton-style domain.
#[derive(Parser)]
#[command(name = "sequencer", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generates the shared sequencer signing key (PKCS#8 PEM, mode 0600) and prints its fingerprint.
    GenerateKey {
        /// Where to write the key; an existing file is never overwritten.
        path: std::path::PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::GenerateKey { path }) = cli.command {
        let key = domain_identity::SigningKeyPair::generate();
        if let Err(error) = key.save_pem(&path) {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        println!("{}", key.fingerprint());
        return;
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
            |listeners, metrics, shutdown| {
                domain_sequencer::run(config.clone(), listeners, metrics, shutdown)
            },
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
