//! `domain-bootstrap`: writes a new domain's public ids as files (see the library docs).

use std::path::PathBuf;

use clap::Parser;
use domain_bootstrap::Identity;

/// Writes the domain id and the genesis mediator id of a new domain, derived from its
/// keys, as files `domain-name`, `domain-id` and `mediator-id` in --out (no trailing
/// newline), and prints them. Never overwrites a file.
#[derive(Parser)]
#[command(name = "domain-bootstrap", version)]
struct Cli {
    /// The domain namespace key (`domain-manager init --key-file`).
    #[arg(long, value_name = "PATH")]
    namespace_key: PathBuf,
    /// The name part of the domain id (`domain-manager init --domain-name`).
    #[arg(long, value_name = "NAME")]
    domain_name: String,
    /// The mediator signing key (`mediator generate-key`).
    #[arg(long, value_name = "PATH")]
    mediator_key: PathBuf,
    /// The mediator's `name` setting (the name part of its id).
    #[arg(long, value_name = "NAME", default_value = "mediator")]
    mediator_name: String,
    /// Directory to write the files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let result = Identity::of_keys(
        &cli.namespace_key,
        &cli.domain_name,
        &cli.mediator_key,
        &cli.mediator_name,
    )
    .and_then(|identity| identity.write(&cli.out).map(|()| identity));
    match result {
        Ok(identity) => {
            for (name, value) in identity.entries() {
                println!("{name}={value}");
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(if error.is_usage() { 64 } else { 1 });
        }
    }
}
