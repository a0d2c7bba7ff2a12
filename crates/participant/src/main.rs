//! `participant` binary: identity commands, `connect-multi`, the node (`run`), and admin
//! calls to a running node (`ping`, `status`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use domain_participant::config::DEFAULT_DATA_DIR;
use domain_participant::{Listeners, ParticipantConfig, connection, identity};
use domain_proto::v1::{
    self as pb, participant_admin_service_client::ParticipantAdminServiceClient,
};
use domain_runtime::config::{CommonArgs, EXIT_USAGE, load_or_exit};

/// Default admin endpoint of a running node.
const DEFAULT_ADMIN_ENDPOINT: &str = "http://127.0.0.1:4602";

/// The reference participant of a Canton-style domain.
#[derive(Parser)]
#[command(name = "participant", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DataDir {
    /// The participant's data directory (key, identity, domain connection).
    #[arg(long, value_name = "DIR", env = "PARTICIPANT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(clap::Args, Clone)]
struct AdminEndpoint {
    /// Admin API of the running node.
    #[arg(long, value_name = "URL", env = "PARTICIPANT_ADMIN_ENDPOINT", default_value = DEFAULT_ADMIN_ENDPOINT)]
    admin_endpoint: String,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the participant key (PKCS#8 PEM, mode 0600) and prints the participant id
    /// `<name>::1220…`. Idempotent: an existing key is loaded, never overwritten.
    Init {
        /// Name part of the participant id (`[A-Za-z0-9_.-]{1,185}`).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Prints the participant id `<name>::1220…`.
    Id {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Connects to a domain through one or more sequencer endpoints of it: checks the CA
    /// file, asks the endpoints for Handshake and GetDomainInfo, and persists alias,
    /// endpoints, CA and domain id in the data directory (a running node picks them up at
    /// its next start; with --admin-endpoint the running node is switched at once).
    ConnectMulti {
        /// Local name of the domain connection.
        alias: String,
        /// Sequencer public endpoints, e.g. https://seq-1.example:5001.
        #[arg(required = true, value_name = "URL")]
        endpoints: Vec<String>,
        /// The domain provider's root CA certificate (PEM).
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        /// Mediator id (MED::…) to address requests to until the participant has seen a
        /// mediator registration in its own event stream.
        #[arg(long, value_name = "ID")]
        mediator: Option<String>,
        /// Ask a running node (ConnectMulti admin call) instead of writing the data
        /// directory directly.
        #[arg(long, value_name = "URL")]
        admin_endpoint: Option<String>,
        /// How long to wait for each endpoint.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Runs the participant node.
    Run {
        #[command(flatten)]
        common: CommonArgs,
        /// Overrides the configured `data-dir`.
        #[arg(long, value_name = "DIR", env = "PARTICIPANT_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Runs a two-party confirmation round trip with another participant through the
    /// mediator (asks the running node) and prints the round-trip time.
    Ping {
        /// Target participant: `name::1220…` or `PAR::name::1220…`.
        participant_id: String,
        #[command(flatten)]
        admin: AdminEndpoint,
        /// How long to wait for the verdict.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Prints the running node's status.
    Status {
        #[command(flatten)]
        admin: AdminEndpoint,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = domain_runtime::service::install_crypto_provider() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
    match cli.command {
        Command::Init { name, data_dir } => match identity::init(&data_dir.data_dir, &name) {
            Ok((id, created)) => {
                if created {
                    eprintln!(
                        "created participant key {}",
                        data_dir.data_dir.join(identity::KEY_FILE).display()
                    );
                }
                println!("{}", id.uid);
            }
            Err(e) => {
                eprintln!("error: {e}");
                let code = match e {
                    identity::IdentityError::InvalidName { .. } => EXIT_USAGE,
                    _ => 1,
                };
                std::process::exit(code);
            }
        },
        Command::Id { data_dir } => match identity::load(&data_dir.data_dir) {
            Ok(id) => println!("{}", id.uid),
            Err(e) => fail(&e.to_string()),
        },
        Command::ConnectMulti {
            alias,
            endpoints,
            ca,
            mediator,
            admin_endpoint,
            timeout,
            data_dir,
        } => block_on(connect_multi(
            alias,
            endpoints,
            ca,
            mediator,
            admin_endpoint,
            timeout,
            data_dir.data_dir,
        )),
        Command::Run { common, data_dir } => run(common, data_dir),
        Command::Ping {
            participant_id,
            admin,
            timeout,
        } => block_on(ping(participant_id, admin.admin_endpoint, timeout)),
        Command::Status { admin } => block_on(status(admin.admin_endpoint)),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

fn block_on(f: impl std::future::Future<Output = Result<(), String>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    };
    if let Err(message) = runtime.block_on(f) {
        fail(&message);
    }
}

async fn connect_multi(
    alias: String,
    endpoints: Vec<String>,
    ca: Option<PathBuf>,
    mediator: Option<String>,
    admin_endpoint: Option<String>,
    timeout: Duration,
    data_dir: PathBuf,
) -> Result<(), String> {
    // The CA file first, so a typo is named before any network call.
    let ca_pem = match &ca {
        Some(path) => {
            connection::ca_tls(path).map_err(|e| e.to_string())?;
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        None => None,
    };
    if let Some(url) = admin_endpoint {
        if mediator.is_some() {
            return Err("--mediator cannot be set through --admin-endpoint; run connect-multi without it while the node is stopped".into());
        }
        let mut client = admin_client(&url).await?;
        let response = client
            .connect_multi(pb::ConnectMultiRequest {
                alias: alias.clone(),
                endpoints,
                ca_pem: ca_pem
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default(),
            })
            .await
            .map_err(|s| describe_status("connect-multi", &s))?
            .into_inner();
        println!("connected {alias} to domain {}", response.domain_id);
        return Ok(());
    }
    identity::load(&data_dir).map_err(|e| e.to_string())?;
    let (conn, checked) = connection::connect_multi(
        &data_dir,
        &alias,
        &endpoints,
        ca_pem.as_deref(),
        mediator,
        timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    for check in &checked.endpoints {
        match &check.result {
            Ok(_) => eprintln!("  {}: ok", check.endpoint),
            Err(e) => eprintln!("  {}: unreachable now ({e})", check.endpoint),
        }
    }
    eprintln!("saved {}", connection::connection_path(&data_dir).display());
    println!("connected {alias} to domain {}", conn.domain_id);
    Ok(())
}

async fn admin_client(
    url: &str,
) -> Result<ParticipantAdminServiceClient<tonic::transport::Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("invalid admin endpoint {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot reach the participant admin API at {url}: {} (is `participant run` up?)",
            connection::error_chain(&e)
        )
    })?;
    Ok(ParticipantAdminServiceClient::new(channel))
}

fn describe_status(what: &str, s: &tonic::Status) -> String {
    let code = s
        .metadata()
        .get("domain-error-code")
        .and_then(|v| v.to_str().ok())
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default();
    format!("{what} failed: {:?}: {}{code}", s.code(), s.message())
}

async fn ping(target: String, admin_endpoint: String, timeout: Duration) -> Result<(), String> {
    let target = identity::parse_participant_id(&target)?;
    let mut client = admin_client(&admin_endpoint).await?;
    let mut request = tonic::Request::new(pb::PingRequest {
        target_participant_id: target.to_string(),
        timeout_millis: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
    });
    request.set_timeout(timeout + Duration::from_secs(5));
    let response = client
        .ping(request)
        .await
        .map_err(|s| describe_status(&format!("ping {target}"), &s))?
        .into_inner();
    let ms = response.round_trip_micros as f64 / 1000.0;
    if response.verdict == "approved" {
        println!("ping {target} approved in {ms:.1} ms");
        Ok(())
    } else {
        Err(format!(
            "ping {target} {} after {ms:.1} ms",
            response.verdict
        ))
    }
}

async fn status(admin_endpoint: String) -> Result<(), String> {
    let mut client = admin_client(&admin_endpoint).await?;
    let s = client
        .status(pb::ParticipantStatusRequest {})
        .await
        .map_err(|s| describe_status("status", &s))?
        .into_inner();
    println!("participant:            {}", s.participant_id);
    println!(
        "domain alias:           {}",
        if s.alias.is_empty() {
            "(not connected)"
        } else {
            &s.alias
        }
    );
    for e in &s.endpoints {
        println!(
            "  endpoint {}: {}",
            e.endpoint,
            if e.healthy { "healthy" } else { "unhealthy" }
        );
    }
    println!("last counter:           {}", s.last_counter);
    println!("committed transactions: {}", s.committed_transactions);
    Ok(())
}

fn run(common: CommonArgs, data_dir: Option<PathBuf>) {
    let mut config: ParticipantConfig = load_or_exit("participant", "PARTICIPANT", &common);
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Err(problem) = config.validate() {
        eprintln!("error: invalid participant configuration: {problem}");
        std::process::exit(EXIT_USAGE);
    }
    if let Err(error) =
        domain_runtime::telemetry::init_logging("participant", common.log_format, &config.tracing)
    {
        eprintln!("error: {error}");
        std::process::exit(EXIT_USAGE);
    }
    domain_runtime::service::run_service("participant", || serve(config, common.metric_labels()))
}

async fn serve(
    config: ParticipantConfig,
    labels: Vec<(&'static str, String)>,
) -> anyhow::Result<()> {
    let metrics = domain_runtime::metrics::install_recorder_with(
        "participant",
        &labels,
        &[(
            domain_participant::metrics::PING_RTT,
            domain_participant::metrics::PING_RTT_BUCKETS,
        )],
    )?;
    let shutdown = domain_runtime::shutdown::shutdown_signal()?;
    let listeners = Listeners::bind(&config.admin_api, config.ops_listen).await?;
    domain_participant::run(config, listeners, metrics, shutdown).await
}
