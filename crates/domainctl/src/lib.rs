//! `domainctl` owns the operator CLI over the domain manager's admin gRPC API
//! (`domain.manager.admin.v1.DomainAdminService`): argument syntax and local validation
//! ([`cli`]), replica failover and TLS ([`client`]), table and JSON rendering ([`output`]),
//! and the mapping of failures to exit codes ([`error`]).
//!
//! # Usage
//!
//! ```text
//! # Every domain-manager replica, tried in order (or DOMAINCTL_ENDPOINT=url,url).
//! domainctl --endpoint http://dm-0:4402 --endpoint http://dm-1:4402 status
//!
//! # Grant a participant submission rights (trust level defaults to ordinary).
//! domainctl participants set-state PAR::alice::1220ab… --permission submission
//! domainctl participants set-state PAR::bank::1220cd… --permission confirmation --trust-level vip
//!
//! # A party from another company: allowlist from its identity file (verified locally, key
//! # recorded), then hand it the signed connection bundle (docs/onboarding.md).
//! domainctl participants set-state --identity-file alice-identity.json --permission submission
//! domainctl domain export-connection --output-file mydomain-bundle.json
//!
//! # Inspect and revoke.
//! domainctl participants list
//! domainctl participants get PAR::alice::1220ab… --output json
//! domainctl participants disable PAR::alice::1220ab…
//! domainctl participants remove PAR::alice::1220ab…
//!
//! # Other members and the dynamic parameters.
//! domainctl mediators list
//! domainctl sequencers list
//! domainctl parameters get
//! domainctl parameters set --participant-response-timeout 30s --topology-change-delay 250ms
//!
//! # Pruning, through a sequencer instance's admin API (any instance).
//! domainctl --sequencer-admin http://seq-0:5002 pruning status
//! domainctl pruning prune --dry-run
//! domainctl pruning force --below 2026-12-01T00:00:00Z --yes
//!
//! # TLS: https endpoints need --ca; --cert and --key add a client certificate (mTLS).
//! domainctl --endpoint https://dm-0:4402 --ca ca.pem --cert client.pem --key client.key status
//! ```
//!
//! Global flags (`--endpoint`, `--ca`, `--cert`, `--key`, `--output table|json`,
//! `--timeout 5s`) may come before or after the subcommand. `--output json` prints one JSON
//! document with snake_case fields, enums as lowercase names (`"submission"`, `"vip"`) and every
//! timestamp twice: `*_micros` (protocol value) and `*_at` (RFC3339 UTC with microseconds, `null`
//! when the value is not a representable date).
//!
//! # Replicas
//!
//! Each call tries the endpoints in order. A replica is skipped when it cannot be reached,
//! does not answer within `--timeout`, answers UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED, is
//! not a domain manager (UNIMPLEMENTED), or is passive (`domain-error-code: DM_NOT_ACTIVE`); a
//! passive replica that names the active one in `domain-active-replica` puts that URL next in
//! line (at most 4 such additions per call). Any other error is the answer and is printed as
//! `error: <GRPC_CODE>: <message> [<domain-error-code>]`. Writes may therefore reach more than
//! one replica; every admin write is idempotent, so that is safe.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the domain manager refused the request (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, …); also unexpected local failures (cannot start the runtime or write the output) |
//! | 2 | usage or invalid input, found before any network call: bad flags, invalid participant id or endpoint URL, unusable TLS files, an identity file that does not verify (`ONBOARDING_*`) |
//! | 3 | no domain-manager replica could serve the call: all unreachable, passive, or timed out |

mod cli;
mod client;
mod commands;
mod error;
mod output;

#[cfg(test)]
mod failover_tests;

pub use cli::Cli;
pub use error::{CliError, EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE};

use client::{Replicas, load_tls, parse_endpoints};
use commands::Action;

/// Runs one parsed command line and returns what to print on stdout.
///
/// All local input (participant ids, endpoint URLs, TLS files) is validated before the first
/// connection, so an invalid invocation never reaches a server. Expects a rustls crypto
/// provider to be installed when https endpoints are used (the binary installs ring).
pub async fn run(cli: Cli) -> Result<String, CliError> {
    let action = Action::from_command(&cli.command)?;
    let endpoints = parse_endpoints(&cli.global.endpoints)?;
    let tls = load_tls(
        cli.global.ca.as_deref(),
        cli.global.cert.as_deref(),
        cli.global.key.as_deref(),
        &endpoints,
    )?;
    let sequencer_endpoints = parse_endpoints(&cli.global.sequencer_admin)?;
    let sequencers = Replicas::new(sequencer_endpoints, tls.clone(), cli.global.timeout);
    let replicas = Replicas::new(endpoints, tls, cli.global.timeout);
    action
        .execute(&replicas, &sequencers, cli.global.output)
        .await
}
