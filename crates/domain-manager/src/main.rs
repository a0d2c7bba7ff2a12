//! `domain-manager` binary: key/domain-id commands, or one replica (config,
//! telemetry, listeners, then `domain_manager::run`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use domain_manager::{DomainManagerConfig, KeyFileError, Listeners};
use domain_runtime::config::{CommonArgs, EXIT_USAGE, load_or_exit};

/// The domain manager of a Canton-style domain (active-passive replicas).
///
/// Without a subcommand, runs one replica.
#[derive(Parser)]
#[command(name = "domain-manager", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the domain namespace key (PKCS#8 PEM, mode 0600) unless it exists, and
    /// prints the domain id. Idempotent: an existing key is loaded, never overwritten.
    Init {
        /// Where the namespace key lives (shared by all replicas).
        #[arg(long, value_name = "PATH")]
        key_file: PathBuf,
        /// The name part of the domain id.
        #[arg(long, value_name = "NAME")]
        domain_name: String,
    },
    /// Prints the domain id of an existing namespace key.
    DomainId {
        #[arg(long, value_name = "PATH")]
        key_file: PathBuf,
        #[arg(long, value_name = "NAME")]
        domain_name: String,
    },
}

fn key_command_exit(error: &KeyFileError) -> ! {
    eprintln!("error: {error}");
    let code = match error {
        KeyFileError::DomainName { .. } => EXIT_USAGE,
        KeyFileError::Key(_) => 1,
    };
    std::process::exit(code)
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Init {
            key_file,
            domain_name,
        }) => match domain_manager::init_namespace_key(&key_file, &domain_name) {
            Ok((id, created)) => {
                if created {
                    eprintln!("created namespace key {}", key_file.display());
                }
                println!("{id}");
                return;
            }
            Err(error) => key_command_exit(&error),
        },
        Some(Command::DomainId {
            key_file,
            domain_name,
        }) => match domain_manager::domain_id_of_key_file(&key_file, &domain_name) {
            Ok(id) => {
                println!("{id}");
                return;
            }
            Err(error) => key_command_exit(&error),
        },
        None => {}
    }

    let mut config: DomainManagerConfig =
        load_or_exit("domain-manager", "DOMAIN_MANAGER", &cli.common);
    if let Err(error) = config.validate() {
        eprintln!("error: invalid domain-manager configuration: {error}");
        std::process::exit(EXIT_USAGE);
    }
    if let Err(error) = domain_runtime::telemetry::init_logging(
        "domain-manager",
        cli.common.log_format,
        &config.tracing,
    ) {
        eprintln!("error: {error}");
        std::process::exit(EXIT_USAGE);
    }
    domain_runtime::service::run_service("domain manager", || {
        serve(config, cli.common.metric_labels())
    })
}

async fn serve(
    config: DomainManagerConfig,
    labels: Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    let metrics = domain_runtime::metrics::install_recorder_with("domain-manager", &labels, &[])?;
    let shutdown = domain_runtime::shutdown::shutdown_signal()?;
    let listeners = Listeners::bind(&config.admin_api, config.ops_listen).await?;
    domain_manager::run(config, listeners, metrics, shutdown).await
}
