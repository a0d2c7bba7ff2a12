//! `domain-manager` binary: key/domain-id commands, or one replica (config,
//! telemetry, listeners, then `domain_manager::run`).

use std::path::PathBuf;

use clap::Subcommand;
use domain_manager::{DomainManagerConfig, KeyFileError, Listeners};
use domain_runtime::config::{EXIT_USAGE, load_or_exit};
use domain_runtime::service::ServiceCli;

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
    let cli = ServiceCli::<Command>::parse_with(|command| {
        command
            .name("domain-manager")
            .about("The domain manager of a Canton-style domain (active-passive replicas)")
            .long_about(
                "The domain manager of a Canton-style domain (active-passive replicas).\n\n\
                 Without a subcommand, runs one replica.",
            )
    });
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
    let problem = config
        .validate()
        .map_err(|e| format!("invalid domain-manager configuration: {e}"));
    let labels = cli.common.metric_labels();
    domain_runtime::service::launch(
        "domain-manager",
        &cli.common,
        &config.tracing,
        problem,
        || {
            domain_runtime::service::serve_service(
                "domain-manager",
                &labels,
                &[],
                async { Ok(Listeners::bind(&config.admin_api, config.ops_listen).await?) },
                |started| domain_manager::run(config.clone(), started),
            )
        },
    )
}
