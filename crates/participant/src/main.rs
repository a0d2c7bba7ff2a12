//! `participant` binary: identity commands, `connect-multi`, the node (`run`), and admin
//! calls to a running node (`ping`, `status`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use domain_participant::config::DEFAULT_DATA_DIR;
use domain_participant::{Listeners, ParticipantConfig, connection, identity};
use domain_proto::participant::admin::v1 as pb;
use domain_proto::participant::admin::v1::participant_admin_service_client::ParticipantAdminServiceClient;
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

/// A client certificate for sequencers that require mutual TLS; copied into the data
/// directory with the connection.
#[derive(clap::Args, Clone)]
struct ClientTlsArgs {
    /// Client certificate (PEM) presented to the sequencers.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        self.client_cert.clone().zip(self.client_key.clone())
    }
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
    /// `PAR::<name>::1220…`. Idempotent: an existing key is loaded, never overwritten.
    Init {
        /// Name part of the participant id (`[A-Za-z0-9_.-]{1,185}`).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Prints the participant id `PAR::<name>::1220…`.
    Id {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Writes the identity file for the domain provider (docs/onboarding.md): participant
    /// id, public key, display name and contact, creation time, signed by the participant
    /// key so the provider can check this party holds it. Holds no secret.
    ExportIdentity {
        /// File to write; default: print it.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Human-readable name of the party (e.g. the company).
        #[arg(long)]
        display_name: Option<String>,
        /// Whom the provider contacts (e.g. an email address).
        #[arg(long)]
        contact: Option<String>,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Connects to a domain from the provider's connection bundle
    /// (`domainctl domain export-connection`): verifies its signature against the domain id
    /// in it, pins the domain id and the sequencer key, refuses endpoints showing others,
    /// and persists the connection (the node picks it up at its next start).
    Connect {
        /// The bundle file.
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// Local name of the connection; default: the bundle's suggested alias.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        tls: ClientTlsArgs,
        /// Mediator id hint (see connect-multi).
        #[arg(long, value_name = "ID")]
        mediator: Option<String>,
        /// How long to wait for each endpoint.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
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
        /// Trust the system's CA roots (sequencers with certificates of public CAs).
        #[arg(long)]
        system_roots: bool,
        #[command(flatten)]
        tls: ClientTlsArgs,
        /// Refuse endpoints that show another domain id (`name::1220…`).
        #[arg(long, value_name = "DOMAIN_ID")]
        expect_domain_id: Option<String>,
        /// Refuse endpoints that present another sequencer key (fingerprint `1220…`).
        #[arg(long, value_name = "FINGERPRINT")]
        expect_sequencer_key: Option<String>,
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
                println!("{}", id.member);
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
            Ok(id) => println!("{}", id.member),
            Err(e) => fail(&e.to_string()),
        },
        Command::ExportIdentity {
            output,
            display_name,
            contact,
            data_dir,
        } => export_identity(&data_dir.data_dir, output, display_name, contact),
        Command::Connect {
            bundle,
            alias,
            tls,
            mediator,
            timeout,
            data_dir,
        } => block_on(connect_bundle(
            bundle,
            alias,
            tls,
            mediator,
            timeout,
            data_dir.data_dir,
        )),
        Command::ConnectMulti {
            alias,
            endpoints,
            ca,
            system_roots,
            tls,
            expect_domain_id,
            expect_sequencer_key,
            mediator,
            admin_endpoint,
            timeout,
            data_dir,
        } => {
            let spec = connection::ConnectSpec {
                alias,
                endpoints,
                system_roots,
                client_cert: tls.pair(),
                mediator,
                pins: connection::Pins {
                    domain_id: expect_domain_id,
                    sequencer_key: expect_sequencer_key,
                },
                timeout,
                ..connection::ConnectSpec::default()
            };
            block_on(connect_multi(spec, ca, admin_endpoint, data_dir.data_dir))
        }
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
    mut spec: connection::ConnectSpec,
    ca: Option<PathBuf>,
    admin_endpoint: Option<String>,
    data_dir: PathBuf,
) -> Result<(), String> {
    // The CA file first, so a typo is named before any network call.
    spec.ca_pem = match &ca {
        Some(path) => {
            connection::ca_tls(path).map_err(|e| e.to_string())?;
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        None => None,
    };
    if let Some(url) = admin_endpoint {
        if spec.mediator.is_some()
            || spec.system_roots
            || spec.client_cert.is_some()
            || spec.pins != connection::Pins::default()
        {
            return Err("--mediator, --system-roots, --client-cert and --expect-… cannot be set through --admin-endpoint; run connect-multi without it while the node is stopped".into());
        }
        let mut client = admin_client(&url).await?;
        let response = client
            .connect_multi(pb::ConnectMultiRequest {
                alias: spec.alias.clone(),
                endpoints: spec.endpoints,
                ca_pem: spec
                    .ca_pem
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default(),
            })
            .await
            .map_err(|s| describe_status("connect-multi", &s))?
            .into_inner();
        println!("connected {} to domain {}", spec.alias, response.domain_id);
        return Ok(());
    }
    connect_and_report(spec, &data_dir).await
}

async fn connect_and_report(spec: connection::ConnectSpec, data_dir: &Path) -> Result<(), String> {
    identity::load(data_dir).map_err(|e| e.to_string())?;
    let alias = spec.alias.clone();
    let (conn, checked) = connection::connect(data_dir, spec)
        .await
        .map_err(|e| e.to_string())?;
    for check in &checked.endpoints {
        match &check.result {
            Ok(_) => eprintln!("  {}: ok", check.endpoint),
            Err(e) if check.refused => eprintln!("  {}: {e}", check.endpoint),
            Err(e) => eprintln!("  {}: unreachable now ({e})", check.endpoint),
        }
    }
    eprintln!("saved {}", connection::connection_path(data_dir).display());
    println!(
        "connected {alias} to domain {} (sequencer key {})",
        conn.domain_id, checked.sequencer_key
    );
    Ok(())
}

async fn connect_bundle(
    bundle_path: PathBuf,
    alias: Option<String>,
    tls: ClientTlsArgs,
    mediator: Option<String>,
    timeout: Duration,
    data_dir: PathBuf,
) -> Result<(), String> {
    let (text, bundle) = connection::read_bundle(&bundle_path)?;
    eprintln!(
        "bundle verified: domain {}, sequencer {}, {} endpoint(s), signed by the namespace key {}",
        bundle.domain_id,
        bundle.sequencer_id,
        bundle.body.endpoints.len(),
        bundle.domain_id.fingerprint()
    );
    let spec = connection::ConnectSpec {
        alias: alias.unwrap_or_else(|| bundle.body.alias.clone()),
        endpoints: bundle.body.endpoints.clone(),
        ca_pem: bundle.body.ca_pem.clone().map(String::into_bytes),
        system_roots: bundle.body.system_roots,
        client_cert: tls.pair(),
        mediator,
        pins: connection::Pins {
            domain_id: Some(bundle.domain_id.to_string()),
            sequencer_key: Some(bundle.sequencer_key_fingerprint.to_string()),
        },
        bundle: Some(text),
        timeout,
    };
    connect_and_report(spec, &data_dir).await
}

fn export_identity(
    data_dir: &Path,
    output: Option<PathBuf>,
    display_name: Option<String>,
    contact: Option<String>,
) {
    let id = match identity::load(data_dir) {
        Ok(id) => id,
        Err(e) => fail(&e.to_string()),
    };
    let text = match domain_identity::onboarding::export_identity(
        &id.member,
        &id.key,
        display_name,
        contact,
    ) {
        Ok(t) => t,
        Err(e) => fail(&e.to_string()),
    };
    match output {
        None => print!("{text}"),
        Some(path) => {
            if let Err(e) = std::fs::write(&path, text.as_bytes()) {
                fail(&format!("cannot write {}: {e}", path.display()));
            }
            eprintln!(
                "wrote the identity file of {} to {}",
                id.member,
                path.display()
            );
            println!("{}", path.display());
        }
    }
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
    let code = domain_proto::error::error_code(s)
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default();
    format!("{what} failed: {:?}: {}{code}", s.code(), s.message())
}

async fn ping(target: String, admin_endpoint: String, timeout: Duration) -> Result<(), String> {
    let target = identity::parse_participant_id(&target)?;
    let mut client = admin_client(&admin_endpoint).await?;
    let mut request = tonic::Request::new(pb::PingRequest {
        target_participant_id: target.to_string(),
        timeout_micros: i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX),
    });
    request.set_timeout(timeout + Duration::from_secs(5));
    let response = client
        .ping(request)
        .await
        .map_err(|s| describe_status(&format!("ping {target}"), &s))?
        .into_inner();
    let ms = response.round_trip_micros as f64 / 1000.0;
    if response.verdict() == pb::PingVerdict::Approved {
        println!("ping {target} approved in {ms:.1} ms");
        Ok(())
    } else {
        Err(format!(
            "ping {target} {} after {ms:.1} ms",
            response.description
        ))
    }
}

async fn status(admin_endpoint: String) -> Result<(), String> {
    let mut client = admin_client(&admin_endpoint).await?;
    let s = client
        .status(pb::StatusRequest {})
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
    let problem = config
        .validate()
        .map_err(|p| format!("invalid participant configuration: {p}"));
    let labels = common.metric_labels();
    domain_runtime::service::launch("participant", &common, &config.tracing, problem, || {
        domain_runtime::service::serve_service(
            "participant",
            &labels,
            &[(
                domain_participant::PING_RTT,
                domain_participant::PING_RTT_BUCKETS,
            )],
            async { Ok(Listeners::bind(&config.admin_api, config.ops_listen).await?) },
            |started| domain_participant::run(config.clone(), started),
        )
    })
}
