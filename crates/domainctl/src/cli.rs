//! Command-line syntax: global flags, subcommands, and the local validation of their values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use domain_identity::MemberId;
use domain_proto::topology::v1 as pb;

use crate::error::CliError;

/// Endpoint used when neither `--endpoint` nor `DOMAINCTL_ENDPOINT` is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4402";

/// Sequencer admin endpoint used when neither `--sequencer-admin` nor
/// `DOMAINCTL_SEQUENCER_ADMIN` is given (the sequencer's default admin listen address).
pub const DEFAULT_SEQUENCER_ADMIN: &str = "http://127.0.0.1:5002";

const LONG_ABOUT: &str = "\
Operator CLI for a domain's domain manager, over its gRPC admin API \
(domain.manager.admin.v1.DomainAdminService).

Give every domain-manager replica with --endpoint (repeatable, or a comma-separated \
DOMAINCTL_ENDPOINT). Each call tries them in order and skips replicas that are unreachable, \
time out, or are passive; a passive replica that names the active one sends the call there. \
Reads can be served by any replica, writes only by the active one.

Input (participant ids, endpoint URLs, TLS files) is checked before anything is sent, so a \
rejected invocation changes nothing.";

const AFTER_LONG_HELP: &str = "\
Exit codes:
  0  success
  1  the domain manager refused the request (INVALID_ARGUMENT, NOT_FOUND,
     FAILED_PRECONDITION, PERMISSION_DENIED, ...); also unexpected local failures
  2  usage error or invalid input, found before any network call (bad flags,
     invalid participant id or endpoint URL, unusable TLS files)
  3  no domain-manager replica could serve the call (all unreachable, passive,
     or timed out)

Errors are printed on stderr as
  error: <GRPC_CODE>: <message> [<domain-error-code>]

`pruning …` talks to the sequencers' admin API instead (--sequencer-admin, any instance; \
they share one database).

Examples:
  domainctl --endpoint http://dm-0:4402,http://dm-1:4402 participants list
  domainctl --sequencer-admin http://seq-0:5002 pruning status
  domainctl pruning force --below 2h --dry-run
  domainctl participants set-state PAR::alice::1220... --permission submission
  domainctl parameters set --participant-response-timeout 30s --output json
  DOMAINCTL_ENDPOINT=https://dm-0:4402 domainctl --ca ca.pem status";

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "domainctl",
    version,
    about = "Operator CLI over the domain manager's admin API",
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
)]
pub struct Cli {
    /// Flags accepted before or after the subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and output flags; all `global`, so they may follow the subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Admin endpoint of a domain-manager replica (http:// or https://); repeatable or
    /// comma-separated. Tried in the given order.
    #[arg(
        long = "endpoint",
        value_name = "URL",
        env = "DOMAINCTL_ENDPOINT",
        value_delimiter = ',',
        default_value = DEFAULT_ENDPOINT,
        global = true
    )]
    pub endpoints: Vec<String>,

    /// Admin endpoint of a sequencer instance, for `pruning …` (http:// or https://);
    /// repeatable or comma-separated. Tried in the given order.
    #[arg(
        long = "sequencer-admin",
        value_name = "URL",
        env = "DOMAINCTL_SEQUENCER_ADMIN",
        value_delimiter = ',',
        default_value = DEFAULT_SEQUENCER_ADMIN,
        global = true
    )]
    pub sequencer_admin: Vec<String>,

    /// PEM CA certificate(s) that https endpoints must chain to (the only trust anchors).
    #[arg(long, value_name = "PEM", env = "DOMAINCTL_CA", global = true)]
    pub ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS; requires --key.
    #[arg(long, value_name = "PEM", env = "DOMAINCTL_CERT", global = true)]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, value_name = "PEM", env = "DOMAINCTL_KEY", global = true)]
    pub key: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,

    /// Deadline for each call on each endpoint, connecting included (e.g. 500ms, 5s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header row.
    Table,
    /// One JSON document.
    Json,
}

/// The subcommands, one per admin RPC.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Participant permissions and trust levels.
    #[command(subcommand)]
    Participants(ParticipantsCommand),
    /// Registered mediators.
    #[command(subcommand)]
    Mediators(MediatorsCommand),
    /// Sequencer instances and their liveness.
    #[command(subcommand)]
    Sequencers(SequencersCommand),
    /// Dynamic domain parameters.
    #[command(subcommand)]
    Parameters(ParametersCommand),
    /// Domain id, lease epoch and the state of every component.
    Status,
    /// Sequencer pruning: status, prune now, force past lagging members (sequencer admin API).
    #[command(subcommand)]
    Pruning(PruningCommand),
    /// The domain as a joining party sees it (connection bundle).
    #[command(subcommand)]
    Domain(DomainCommand),
}

/// `domain …`
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Writes the connection bundle for a joining party (served by the active domain
    /// manager, signed by the namespace key): domain id, public sequencer endpoints,
    /// sequencer id and key, CA, protocol version (docs/onboarding.md).
    ExportConnection {
        /// File to write (mode 0644; it holds no secret). Default: print it. (`--output` is
        /// the global table/json switch.)
        #[arg(long, value_name = "FILE")]
        output_file: Option<std::path::PathBuf>,
        /// Suggested alias in the bundle. Default: the configured one, or the domain name.
        #[arg(long)]
        alias: Option<String>,
    },
}

/// `pruning …`
#[derive(Debug, Subcommand)]
pub enum PruningCommand {
    /// The lower bound, where a prune would move it, retention, stored rows, and every
    /// member's acknowledgement (who holds pruning back).
    Status,
    /// Prunes now what every member acknowledged and retention allows.
    Prune {
        /// Report what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Moves the bound to a given time even past members' acknowledgements and retention.
    /// Members that resume below it get SEQ_EVENTS_PRUNED and must be re-onboarded.
    #[command(group(ArgGroup::new("confirm").required(true).args(["dry_run", "yes"])))]
    Force {
        /// New bound: RFC3339 time (2026-12-01T10:00:00Z), microseconds since the epoch, or
        /// a duration meaning that long ago (2h, 7d).
        #[arg(long, value_name = "TIME|DURATION", value_parser = parse_bound)]
        below: Bound,
        /// Report what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
}

/// `pruning force --below`: an absolute time, or an age relative to now (resolved when the
/// command runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Microseconds since the Unix epoch.
    At(i64),
    /// That long before now.
    Ago(Duration),
}

impl Bound {
    /// The bound in protocol microseconds, given the current time; refuses the future.
    pub fn resolve(self, now_micros: i64) -> Result<i64, CliError> {
        let micros = match self {
            Bound::At(t) => t,
            Bound::Ago(d) => {
                let d = duration_to_micros(d).map_err(CliError::Usage)?;
                now_micros.saturating_sub(d)
            }
        };
        if micros <= 0 {
            return Err(CliError::Usage(format!(
                "invalid --below: {micros} is not after the Unix epoch"
            )));
        }
        if micros > now_micros {
            return Err(CliError::Usage(format!(
                "invalid --below: {micros} µs lies in the future (now {now_micros} µs)"
            )));
        }
        Ok(micros)
    }
}

/// Parses `--below`: RFC3339, integer microseconds, or a humantime duration.
fn parse_bound(input: &str) -> Result<Bound, String> {
    let input = input.trim();
    if let Ok(micros) = input.parse::<i64>() {
        return Ok(Bound::At(micros));
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(input) {
        let since = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| "lies before the Unix epoch".to_owned())?;
        return i64::try_from(since.as_micros())
            .map(Bound::At)
            .map_err(|_| "lies too far in the future".to_owned());
    }
    match humantime::parse_duration(input) {
        Ok(d) => {
            duration_to_micros(d)?;
            Ok(Bound::Ago(d))
        }
        Err(_) => Err(format!(
            "{input:?} is neither an RFC3339 time (2026-12-01T10:00:00Z), microseconds since the epoch, nor a duration (2h)"
        )),
    }
}

/// `participants …`
#[derive(Debug, Subcommand)]
pub enum ParticipantsCommand {
    /// Sets a participant's permission and trust level (idempotent).
    SetState {
        /// Participant id, `PAR::<name>::<fingerprint>` (the bare `<name>::<fingerprint>` is
        /// read as a participant id, with a note). Optional with --identity-file.
        #[arg(required_unless_present = "identity_file")]
        participant_id: Option<String>,
        /// The participant's identity file (`participant export-identity`): verified
        /// (format, id/key agreement, signature) before anything is sent, and its key is
        /// recorded with the allowlist entry, so the sequencer accepts exactly that key.
        #[arg(long, value_name = "FILE")]
        identity_file: Option<std::path::PathBuf>,
        /// Permission to grant.
        #[arg(long, value_enum)]
        permission: Permission,
        /// Trust level.
        #[arg(long, value_enum, default_value_t = Trust::Ordinary)]
        trust_level: Trust,
    },
    /// Lists every participant known to the domain.
    List,
    /// Shows one participant.
    Get {
        /// Participant id, `PAR::<name>::<fingerprint>`.
        participant_id: String,
    },
    /// Sets a participant's permission to disabled.
    Disable {
        /// Participant id, `PAR::<name>::<fingerprint>`.
        participant_id: String,
    },
    /// Removes a participant from the domain topology.
    Remove {
        /// Participant id, `PAR::<name>::<fingerprint>`.
        participant_id: String,
    },
}

/// `mediators …`
#[derive(Debug, Subcommand)]
pub enum MediatorsCommand {
    /// Lists the registered mediators.
    List,
}

/// `sequencers …`
#[derive(Debug, Subcommand)]
pub enum SequencersCommand {
    /// Lists the sequencer instances with their watermark and lag.
    List,
}

/// `parameters …`
#[derive(Debug, Subcommand)]
pub enum ParametersCommand {
    /// Shows the current domain parameters.
    Get,
    /// Changes some domain parameters, keeping the others at their current values.
    Set(SetParametersArgs),
}

/// `parameters set` flags; at least one is required.
#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("changes")
        .required(true)
        .multiple(true)
        .args(["participant_response_timeout", "max_request_size", "topology_change_delay"])
))]
pub struct SetParametersArgs {
    /// How long the mediator waits for confirmation responses (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_micros_duration)]
    pub participant_response_timeout: Option<Duration>,
    /// Largest submission the sequencers accept, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_request_size: Option<u64>,
    /// Delay between sequencing a topology change and it taking effect (e.g. 250ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_micros_duration)]
    pub topology_change_delay: Option<Duration>,
}

/// Participant permission, hierarchical: submission > confirmation > observation > disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Permission {
    /// May submit, confirm and observe.
    Submission,
    /// May confirm and observe.
    Confirmation,
    /// May only observe.
    Observation,
    /// May do nothing.
    Disabled,
}

impl From<Permission> for pb::ParticipantPermission {
    fn from(permission: Permission) -> Self {
        match permission {
            Permission::Submission => pb::ParticipantPermission::Submission,
            Permission::Confirmation => pb::ParticipantPermission::Confirmation,
            Permission::Observation => pb::ParticipantPermission::Observation,
            Permission::Disabled => pb::ParticipantPermission::Disabled,
        }
    }
}

/// Participant trust level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trust {
    /// Default trust.
    Ordinary,
    /// Very important participant.
    Vip,
}

impl From<Trust> for pb::TrustLevel {
    fn from(trust: Trust) -> Self {
        match trust {
            Trust::Ordinary => pb::TrustLevel::Ordinary,
            Trust::Vip => pb::TrustLevel::Vip,
        }
    }
}

/// Parses a participant id: a valid member id whose role is participant (`PAR::…`).
pub fn parse_participant_id(input: &str) -> Result<MemberId, CliError> {
    const EXPECTED: &str = "expected PAR::<name>::<fingerprint>";
    // `participant id` used to print the bare unique id; accept it, but say how it is read.
    let (id, bare) = MemberId::parse_participant(input, true).map_err(|error| {
        CliError::Usage(format!(
            "invalid participant id {input:?}: {error}; {EXPECTED}"
        ))
    })?;
    if bare {
        eprintln!("note: reading the bare id {input} as the participant id {id}");
    }
    Ok(id)
}

/// `--timeout`: a humantime duration, not zero (every call would time out).
fn parse_timeout(input: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(input).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// A humantime duration that fits the protocol's int64 microseconds.
fn parse_micros_duration(input: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(input).map_err(|e| e.to_string())?;
    duration_to_micros(duration)?;
    Ok(duration)
}

/// A duration as protocol microseconds; errors when it does not fit an `i64`.
pub fn duration_to_micros(duration: Duration) -> Result<i64, String> {
    i64::try_from(duration.as_micros())
        .map_err(|_| format!("{} is too long", humantime::format_duration(duration)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    const FP: &str = "1220aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("domainctl").chain(args.iter().copied()))
    }

    #[test]
    fn pruning_force_needs_dry_run_or_yes() {
        let err = parse(&["pruning", "force", "--below", "2h"]).expect_err("no confirmation");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err =
            parse(&["pruning", "force", "--below", "2h", "--dry-run", "--yes"]).expect_err("both");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let cli = parse(&["pruning", "force", "--below", "2h", "--yes"]).expect("valid");
        let Command::Pruning(PruningCommand::Force { below, yes, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert!(yes);
        assert_eq!(below, Bound::Ago(Duration::from_secs(7200)));
    }

    #[test]
    fn pruning_bound_forms() {
        assert_eq!(
            parse_bound("1700000000000000"),
            Ok(Bound::At(1_700_000_000_000_000))
        );
        assert_eq!(
            parse_bound("2023-11-14T22:13:20Z"),
            Ok(Bound::At(1_700_000_000_000_000))
        );
        assert_eq!(
            parse_bound("7d"),
            Ok(Bound::Ago(Duration::from_secs(7 * 86_400)))
        );
        assert!(parse_bound("yesterday").is_err());
        assert!(parse_bound("1969-01-01T00:00:00Z").is_err());
        let now = 1_700_000_000_000_000;
        assert_eq!(
            Bound::Ago(Duration::from_secs(1)).resolve(now).ok(),
            Some(now - 1_000_000)
        );
        assert!(matches!(
            Bound::At(now + 1).resolve(now),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(Bound::At(0).resolve(now), Err(CliError::Usage(_))));
        assert!(matches!(
            Bound::Ago(Duration::from_secs(100 * 365 * 86_400 * 1000)).resolve(now),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn set_state_with_valid_args() {
        let id = format!("PAR::alice::{FP}");
        let cli = parse(&[
            "--endpoint",
            "http://dm-0:4402",
            "participants",
            "set-state",
            &id,
            "--permission",
            "confirmation",
            "--trust-level",
            "vip",
        ])
        .expect("valid");
        let Command::Participants(ParticipantsCommand::SetState {
            participant_id,
            permission,
            trust_level,
            identity_file: None,
        }) = cli.command
        else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(participant_id.as_deref(), Some(id.as_str()));
        assert_eq!(permission, Permission::Confirmation);
        assert_eq!(trust_level, Trust::Vip);
        assert_eq!(cli.global.endpoints, ["http://dm-0:4402"]);
        assert_eq!(cli.global.output, OutputFormat::Table);
        assert_eq!(cli.global.timeout, Duration::from_secs(5));
    }

    #[test]
    fn trust_level_defaults_to_ordinary() {
        let id = format!("PAR::alice::{FP}");
        let cli = parse(&[
            "participants",
            "set-state",
            &id,
            "--permission",
            "submission",
        ])
        .expect("valid");
        assert!(matches!(
            cli.command,
            Command::Participants(ParticipantsCommand::SetState {
                trust_level: Trust::Ordinary,
                ..
            })
        ));
    }

    #[test]
    fn invalid_permission_is_a_clap_error_listing_values() {
        let id = format!("PAR::alice::{FP}");
        let error = parse(&["participants", "set-state", &id, "--permission", "admin"])
            .expect_err("invalid permission");
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        for value in ["submission", "confirmation", "observation", "disabled"] {
            assert!(text.contains(value), "{text}");
        }
    }

    #[test]
    fn missing_permission_and_participant_id_are_errors() {
        let id = format!("PAR::alice::{FP}");
        let error = parse(&["participants", "set-state", &id]).expect_err("no permission");
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        let error = parse(&["participants", "set-state", "--permission", "submission"])
            .expect_err("no participant id");
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(error.exit_code(), 2);
        let error = parse(&["participants", "get"]).expect_err("no participant id");
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn global_flags_after_the_subcommand() {
        let cli = parse(&[
            "participants",
            "list",
            "--output",
            "json",
            "--timeout",
            "250ms",
            "--endpoint",
            "http://a:1",
            "--endpoint",
            "http://b:1,http://c:1",
        ])
        .expect("valid");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.timeout, Duration::from_millis(250));
        assert_eq!(
            cli.global.endpoints,
            ["http://a:1", "http://b:1", "http://c:1"]
        );
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let error = parse(&["status", "--timeout", "0s"]).expect_err("zero timeout");
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn parameters_set_needs_a_flag() {
        let error = parse(&["parameters", "set"]).expect_err("no change");
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        let cli = parse(&[
            "parameters",
            "set",
            "--participant-response-timeout",
            "30s",
            "--max-request-size",
            "1048576",
        ])
        .expect("valid");
        let Command::Parameters(ParametersCommand::Set(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            args.participant_response_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(args.max_request_size, Some(1_048_576));
        assert_eq!(args.topology_change_delay, None);
    }

    #[test]
    fn participant_id_validation() {
        let good = format!("PAR::alice::{FP}");
        let id = parse_participant_id(&good).expect("valid participant id");
        assert_eq!(id.to_string(), good);
        assert_eq!(id.name(), "alice");

        let bare = parse_participant_id(&format!("alice::{FP}")).expect("bare unique id");
        assert_eq!(bare, id);

        let error = parse_participant_id("foo").expect_err("garbage");
        assert_eq!(error.exit_code(), 2);
        assert_eq!(
            error.to_string(),
            "error: invalid participant id \"foo\": missing `::` separator \
             (expected `ROLE::name::fingerprint`); expected PAR::<name>::<fingerprint>"
        );

        let error = parse_participant_id("PAR::alice::1220zz").expect_err("bad fingerprint");
        assert!(error.to_string().contains("fingerprint"), "{error}");

        let mediator = format!("MED::m1::{FP}");
        let error = parse_participant_id(&mediator).expect_err("mediator id");
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(
            text.contains("this is a mediator id (MED::…), not a participant"),
            "{text}"
        );
        assert!(
            text.ends_with("expected PAR::<name>::<fingerprint>"),
            "{text}"
        );
    }

    #[test]
    fn durations_must_fit_micros() {
        assert_eq!(
            duration_to_micros(Duration::from_millis(1500)),
            Ok(1_500_000)
        );
        assert!(duration_to_micros(Duration::MAX).is_err());
    }
}
