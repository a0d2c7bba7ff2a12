//! `mediator` binary: parses config, installs telemetry, and runs one replica.

use clap::{Parser, Subcommand};
use domain_mediator::{Listeners, MediatorConfig};
use domain_runtime::config::{CommonArgs, EXIT_USAGE, load_or_exit};

/// An active-passive mediator replica of a Canton-style domain.
#[derive(Parser)]
#[command(name = "mediator", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generates the mediator signing key shared by all replicas (PKCS#8 PEM, mode 0600)
    /// and prints its fingerprint.
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
    let config: MediatorConfig = load_or_exit("mediator", "MEDIATOR", &cli.common);
    if let Err(problem) = config.validate() {
        eprintln!("error: invalid mediator configuration: {problem}");
        std::process::exit(EXIT_USAGE);
    }
    if let Err(error) =
        domain_runtime::telemetry::init_logging("mediator", cli.common.log_format, &config.tracing)
    {
        eprintln!("error: {error}");
        std::process::exit(EXIT_USAGE);
    }
    domain_runtime::service::run_service("mediator", || serve(config, cli.common.metric_labels()))
}

async fn serve(config: MediatorConfig, labels: Vec<(&'static str, String)>) -> anyhow::Result<()> {
    // Wider buckets for the decision latency: it reaches the participant response timeout
    // (30 s by default).
    // `member` tells mediator groups apart: a second group (another mediator id) in the same
    // namespace has its own lease and its own active replica.
    let mut labels = labels;
    labels.push(("member", config.name.clone()));
    let metrics = domain_runtime::metrics::install_recorder_with(
        "mediator",
        &labels,
        &[(
            domain_mediator::metrics::DECISION_LATENCY,
            domain_mediator::metrics::DECISION_BUCKETS,
        )],
    )?;
    let shutdown = domain_runtime::shutdown::shutdown_signal()?;
    let listeners = Listeners::bind(&config.admin_api, config.ops_listen).await?;
    domain_mediator::run(config, listeners, metrics, shutdown).await
}
