//! `devnet`: a whole domain on one machine with one command.
//!
//! Starts a throwaway PostgreSQL (or uses `DATABASE_URL`), 2 sequencers (TLS public API),
//! 2 domain managers, 2 mediator replicas and 2 participants from the sibling binaries,
//! allowlists and connects the participants, then pings between them every few seconds
//! until Ctrl-C or `--duration`, and stops everything in reverse order. See docs/devnet.md.

/// Writes a line to stdout with the time since start.
macro_rules! say {
    ($net:expr, $($arg:tt)*) => {{
        println!("[{:>6.1}s] {}", $net.started.elapsed().as_secs_f64(), format!($($arg)*));
    }};
}

mod chaos;
mod http;
mod procs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use domain_testkit::certs::TestPki;
use domain_testkit::pg::{PgCluster, TestDatabase};
use domain_testkit::process::{free_port, wait_for_health, wait_for_http_ok};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::procs::{Component, Kind, Spec};

/// The sibling binaries devnet runs.
const BINARIES: [&str; 5] = [
    "sequencer",
    "domain-manager",
    "mediator",
    "participant",
    "domainctl",
];
/// Name part of the domain id.
const DOMAIN_NAME: &str = "devnet";
/// Alias of the participants' domain connection.
const ALIAS: &str = "devnet";
/// Budget for one component to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a component may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A whole Canton-style domain on this machine: PostgreSQL, 2 sequencers, 2 domain
/// managers, 2 mediators, 2 participants, and pings between the participants.
#[derive(Parser, Debug)]
#[command(name = "devnet", version)]
struct Args {
    /// Run directory for configs, keys, TLS files, logs and the PostgreSQL data; must be
    /// empty or not exist. Default: a fresh temporary directory (printed at start).
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Stop after pinging for this long (e.g. `60s`, `5m`). Default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Pause between two ping rounds (each round pings both ways). Default `2s`, with
    /// `--chaos` `500ms` (finer interruption figures).
    #[arg(long, value_parser = humantime::parse_duration)]
    ping_interval: Option<Duration>,
    /// How long one ping waits for its verdict.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ping_timeout: Duration,
    /// Never run `cargo build` for the sibling binaries (by default devnet builds them
    /// when started by cargo, i.e. when `CARGO` is set, so they match the sources).
    #[arg(long)]
    no_build: bool,
    /// Delete the run directory (and, with DATABASE_URL, the databases) after a
    /// successful run.
    #[arg(long)]
    rm: bool,
    /// While pinging, kill (SIGKILL, then start again), pause (SIGSTOP, then SIGCONT) or
    /// restart (SIGTERM, then start again) a random sequencer, domain-manager or mediator
    /// replica every `--chaos-interval`, wait until it is back and pings flow again, and
    /// print a summary of the faults and interruptions at the end. See docs/devnet.md.
    #[arg(long)]
    chaos: bool,
    /// Pause between the recovery from one fault and the next fault (with `--chaos`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    chaos_interval: Duration,
    /// Seed of the fault schedule (with `--chaos`); the same seed picks the same faults,
    /// components and pause lengths. Default: from the clock (printed at start).
    #[arg(long)]
    seed: Option<u64>,
}

impl Args {
    fn ping_interval(&self) -> Duration {
        self.ping_interval.unwrap_or(if self.chaos {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("devnet: cannot install the rustls crypto provider");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devnet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let dir = match prepare_dir(args.dir.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("devnet: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let bin_dir = match ensure_binaries(args.no_build) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("devnet: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut net = Devnet::new(dir.clone(), bin_dir);
    say!(
        net,
        "run directory {} (logs in {})",
        dir.display(),
        net.logs.display()
    );

    let started = tokio::select! {
        r = net.start(&args) => r,
        _ = cancel.cancelled() => Err(anyhow!("interrupted during start-up")),
    };
    let mut ok = true;
    match started {
        Err(e) => {
            eprintln!("devnet: error: {e:#}");
            ok = false;
        }
        Ok(()) => {
            say!(net, "domain {} is up", net.domain_id);
            // The two files of the joining flow (docs/onboarding.md).
            for f in &net.identity_files {
                say!(net, "identity file: {}", f.display());
            }
            if let Some(b) = &net.bundle_path {
                say!(net, "connection bundle: {}", b.display());
            }
            ok &= net.print_status().await;
            let pings = if args.chaos {
                chaos::run(&mut net, &args, &cancel).await
            } else {
                net.ping_loop(&args, &cancel).await
            };
            ok &= pings.healthy;
            ok &= net.print_status().await;
            net.print_participants().await;
            say!(net, "{}", pings.summary());
            if pings.ok == 0 {
                eprintln!("devnet: error: no ping succeeded");
                ok = false;
            }
        }
    }
    ok &= net.shutdown().await;
    if ok {
        say!(net, "devnet finished cleanly");
        if args.rm {
            net.drop_databases().await;
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => say!(net, "removed {}", dir.display()),
                Err(e) => eprintln!("devnet: cannot remove {}: {e}", dir.display()),
            }
        } else {
            say!(net, "logs, configs and keys are in {}", dir.display());
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("devnet: FAILED; logs are in {}", net.logs.display());
        ExitCode::FAILURE
    }
}

fn spawn_signal_handler(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("devnet: cannot install signal handlers; stop with --duration");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        println!("devnet: stop requested; shutting down (again to kill everything)");
        cancel.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("devnet: second signal: exiting at once");
        std::process::exit(130);
    });
}

/// Creates the run directory (fresh temporary one by default).
fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "--dir {} is not empty; give a new or empty directory (each run starts a fresh domain)",
                    d.display()
                );
            }
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            std::path::absolute(d)?
        }
        None => tempfile::Builder::new()
            .prefix("devnet-")
            .tempdir()
            .context("cannot create a temporary run directory")?
            .keep(),
    };
    // PostgreSQL runs as the `postgres` user when we are root: it must reach <dir>/pg.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    for sub in ["logs", "keys", "tls", "config"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(dir)
}

/// Finds the sibling binaries; builds them with `$CARGO build` when started by cargo.
fn ensure_binaries(no_build: bool) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the devnet executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let profile_flag = if release { " --release" } else { "" };
    let bins: String = BINARIES.iter().map(|b| format!(" --bin {b}")).collect();
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    match std::env::var_os("CARGO") {
        Some(cargo) if !no_build => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
            eprintln!("devnet: building the domain binaries: cargo build{profile_flag}{bins}");
            let mut cmd = std::process::Command::new(&cargo);
            cmd.arg("build").arg("--manifest-path").arg(&manifest);
            if release {
                cmd.arg("--release");
            }
            for b in BINARIES {
                cmd.args(["--bin", b]);
            }
            let status = cmd
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit())
                .status()
                .with_context(|| format!("cannot run {}", PathBuf::from(&cargo).display()))?;
            if !status.success() {
                bail!("cargo build{profile_flag}{bins} failed ({status})");
            }
        }
        _ if missing.is_empty() => {}
        _ => bail!(
            "missing {} next to {}; build them with `cargo build{profile_flag}{bins}` \
             (or start devnet with `cargo run{profile_flag} --bin devnet`, which builds them)",
            missing.join(", "),
            exe.display()
        ),
    }
    let still_missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "missing {} in {} after the build",
            still_missing.join(", "),
            dir.display()
        );
    }
    Ok(dir)
}

/// A TOML string literal.
fn q(s: impl AsRef<str>) -> String {
    toml::Value::String(s.as_ref().to_owned()).to_string()
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

struct Ports {
    public: u16,
    admin: u16,
    ops: u16,
}

/// Hands out distinct free ports: the OS may return a port it just handed out again once
/// the probe socket is closed, so duplicates within one run are filtered here.
#[derive(Default)]
struct PortAllocator(std::collections::HashSet<u16>);

impl PortAllocator {
    fn next(&mut self) -> u16 {
        loop {
            let port = free_port();
            if self.0.insert(port) {
                return port;
            }
        }
    }

    fn ports(&mut self) -> Ports {
        Ports {
            public: self.next(),
            admin: self.next(),
            ops: self.next(),
        }
    }
}

impl Ports {
    fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops)
    }
    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }
    fn public_url(&self) -> String {
        format!("https://localhost:{}", self.public)
    }
}

struct ParticipantInfo {
    name: String,
    /// `PAR::<name>::1220…`
    member: String,
    admin: String,
}

/// Outcome of the ping phase.
struct PingStats {
    ok: usize,
    failed: usize,
    rtts_ms: Vec<f64>,
    /// No component died.
    healthy: bool,
}

impl PingStats {
    fn summary(&self) -> String {
        let mut v = self.rtts_ms.clone();
        v.sort_by(f64::total_cmp);
        let rtt = if v.is_empty() {
            String::new()
        } else {
            format!(
                "; round trip min {:.1} ms, median {:.1} ms, max {:.1} ms",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            )
        };
        format!("pings: {} approved, {} failed{rtt}", self.ok, self.failed)
    }
}

struct Devnet {
    started: Instant,
    dir: PathBuf,
    logs: PathBuf,
    bins: PathBuf,
    pg: Option<PgCluster>,
    databases: Vec<TestDatabase>,
    components: Vec<Component>,
    participants: Vec<ParticipantInfo>,
    domain_id: String,
    tls: Option<ClientTlsConfig>,
    /// The connection bundle the participants joined with.
    bundle_path: Option<PathBuf>,
    /// The participants' identity files.
    identity_files: Vec<PathBuf>,
}

impl Devnet {
    fn new(dir: PathBuf, bins: PathBuf) -> Self {
        Self {
            started: Instant::now(),
            logs: dir.join("logs"),
            dir,
            bins,
            pg: None,
            databases: Vec::new(),
            components: Vec::new(),
            participants: Vec::new(),
            domain_id: String::new(),
            tls: None,
            bundle_path: None,
            identity_files: Vec::new(),
        }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }

    fn setup_log(&self) -> PathBuf {
        self.logs.join("setup.log")
    }

    async fn cmd(&self, bin: &str, args: &[&str]) -> anyhow::Result<String> {
        procs::run_ok(
            &self.bin(bin),
            args,
            &self.dir,
            &self.setup_log(),
            Duration::from_secs(60),
        )
        .await
    }

    async fn start(&mut self, args: &Args) -> anyhow::Result<()> {
        // PostgreSQL.
        let external = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let pg = match external {
            Some(url) => {
                say!(self, "using the PostgreSQL server of DATABASE_URL");
                PgCluster::from_url(url.trim())?
            }
            None => {
                let base = self.dir.join("pg");
                say!(self, "starting PostgreSQL in {}", base.display());
                tokio::task::spawn_blocking(move || PgCluster::start_private(&base))
                    .await
                    .context("PostgreSQL start-up task failed")??
            }
        };
        if let Some(port) = pg.port() {
            say!(self, "PostgreSQL listens on 127.0.0.1:{port}");
        }
        self.pg = Some(pg);
        let mut dbs = Vec::new();
        for name in [
            "sequencer",
            "domain_manager",
            "mediator",
            "participant1",
            "participant2",
        ] {
            let pg = self.pg.as_ref().context("no PostgreSQL")?;
            let db = pg
                .try_create_database(&format!("devnet_{name}"))
                .await
                .with_context(|| format!("cannot create the {name} database"))?;
            dbs.push(db);
        }
        self.databases = dbs.clone();
        let [seq_db, dm_db, med_db, p1_db, p2_db] =
            <[TestDatabase; 5]>::try_from(dbs).map_err(|_| anyhow!("expected 5 databases"))?;

        // TLS and keys.
        let pki = TestPki::with_name("devnet root ca")?;
        let tls_files = pki.write_files(&self.dir.join("tls"))?;
        self.tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.ca_pem()))
                .domain_name("localhost"),
        );
        let keys = self.dir.join("keys");
        let ns_key = keys.join("namespace.pem");
        let seq_key = keys.join("sequencer.pem");
        let med_key = keys.join("mediator.pem");
        self.domain_id = self
            .cmd(
                "domain-manager",
                &[
                    "init",
                    "--key-file",
                    &ns_key.to_string_lossy(),
                    "--domain-name",
                    DOMAIN_NAME,
                ],
            )
            .await?;
        self.cmd("sequencer", &["generate-key", &seq_key.to_string_lossy()])
            .await?;
        let med_fp = self
            .cmd("mediator", &["generate-key", &med_key.to_string_lossy()])
            .await?;
        let mediator_id = format!("MED::mediator::{med_fp}");
        say!(self, "domain id {}, mediator {mediator_id}", self.domain_id);

        // Ports of everything, known up front (the domain managers probe all of them).
        let mut alloc = PortAllocator::default();
        let seq_ports = [alloc.ports(), alloc.ports()];
        let dm_ports = [alloc.ports(), alloc.ports()];
        let med_ports = [alloc.ports(), alloc.ports()];
        let par_ports = [alloc.ports(), alloc.ports()];
        let cfg = self.dir.join("config");

        // Sequencers.
        for (i, p) in seq_ports.iter().enumerate() {
            let name = format!("sequencer-{}", i + 1);
            let config = format!(
                "domain-id = {domain}\nsigning-key-file = {key}\nops-listen = \"127.0.0.1:{ops}\"\nadvertised-address = {adv}\n\n\
                 [database]\nurl = {url}\n\n[public-api]\nlisten = \"127.0.0.1:{public}\"\n\n\
                 [public-api.tls]\ncert = {cert}\nkey = {tkey}\n\n[admin-api]\nlisten = \"127.0.0.1:{admin}\"\n",
                domain = q(&self.domain_id),
                key = qp(&seq_key),
                ops = p.ops,
                adv = q(p.public_url()),
                url = q(&seq_db.url),
                public = p.public,
                cert = qp(&tls_files.server_cert),
                tkey = qp(&tls_files.server_key),
                admin = p.admin,
            );
            let path = cfg.join(format!("{name}.toml"));
            std::fs::write(&path, config)?;
            self.spawn(
                &name,
                Kind::Sequencer,
                p.public_url(),
                p.ops_url(),
                "sequencer",
                &path,
            )?;
        }
        for (i, p) in seq_ports.iter().enumerate() {
            let name = format!("sequencer-{}", i + 1);
            let tls = self.tls.clone();
            let url = p.public_url();
            self.wait(i, async move {
                wait_for_health(&url, tls, "", START_TIMEOUT).await
            })
            .await?;
            say!(self, "{name} is serving at {}", p.public_url());
        }

        // Domain managers.
        let mut sequencers = String::new();
        for p in &seq_ports {
            sequencers.push_str(&format!(
                "\n[[sequencers]]\npublic-endpoint = {}\nadmin-endpoint = {}\nops-url = {}\n",
                q(p.public_url()),
                q(p.admin_url()),
                q(p.ops_url())
            ));
        }
        let mut components = String::new();
        for (kind, ports, prefix) in [
            ("domain-manager", &dm_ports, "domain-manager"),
            ("mediator", &med_ports, "mediator"),
            ("participant", &par_ports, "participant"),
        ] {
            for (i, p) in ports.iter().enumerate() {
                components.push_str(&format!(
                    "\n[[status-components]]\nname = \"{prefix}-{}\"\nkind = \"{kind}\"\nops-url = {}\n",
                    i + 1,
                    q(p.ops_url())
                ));
            }
        }
        let first_dm = self.components.len();
        for (i, p) in dm_ports.iter().enumerate() {
            let name = format!("domain-manager-{}", i + 1);
            let config = format!(
                "domain-name = {dn}\nnamespace-key-file = {key}\nops-listen = \"127.0.0.1:{ops}\"\nadvertised-admin-address = {adv}\n\n\
                 [database]\nurl = {url}\n\n[admin-api]\nlisten = \"127.0.0.1:{admin}\"\n\n\
                 [sequencer-tls]\nca = {ca}\ndomain-name = \"localhost\"\n\n\
                 [connection]\npublic-endpoints = [{public}]\nca-file = {ca}\nalias = {alias}\n\n\
                 [genesis]\nmediators = [{med}]\n\n[genesis.parameters]\nparticipant-response-timeout = \"10s\"\n{sequencers}{components}",
                dn = q(DOMAIN_NAME),
                key = qp(&ns_key),
                ops = p.ops,
                adv = q(p.admin_url()),
                url = q(&dm_db.url),
                admin = p.admin,
                ca = qp(&tls_files.ca),
                med = q(&mediator_id),
                // What a joining party is handed (export-connection): here the same
                // loopback URLs, in a real deployment the externally visible names.
                public = seq_ports
                    .iter()
                    .map(|p| q(p.public_url()))
                    .collect::<Vec<_>>()
                    .join(", "),
                alias = q(ALIAS),
            );
            let path = cfg.join(format!("{name}.toml"));
            std::fs::write(&path, config)?;
            self.spawn(
                &name,
                Kind::DomainManager,
                p.admin_url(),
                p.ops_url(),
                "domain-manager",
                &path,
            )?;
        }
        self.wait_replicas(first_dm, "domain managers").await?;

        // Mediators.
        let seq_list = seq_ports
            .iter()
            .map(|p| q(p.public_url()))
            .collect::<Vec<_>>()
            .join(", ");
        let first_med = self.components.len();
        for (i, p) in med_ports.iter().enumerate() {
            let name = format!("mediator-{}", i + 1);
            let config = format!(
                "name = \"mediator\"\nsigning-key-file = {key}\ndomain-id = {domain}\nsequencers = [{seq_list}]\n\
                 ops-listen = \"127.0.0.1:{ops}\"\nadvertised-admin-address = {adv}\n\n\
                 [database]\nurl = {url}\n\n[sequencer-tls]\nca = {ca}\ndomain-name = \"localhost\"\n\n\
                 [admin-api]\nlisten = \"127.0.0.1:{admin}\"\n",
                key = qp(&med_key),
                domain = q(&self.domain_id),
                ops = p.ops,
                adv = q(p.admin_url()),
                url = q(&med_db.url),
                ca = qp(&tls_files.ca),
                admin = p.admin,
            );
            let path = cfg.join(format!("{name}.toml"));
            std::fs::write(&path, config)?;
            self.spawn(
                &name,
                Kind::Mediator,
                p.admin_url(),
                p.ops_url(),
                "mediator",
                &path,
            )?;
        }
        self.wait_replicas(first_med, "mediators").await?;

        // Participants join exactly as a party from another company would
        // (docs/onboarding.md): identity file → allowlisting from it → connection bundle →
        // connect from the bundle.
        let dm_endpoints = dm_ports
            .iter()
            .map(Ports::admin_url)
            .collect::<Vec<_>>()
            .join(",");
        let bundle_path = self.dir.join("connection-bundle.json");
        let bundle_s = bundle_path.to_string_lossy().into_owned();
        self.cmd(
            "domainctl",
            &[
                "--endpoint",
                &dm_endpoints,
                "domain",
                "export-connection",
                "--output-file",
                &bundle_s,
            ],
        )
        .await?;
        say!(self, "connection bundle: {bundle_s}");
        self.bundle_path = Some(bundle_path.clone());
        for (i, (p, db)) in par_ports.iter().zip([&p1_db, &p2_db]).enumerate() {
            let name = format!("participant{}", i + 1);
            let data = self.dir.join(&name);
            let data_s = data.to_string_lossy().into_owned();
            let member = self
                .cmd(
                    "participant",
                    &["init", "--name", &name, "--data-dir", &data_s],
                )
                .await?;
            let identity_path = self.dir.join(format!("{name}-identity.json"));
            let identity_s = identity_path.to_string_lossy().into_owned();
            self.cmd(
                "participant",
                &[
                    "export-identity",
                    "--output",
                    &identity_s,
                    "--display-name",
                    &format!("devnet {name}"),
                    "--data-dir",
                    &data_s,
                ],
            )
            .await?;
            say!(self, "{name} identity file: {identity_s}");
            self.cmd(
                "domainctl",
                &[
                    "--endpoint",
                    &dm_endpoints,
                    "participants",
                    "set-state",
                    "--identity-file",
                    &identity_s,
                    "--permission",
                    "submission",
                    "--trust-level",
                    "ordinary",
                ],
            )
            .await?;
            say!(
                self,
                "allowlisted {member} from its identity file (permission submission, trust level ordinary, key bound)"
            );
            // No --mediator: the participant learns it from the topology history.
            let connected = self
                .cmd(
                    "participant",
                    &["connect", "--bundle", &bundle_s, "--data-dir", &data_s],
                )
                .await?;
            say!(self, "{name}: {connected}");
            self.identity_files.push(identity_path);
            let config = format!(
                "data-dir = {data}\nops-listen = \"127.0.0.1:{ops}\"\nping-timeout = \"{pt}s\"\n\n\
                 [database]\nurl = {url}\n\n[admin-api]\nlisten = \"127.0.0.1:{admin}\"\n",
                data = q(&data_s),
                ops = p.ops,
                pt = args.ping_timeout.as_secs().max(1),
                url = q(&db.url),
                admin = p.admin,
            );
            let path = cfg.join(format!("{name}.toml"));
            std::fs::write(&path, config)?;
            let idx = self.components.len();
            let run_args = [
                "run",
                "--config-file",
                &path.to_string_lossy(),
                "--log-format",
                "json",
            ];
            let comp = Component::spawn(Spec {
                name: &name,
                kind: Kind::Participant,
                grpc: p.admin_url(),
                ops: p.ops_url(),
                binary: &self.bin("participant"),
                args: &run_args,
                log: self.logs.join(format!("{name}.log")),
                dir: &self.dir,
            })?;
            self.components.push(comp);
            self.participants.push(ParticipantInfo {
                name: name.clone(),
                member,
                admin: p.admin_url(),
            });
            let url = p.admin_url();
            self.wait(idx, async move {
                wait_for_health(&url, None, "", START_TIMEOUT).await
            })
            .await?;
            say!(self, "{name} is connected and subscribed");
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        name: &str,
        kind: Kind,
        grpc: String,
        ops: String,
        bin: &str,
        config: &Path,
    ) -> anyhow::Result<()> {
        let config = config.to_string_lossy();
        let comp = Component::spawn(Spec {
            name,
            kind,
            grpc,
            ops,
            binary: &self.bin(bin),
            args: &["--config-file", &config, "--log-format", "json"],
            log: self.logs.join(format!("{name}.log")),
            dir: &self.dir,
        })?;
        say!(self, "started {name} (pid {})", comp.pid());
        self.components.push(comp);
        Ok(())
    }

    /// Waits for `fut`, failing early when component `idx` exits.
    async fn wait<F>(&mut self, idx: usize, fut: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => {
                    let comp = &self.components[idx];
                    return r.with_context(|| format!(
                        "{} did not become ready; last log lines of {}:\n{}",
                        comp.name, comp.log.display(), comp.log_tail(20)
                    ));
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let comp = &mut self.components[idx];
                    if let Some(status) = comp.exited() {
                        bail!(
                            "{} exited during start-up ({status}); last log lines of {}:\n{}",
                            comp.name, comp.log.display(), comp.log_tail(20)
                        );
                    }
                }
            }
        }
    }

    /// Waits until both replicas from `first` are live and exactly one is active.
    async fn wait_replicas(&mut self, first: usize, what: &str) -> anyhow::Result<()> {
        for idx in [first, first + 1] {
            let url = format!("{}/health/live", self.components[idx].ops);
            self.wait(
                idx,
                async move { wait_for_http_ok(&url, START_TIMEOUT).await },
            )
            .await?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut active = Vec::new();
            for idx in [first, first + 1] {
                let comp = &mut self.components[idx];
                if let Some(status) = comp.exited() {
                    bail!(
                        "{} exited during start-up ({status}); last log lines of {}:\n{}",
                        comp.name,
                        comp.log.display(),
                        comp.log_tail(20)
                    );
                }
                if is_ready(&comp.ops).await {
                    active.push(comp.name.clone());
                }
            }
            if let [one] = active.as_slice() {
                say!(self, "{what}: {one} is active, the other passive");
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tails = [first, first + 1]
                    .iter()
                    .map(|i| {
                        let c = &self.components[*i];
                        format!("--- {} ---\n{}", c.log.display(), c.log_tail(15))
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!(
                    "{what}: no single active replica within {START_TIMEOUT:?} (active: {active:?})\n{tails}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints every component with its role, endpoints and whether `/metrics` answers;
    /// returns whether every metrics endpoint answered.
    async fn print_status(&mut self) -> bool {
        let mut all_ok = true;
        let mut rows = vec![[
            "component".to_string(),
            "role".to_string(),
            "gRPC endpoint".to_string(),
            "metrics URL".to_string(),
            "metrics".to_string(),
        ]];
        for comp in &mut self.components {
            let role = match comp.exited() {
                Some(status) => format!("exited ({status})"),
                None => comp.kind.role(is_ready(&comp.ops).await).to_string(),
            };
            let metrics_url = format!("{}/metrics", comp.ops);
            let metrics = match http::get(&metrics_url, Duration::from_secs(3)).await {
                Ok((200, body)) if body.contains("# TYPE") => {
                    let series = body
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                        .count();
                    format!("metrics ok ({series} series)")
                }
                Ok((status, _)) => {
                    all_ok = false;
                    format!("metrics FAILED (HTTP {status})")
                }
                Err(e) => {
                    all_ok = false;
                    format!("metrics FAILED ({e})")
                }
            };
            rows.push([
                comp.name.clone(),
                role,
                comp.grpc.clone(),
                metrics_url,
                metrics,
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        say!(self, "status of every process:");
        for row in &rows {
            let line = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ");
            println!("    {}", line.trim_end());
        }
        all_ok
    }

    /// Pings both ways every `ping_interval` until `--duration` passed or a stop signal.
    async fn ping_loop(&mut self, args: &Args, cancel: &CancellationToken) -> PingStats {
        let mut stats = PingStats {
            ok: 0,
            failed: 0,
            rtts_ms: Vec::new(),
            healthy: true,
        };
        let end = args.duration.map(|d| Instant::now() + d);
        match args.duration {
            Some(d) => say!(self, "pinging every {:?} for {d:?}", args.ping_interval()),
            None => say!(
                self,
                "pinging every {:?}; Ctrl-C to stop",
                args.ping_interval()
            ),
        }
        'rounds: loop {
            for (from, to) in [(0usize, 1usize), (1, 0)] {
                if cancel.is_cancelled() {
                    break 'rounds;
                }
                let (from_name, to_name, to_member, admin) = {
                    let f = &self.participants[from];
                    let t = &self.participants[to];
                    (
                        f.name.clone(),
                        t.name.clone(),
                        t.member.clone(),
                        f.admin.clone(),
                    )
                };
                match ping(&self.pinger(), &admin, &to_member, args.ping_timeout).await {
                    Ok(line) => {
                        stats.ok += 1;
                        if let Some(ms) = parse_rtt_ms(&line) {
                            stats.rtts_ms.push(ms);
                        }
                        say!(self, "{from_name} -> {to_name}: {line}");
                    }
                    Err(e) => {
                        stats.failed += 1;
                        say!(self, "{from_name} -> {to_name}: FAILED: {e}");
                    }
                }
            }
            if let Some(dead) = self.first_dead() {
                eprintln!("devnet: error: {dead}");
                stats.healthy = false;
                break;
            }
            let now = Instant::now();
            let wait = match end {
                Some(end) if now >= end => break,
                Some(end) => args.ping_interval().min(end - now),
                None => args.ping_interval(),
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            if end.is_some_and(|end| Instant::now() >= end) {
                break;
            }
        }
        stats
    }

    /// What a ping needs, detached from `self` (the chaos mode pings from its own task).
    fn pinger(&self) -> PingSetup {
        PingSetup {
            participant: self.bin("participant"),
            dir: self.dir.clone(),
            log: self.logs.join("pings.log"),
        }
    }

    /// The first component that exited, described with its log tail.
    fn first_dead(&mut self) -> Option<String> {
        for comp in &mut self.components {
            if let Some(status) = comp.exited() {
                return Some(format!(
                    "{} exited unexpectedly ({status}); last log lines of {}:\n{}",
                    comp.name,
                    comp.log.display(),
                    comp.log_tail(20)
                ));
            }
        }
        None
    }

    async fn print_participants(&self) {
        for p in &self.participants {
            let out = procs::run(
                &self.bin("participant"),
                &["status", "--admin-endpoint", &p.admin],
                &self.dir,
                &self.setup_log(),
                Duration::from_secs(15),
            )
            .await;
            match out {
                Ok(o) if o.status.success() => {
                    let field = |key: &str| {
                        o.stdout
                            .lines()
                            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                            .unwrap_or_default()
                    };
                    say!(
                        self,
                        "{}: committed transactions {}, last counter {}",
                        p.name,
                        field("committed transactions:"),
                        field("last counter:")
                    );
                }
                Ok(o) => say!(self, "{}: status failed: {}", p.name, o.stderr.trim()),
                Err(e) => say!(self, "{}: status failed: {e:#}", p.name),
            }
        }
    }

    /// SIGTERM in reverse start order, then PostgreSQL. Returns whether everything exited
    /// cleanly.
    async fn shutdown(&mut self) -> bool {
        let mut clean = true;
        if !self.components.is_empty() {
            say!(
                self,
                "stopping {} processes in reverse start order",
                self.components.len()
            );
        }
        while let Some(mut comp) = self.components.pop() {
            let t = Instant::now();
            let (status, killed) = comp.stop(STOP_GRACE).await;
            let ms = t.elapsed().as_millis();
            match status {
                _ if killed => {
                    clean = false;
                    say!(
                        self,
                        "{} did not exit within {STOP_GRACE:?} of SIGTERM: killed",
                        comp.name
                    );
                }
                Some(s) if s.success() => say!(self, "stopped {} ({ms} ms)", comp.name),
                Some(s) => {
                    clean = false;
                    say!(
                        self,
                        "{} exited with {s}; last log lines of {}:\n{}",
                        comp.name,
                        comp.log.display(),
                        comp.log_tail(10)
                    );
                }
                None => {
                    clean = false;
                    say!(self, "{}: exit status unknown", comp.name);
                }
            }
        }
        if let Some(pg) = self.pg.take() {
            if pg.port().is_some() {
                match tokio::task::spawn_blocking(move || pg.stop()).await {
                    Ok(Ok(())) => say!(self, "stopped PostgreSQL"),
                    Ok(Err(e)) => {
                        clean = false;
                        say!(self, "cannot stop PostgreSQL: {e:#}");
                    }
                    Err(e) => {
                        clean = false;
                        say!(self, "cannot stop PostgreSQL: {e}");
                    }
                }
            } else {
                self.pg = Some(pg);
            }
        }
        clean
    }

    /// Drops the databases created on an external (DATABASE_URL) server.
    async fn drop_databases(&self) {
        if let Some(pg) = &self.pg {
            for db in &self.databases {
                if let Err(e) = pg.drop_database(db).await {
                    eprintln!("devnet: cannot drop database {}: {e:#}", db.name);
                }
            }
        }
    }
}

/// The `participant` binary, working directory and log of the pings.
#[derive(Clone)]
struct PingSetup {
    participant: PathBuf,
    dir: PathBuf,
    log: PathBuf,
}

/// One `participant ping` through the participant at `admin` to `to_member`: the
/// `ping … approved in 23.4 ms` line, or why it failed.
async fn ping(
    setup: &PingSetup,
    admin: &str,
    to_member: &str,
    timeout: Duration,
) -> Result<String, String> {
    let timeout_arg = format!("{}ms", timeout.as_millis());
    let out = procs::run(
        &setup.participant,
        &[
            "ping",
            to_member,
            "--admin-endpoint",
            admin,
            "--timeout",
            &timeout_arg,
        ],
        &setup.dir,
        &setup.log,
        timeout + Duration::from_secs(15),
    )
    .await;
    match out {
        Ok(o) if o.status.success() => Ok(o.stdout.trim().to_owned()),
        Ok(o) => Err(o.stderr.trim().to_owned()),
        Err(e) => Err(format!("{e:#}")),
    }
}

async fn is_ready(ops: &str) -> bool {
    matches!(
        http::get(&format!("{ops}/health/ready"), Duration::from_secs(2)).await,
        Ok((200, _))
    )
}

/// The round trip in a `ping … approved in 23.4 ms` line.
fn parse_rtt_ms(line: &str) -> Option<f64> {
    let (_, rest) = line.rsplit_once(" in ")?;
    rest.strip_suffix(" ms")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_lines() {
        assert_eq!(
            parse_rtt_ms("ping PAR::b::1220ab approved in 23.4 ms"),
            Some(23.4)
        );
        assert_eq!(parse_rtt_ms("ping failed"), None);
    }

    #[test]
    fn toml_strings_are_quoted() {
        for raw in ["/tmp/a b\\c", "a\"b", "it's"] {
            let v: toml::Table = toml::from_str(&format!("x = {}", q(raw))).expect("toml");
            assert_eq!(v["x"].as_str(), Some(raw));
        }
    }
}
