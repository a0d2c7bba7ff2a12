//! `mediator` binary: parses config, installs telemetry, and runs one replica.

use clap::{Parser, Subcommand};
use domain_mediator::{Listeners, MediatorConfig};
use domain_runtime::config::{CommonArgs, load_or_exit};

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
    let problem = config
        .validate()
        .map_err(|p| format!("invalid mediator configuration: {p}"));
    // `member` tells mediator groups apart: a second group (another mediator id) in the same
    // namespace has its own lease and its own active replica.
    let mut labels = cli.common.metric_labels();
    labels.push(("member", config.name.clone()));
    domain_runtime::service::launch("mediator", &cli.common, &config.tracing, problem, || {
        domain_runtime::service::serve_service(
            "mediator",
            &labels,
            // Wider buckets for the decision latency: it reaches the participant response
            // timeout (30 s by default).
            &[(
                domain_mediator::DECISION_LATENCY,
                domain_mediator::DECISION_BUCKETS,
            )],
            async { Ok(Listeners::bind(&config.admin_api, config.ops_listen).await?) },
            |listeners, metrics, shutdown| {
                domain_mediator::run(config.clone(), listeners, metrics, shutdown)
            },
        )
    })
}
