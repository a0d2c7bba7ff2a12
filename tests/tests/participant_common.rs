//! Shared harness of the participant tests (`participant_ping.rs`,
//! `participant_failover.rs`, which include this file as a module): a real domain
//! (2 TLS sequencers, 1 domain manager, 1 mediator) and real `participant` nodes, set up
//! through the CLIs the way an operator does it (`participant init`, `domainctl
//! participants set-state`, `participant connect-multi`, `participant run`).
//!
//! Not every test uses every helper, hence `allow(dead_code)`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_identity::SigningKeyPair;
use domain_proto::participant::admin::v1 as pb;
use domain_proto::participant::admin::v1::participant_admin_service_client::ParticipantAdminServiceClient;
use domain_testkit::cluster::SequencerCluster;
use domain_testkit::domain_manager::{DomainManagers, domainctl};
use domain_testkit::pg::{PgCluster, TestDatabase};
use domain_testkit::process::{
    ManagedProcess, ProcessBuilder, TestLogs, binary_path, http_status, wait_for_health,
    wait_for_http_ok,
};

pub use domain_testkit::process::free_port;

/// One participant node.
pub struct Participant {
    pub name: String,
    /// `name::1220…`
    pub uid: String,
    /// `PAR::name::1220…`
    pub member: String,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub admin_port: u16,
    pub ops_port: u16,
    pub db: TestDatabase,
    pub process: Option<ManagedProcess>,
}

impl Participant {
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }
    pub async fn admin(
        &self,
    ) -> anyhow::Result<ParticipantAdminServiceClient<tonic::transport::Channel>> {
        Ok(ParticipantAdminServiceClient::connect(self.admin_url()).await?)
    }
    /// The value of a metric line (first series whose line starts with `prefix`).
    pub async fn metric(&self, prefix: &str) -> anyhow::Result<Option<f64>> {
        let text = domain_e2e::http_get(&self.ops_url(), "/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()))
    }
    /// The sequencer endpoint the node's subscription currently reads from.
    pub async fn subscribed_endpoint(&self) -> anyhow::Result<Option<String>> {
        let text = domain_e2e::http_get(&self.ops_url(), "/metrics").await?;
        Ok(text.lines().find_map(|l| {
            if !l.starts_with("participant_subscription_endpoint{") || !l.ends_with(" 1") {
                return None;
            }
            let (_, rest) = l.split_once("endpoint=\"")?;
            Some(rest.split('"').next()?.to_owned())
        }))
    }
}

/// The sequencer endpoint the mediator's event stream is open on (from its metrics).
pub async fn mediator_endpoint(ops_url: &str) -> anyhow::Result<Option<String>> {
    let text = domain_e2e::http_get(ops_url, "/metrics").await?;
    Ok(text.lines().find_map(|l| {
        if !l.starts_with("mediator_subscription_endpoint{") || !l.ends_with(" 1") {
            return None;
        }
        let (_, rest) = l.split_once("endpoint=\"")?;
        Some(rest.split('"').next()?.to_owned())
    }))
}

/// Which sequencer instances exist and who talks to which.
#[derive(Debug, Clone)]
pub struct Layout {
    pub sequencers: usize,
    /// Instances in the mediator's `sequencers` list.
    pub mediator_on: Vec<usize>,
    /// Instances the participants `connect-multi` to.
    pub participants_on: Vec<usize>,
    /// Extra top-level TOML lines of every sequencer instance's config.
    pub sequencer_config: String,
    /// Mediator replicas (active/passive over one database); the first becomes active.
    pub mediator_replicas: usize,
    /// Extra top-level TOML lines of every mediator replica's config.
    pub mediator_config: String,
    /// Extra top-level TOML lines of every participant's config.
    pub participant_config: String,
}

impl Default for Layout {
    /// Two instances, everyone on both.
    fn default() -> Self {
        Self {
            sequencers: 2,
            mediator_on: vec![0, 1],
            participants_on: vec![0, 1],
            sequencer_config: String::new(),
            mediator_replicas: 1,
            mediator_config: String::new(),
            participant_config: String::new(),
        }
    }
}

/// A domain with participants.
pub struct Domain {
    pub layout: Layout,
    pub logs: TestLogs,
    pub cluster: SequencerCluster,
    pub dms: DomainManagers,
    pub mediator_id: String,
    pub mediator: Option<ManagedProcess>,
    pub mediator_ops: String,
    /// Further mediator replicas (started passive), with their ops URLs.
    pub standby_mediators: Vec<(Option<ManagedProcess>, String)>,
    /// The mediator replicas' shared database.
    pub mediator_db: TestDatabase,
    pub participants: Vec<Participant>,
}

/// Runs `participant <args>` to completion.
pub async fn participant_cli(args: &[&str]) -> anyhow::Result<Output> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary_path("participant"))
            .args(args)
            .env_remove("PARTICIPANT_DATA_DIR")
            .env_remove("PARTICIPANT_ADMIN_ENDPOINT")
            .output(),
    )
    .await
    .context("participant CLI did not finish within 60 s")??;
    Ok(out)
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `participant <args>`, which must succeed; returns trimmed stdout.
pub async fn participant_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = participant_cli(args).await?;
    ensure!(
        out.status.success(),
        "participant {args:?} failed: {}",
        text(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Domain {
    /// Starts sequencers, domain manager and mediator, then one participant per
    /// `(name, auto-confirm policy)`, each allowlisted, connected and subscribed.
    pub async fn start(
        logs: TestLogs,
        participants: &[(&str, &str)],
        response_timeout: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(logs, Layout::default(), participants, response_timeout).await
    }

    /// [`Self::start`] with a sequencer layout.
    pub async fn start_with(
        logs: TestLogs,
        layout: Layout,
        participants: &[(&str, &str)],
        response_timeout: &str,
    ) -> anyhow::Result<Self> {
        let pg = PgCluster::shared();
        let cluster = SequencerCluster::start(
            logs.clone(),
            pg.create_database("pt_seq").await,
            layout.sequencers,
            &layout.sequencer_config,
        )
        .await?;
        let med_key_path = logs.path("mediator-key.pem");
        let med_key = SigningKeyPair::generate();
        med_key.save_pem(&med_key_path)?;
        let mediator_id = format!("MED::mediator::{}", med_key.fingerprint());
        // The connection bundle a joining party gets (`domain export-connection`): the
        // instances participants connect to, and the test CA.
        let public = layout
            .participants_on
            .iter()
            .map(|i| format!("\"{}\"", cluster.nodes[*i].public_endpoint()))
            .collect::<Vec<_>>()
            .join(", ");
        let dms = DomainManagers::start(
            &cluster,
            pg.create_database("pt_dm").await,
            1,
            &format!(
                "genesis = {{ mediators = [\"{mediator_id}\"], parameters = {{ participant-response-timeout = \"{response_timeout}\" }} }}\n\
                 connection = {{ public-endpoints = [{public}], ca-file = \"{ca}\" }}",
                ca = cluster.pki_files.ca.display(),
            ),
        )
        .await?;

        let med_db = pg.create_database("pt_med").await;
        let endpoints = layout
            .mediator_on
            .iter()
            .map(|i| format!("\"{}\"", cluster.nodes[*i].public_endpoint()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut replicas = Vec::new();
        for r in 0..layout.mediator_replicas.max(1) {
            let (med_admin, med_ops) = (free_port(), free_port());
            let name = if r == 0 {
                "mediator".to_owned()
            } else {
                format!("mediator-{r}")
            };
            let med_config = logs.path(&format!("{name}.toml"));
            std::fs::write(
                &med_config,
                format!(
                    "name = \"mediator\"\nsigning-key-file = \"{key}\"\ndomain-id = \"{domain}\"\nsequencers = [{endpoints}]\n\
                     ops-listen = \"127.0.0.1:{med_ops}\"\nadvertised-admin-address = \"http://127.0.0.1:{med_admin}\"\n{extra}\n\n\
                     [database]\nurl = \"{url}\"\n\n\
                     [sequencer-tls]\nca = \"{ca}\"\ndomain-name = \"localhost\"\n\n[admin-api]\nlisten = \"127.0.0.1:{med_admin}\"\n",
                    key = med_key_path.display(),
                    domain = cluster.domain_id,
                    url = med_db.url,
                    ca = cluster.pki_files.ca.display(),
                    extra = layout.mediator_config,
                ),
            )?;
            let process = ProcessBuilder::new(binary_path("mediator"))
                .args([
                    "--config-file",
                    &med_config.to_string_lossy(),
                    "--log-format",
                    "json",
                ])
                .env("RUST_LOG", "info")
                .name(name)
                .logs(&logs)
                .spawn()?;
            let ops = format!("http://127.0.0.1:{med_ops}");
            if r == 0 {
                wait_for_http_ok(&format!("{ops}/health/ready"), Duration::from_secs(60))
                    .await
                    .context("the mediator did not become active")?;
            }
            replicas.push((Some(process), ops));
        }
        let mut replicas = replicas.into_iter();
        let (mediator, mediator_ops) = replicas.next().context("one mediator replica")?;
        let standby_mediators: Vec<_> = replicas.collect();
        // The genesis parameters are sequenced before the mediator's registration takes
        // effect, so the mediator never sees them (it only receives broadcasts after its
        // registration) and would use the default 30 s: set them again now.
        // Exit 3 (no replica could serve it) is retried: on a loaded 2-core machine the
        // single domain-manager replica can miss a lease renewal and be passive for a moment.
        let deadline = Instant::now() + Duration::from_secs(15);
        let out = loop {
            let out = dms
                .domainctl(&[
                    "parameters",
                    "set",
                    "--participant-response-timeout",
                    response_timeout,
                ])
                .await?;
            if out.status.code() != Some(3) || Instant::now() >= deadline {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        ensure!(
            out.status.success(),
            "parameters set failed: {}",
            text(&out)
        );

        let mut domain = Self {
            layout,
            logs,
            cluster,
            dms,
            mediator_id,
            mediator,
            mediator_ops,
            standby_mediators,
            mediator_db: med_db,
            participants: Vec::new(),
        };
        for (name, policy) in participants {
            domain.add_participant(name, policy, true).await?;
        }
        Ok(domain)
    }

    /// The sequencer endpoints participants use (`https://localhost:<port>`).
    pub fn sequencer_endpoints(&self) -> Vec<String> {
        self.layout
            .participants_on
            .iter()
            .map(|i| self.cluster.nodes[*i].public_endpoint())
            .collect()
    }

    /// Initialises a participant, optionally allowlists it, connects and starts it.
    pub async fn add_participant(
        &mut self,
        name: &str,
        policy: &str,
        allowlist: bool,
    ) -> anyhow::Result<usize> {
        let data_dir = self.logs.path(name);
        let data = data_dir.to_string_lossy().into_owned();
        let member = participant_ok(&["init", "--name", name, "--data-dir", &data]).await?;
        if allowlist {
            let out = domainctl(
                &self.dms.endpoints(),
                &[
                    "participants",
                    "set-state",
                    &member,
                    "--permission",
                    "submission",
                    "--trust-level",
                    "ordinary",
                ],
            )
            .await?;
            ensure!(out.status.success(), "set-state failed: {}", text(&out));
        }
        let ca = self.cluster.pki_files.ca.to_string_lossy().into_owned();
        let endpoints = self.sequencer_endpoints();
        let mut args = vec!["connect-multi", "testdomain"];
        args.extend(endpoints.iter().map(String::as_str));
        // No --mediator hint: the node learns the mediator from the topology history.
        args.extend(["--ca", &ca, "--data-dir", &data]);
        participant_ok(&args).await?;
        self.adopt_participant(name, &member, data_dir, policy, allowlist)
            .await
    }

    /// Runs a participant whose data directory already holds its identity and connection
    /// (made by the caller, e.g. from a connection bundle): database, config, and (with
    /// `start`) the node.
    pub async fn adopt_participant(
        &mut self,
        name: &str,
        member: &str,
        data_dir: PathBuf,
        policy: &str,
        start: bool,
    ) -> anyhow::Result<usize> {
        let data = data_dir.to_string_lossy().into_owned();
        let uid = member
            .strip_prefix("PAR::")
            .with_context(|| format!("{member} is not PAR::…"))?
            .to_owned();
        let member = member.to_owned();
        let (admin_port, ops_port) = (free_port(), free_port());
        let db = PgCluster::shared()
            .create_database(&format!("pt_{name}"))
            .await;
        let config_path = self.logs.path(&format!("{name}.toml"));
        std::fs::write(
            &config_path,
            format!(
                "data-dir = \"{data}\"\nops-listen = \"127.0.0.1:{ops_port}\"\nauto-confirm = \"{policy}\"\n{extra}\n\n\
                 [database]\nurl = \"{url}\"\n\n[admin-api]\nlisten = \"127.0.0.1:{admin_port}\"\n",
                url = db.url,
                extra = self.layout.participant_config,
            ),
        )?;
        self.participants.push(Participant {
            name: name.to_owned(),
            uid,
            member,
            data_dir,
            config_path,
            admin_port,
            ops_port,
            db,
            process: None,
        });
        let i = self.participants.len() - 1;
        if start {
            self.start_participant(i).await?;
        }
        Ok(i)
    }

    /// (Re)starts participant `i` and waits until it is connected and subscribed.
    pub async fn start_participant(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.participants[i].name.clone();
        self.spawn_participant(i, name)?;
        let p = &self.participants[i];
        wait_for_health(&p.admin_url(), None, "", Duration::from_secs(60))
            .await
            .with_context(|| format!("{} did not connect", p.name))
    }

    /// (Re)starts participant `i` without waiting for it to connect (its log is
    /// `<name>-restarted.log`).
    pub fn start_participant_no_wait(&mut self, i: usize) -> anyhow::Result<()> {
        let name = format!("{}-restarted", self.participants[i].name);
        self.spawn_participant(i, name)
    }

    /// Spawns `participant run` for participant `i`, logging under `log_name`.
    fn spawn_participant(&mut self, i: usize, log_name: String) -> anyhow::Result<()> {
        let logs = self.logs.clone();
        let p = &mut self.participants[i];
        p.process = Some(
            ProcessBuilder::new(binary_path("participant"))
                .args([
                    "run",
                    "--config-file",
                    &p.config_path.to_string_lossy(),
                    "--log-format",
                    "json",
                ])
                .env("RUST_LOG", "info")
                .env_remove("PARTICIPANT_DATA_DIR")
                .name(log_name)
                .logs(&logs)
                .spawn()?,
        );
        Ok(())
    }

    /// Waits until `/health/ready` of participant `i` answers `status`.
    pub async fn wait_ready_status(
        &self,
        i: usize,
        status: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let url = format!("{}/health/ready", self.participants[i].ops_url());
        let deadline = Instant::now() + timeout;
        loop {
            if http_status(&url).await.ok() == Some(status) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{url} did not answer {status} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Pings `target` from the node at `from` through the admin API.
pub async fn ping_rpc(
    from: &mut ParticipantAdminServiceClient<tonic::transport::Channel>,
    target: &str,
    timeout: Duration,
) -> Result<pb::PingResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::PingRequest {
        target_participant_id: target.to_owned(),
        timeout_micros: i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX),
    });
    request.set_timeout(timeout + Duration::from_secs(5));
    from.ping(request).await.map(tonic::Response::into_inner)
}

/// Rows of a participant's committed transactions: (request id, root hash, payload).
pub async fn committed(db: &TestDatabase) -> anyhow::Result<Vec<(i64, Vec<u8>, Vec<u8>)>> {
    let client = domain_e2e::checks::db_client(&db.url).await?;
    let rows = client
        .query(
            "SELECT request_id, root_hash, payload FROM par_transactions ORDER BY request_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
