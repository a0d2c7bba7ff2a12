//! Bringing a devnet domain up: PostgreSQL, keys and TLS, then the sequencers, domain
//! managers, mediators and participants, each from a config written by
//! `domain_localnet::config` and each waited for before the next kind starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use domain_localnet::config::{self, Listeners, SequencerEndpoints};
use domain_manager::config::{ComponentKind, ConnectionConfig};
use domain_participant::config::AutoConfirm;
use domain_testkit::certs::{PkiFiles, TestPki};
use domain_testkit::pg::{PgCluster, TestDatabase};
use domain_testkit::process::wait_for_health;
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::Args;
use crate::net::{Devnet, ParticipantInfo, START_TIMEOUT};
use crate::procs::{Component, Kind, Spec};

/// Name part of the domain id.
const DOMAIN_NAME: &str = "devnet";
/// Alias of the participants' domain connection.
const ALIAS: &str = "devnet";

/// The databases of a run, one per service (the replicas of a service share theirs).
struct Databases {
    sequencer: TestDatabase,
    domain_manager: TestDatabase,
    mediator: TestDatabase,
    participants: [TestDatabase; 2],
}

/// Keys and TLS files of a run.
struct Keys {
    tls: PkiFiles,
    namespace: PathBuf,
    sequencer: PathBuf,
    mediator: PathBuf,
    /// `MED::mediator::1220…`
    mediator_id: String,
}

/// The listeners of every process, known up front (the domain managers probe them all).
struct Layout {
    sequencers: [Listeners; 2],
    domain_managers: [Listeners; 2],
    mediators: [Listeners; 2],
    participants: [Listeners; 2],
}

impl Devnet {
    /// Starts everything and waits until the participants are connected.
    pub async fn start(&mut self, args: &Args) -> anyhow::Result<()> {
        let dbs = self.start_postgres().await?;
        let keys = self.make_keys().await?;
        let layout = Layout {
            sequencers: [Listeners::free_loopback(), Listeners::free_loopback()],
            domain_managers: [Listeners::free_loopback(), Listeners::free_loopback()],
            mediators: [Listeners::free_loopback(), Listeners::free_loopback()],
            participants: [Listeners::free_loopback(), Listeners::free_loopback()],
        };
        self.start_sequencers(&layout, &keys, &dbs.sequencer)
            .await?;
        self.start_domain_managers(&layout, &keys, &dbs.domain_manager)
            .await?;
        self.start_mediators(&layout, &keys, &dbs.mediator).await?;
        self.join_participants(args, &layout, &dbs.participants)
            .await
    }

    fn config_path(&self, name: &str) -> PathBuf {
        config::config_path(&self.dir.join("config"), name)
    }

    async fn start_postgres(&mut self) -> anyhow::Result<Databases> {
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
        let mut dbs = Vec::new();
        for name in [
            "sequencer",
            "domain_manager",
            "mediator",
            "participant1",
            "participant2",
        ] {
            let db = pg
                .try_create_database(&format!("devnet_{name}"))
                .await
                .with_context(|| format!("cannot create the {name} database"))?;
            dbs.push(db);
        }
        self.pg = Some(pg);
        self.databases = dbs.clone();
        let [sequencer, domain_manager, mediator, p1, p2] =
            <[TestDatabase; 5]>::try_from(dbs).map_err(|_| anyhow!("expected 5 databases"))?;
        Ok(Databases {
            sequencer,
            domain_manager,
            mediator,
            participants: [p1, p2],
        })
    }

    /// The TLS files, and the keys made by the binaries themselves.
    async fn make_keys(&mut self) -> anyhow::Result<Keys> {
        let pki = TestPki::with_name("devnet root ca")?;
        let tls = pki.write_files(&self.dir.join("tls"))?;
        self.tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.ca_pem()))
                .domain_name("localhost"),
        );
        let keys = self.dir.join("keys");
        let namespace = keys.join("namespace.pem");
        let sequencer = keys.join("sequencer.pem");
        let mediator = keys.join("mediator.pem");
        self.domain_id = self
            .cmd(
                "domain-manager",
                &[
                    "init",
                    "--key-file",
                    &namespace.to_string_lossy(),
                    "--domain-name",
                    DOMAIN_NAME,
                ],
            )
            .await?;
        self.cmd("sequencer", &["generate-key", &sequencer.to_string_lossy()])
            .await?;
        let med_fp = self
            .cmd("mediator", &["generate-key", &mediator.to_string_lossy()])
            .await?;
        let mediator_id = format!("MED::mediator::{med_fp}");
        say!(self, "domain id {}, mediator {mediator_id}", self.domain_id);
        Ok(Keys {
            tls,
            namespace,
            sequencer,
            mediator,
            mediator_id,
        })
    }

    /// Writes `name`'s config and starts `bin --config-file <it>`.
    fn spawn_service<T: config::ServiceConfig>(
        &mut self,
        name: &str,
        kind: Kind,
        grpc: String,
        at: &Listeners,
        config: &T,
    ) -> anyhow::Result<()> {
        let path = self.config_path(name);
        config::write(&path, config, &[])?;
        self.spawn(name, kind, grpc, at.ops_url(), kind.as_str(), &path)
    }

    async fn start_sequencers(
        &mut self,
        layout: &Layout,
        keys: &Keys,
        db: &TestDatabase,
    ) -> anyhow::Result<()> {
        let first = self.components.len();
        for (i, at) in layout.sequencers.iter().enumerate() {
            let config =
                config::sequencer(&self.domain_id, &keys.sequencer, &db.url, at, &keys.tls)?;
            let name = format!("sequencer-{}", i + 1);
            self.spawn_service(&name, Kind::Sequencer, at.public_url(), at, &config)?;
        }
        for (i, at) in layout.sequencers.iter().enumerate() {
            let tls = self.tls.clone();
            let url = at.public_url();
            self.wait(first + i, async move {
                wait_for_health(&url, tls, "", START_TIMEOUT).await
            })
            .await?;
            say!(
                self,
                "sequencer-{} is serving at {}",
                i + 1,
                at.public_url()
            );
        }
        Ok(())
    }

    async fn start_domain_managers(
        &mut self,
        layout: &Layout,
        keys: &Keys,
        db: &TestDatabase,
    ) -> anyhow::Result<()> {
        let status: Vec<_> = [
            (ComponentKind::DomainManager, &layout.domain_managers),
            (ComponentKind::Mediator, &layout.mediators),
            (ComponentKind::Participant, &layout.participants),
        ]
        .into_iter()
        .flat_map(|(kind, all)| {
            all.iter().enumerate().map(move |(i, at)| {
                config::status_component(&format!("{}-{}", kind.as_str(), i + 1), kind, at)
            })
        })
        .collect();
        let sequencers = SequencerEndpoints {
            sequencers: &layout.sequencers,
            client_cert: false,
        };
        self.start_replicas(Kind::DomainManager, &layout.domain_managers, |at| {
            let mut config = config::domain_manager(
                DOMAIN_NAME,
                &keys.namespace,
                &db.url,
                at,
                &keys.tls,
                &sequencers,
                status.clone(),
            );
            config.genesis.mediators = vec![keys.mediator_id.parse()?];
            config.genesis.parameters.participant_response_timeout = Duration::from_secs(10);
            // What a joining party is handed (export-connection): here the same loopback
            // URLs, in a real deployment the externally visible names.
            config.connection = Some(ConnectionConfig {
                public_endpoints: layout
                    .sequencers
                    .iter()
                    .map(Listeners::public_url)
                    .collect(),
                ca_file: Some(keys.tls.ca.clone()),
                system_roots: false,
                alias: Some(ALIAS.to_owned()),
            });
            Ok(config)
        })
        .await
    }

    async fn start_mediators(
        &mut self,
        layout: &Layout,
        keys: &Keys,
        db: &TestDatabase,
    ) -> anyhow::Result<()> {
        let sequencers: Vec<String> = layout
            .sequencers
            .iter()
            .map(Listeners::public_url)
            .collect();
        let domain_id = self.domain_id.clone();
        self.start_replicas(Kind::Mediator, &layout.mediators, |at| {
            config::mediator(
                &domain_id,
                &keys.mediator,
                &db.url,
                at,
                &keys.tls,
                sequencers.clone(),
            )
        })
        .await
    }

    /// Starts one active-passive replica of `kind` per entry of `all`, each with the config
    /// `config(at)`, and waits until one is active.
    async fn start_replicas<T: config::ServiceConfig>(
        &mut self,
        kind: Kind,
        all: &[Listeners],
        config: impl Fn(&Listeners) -> anyhow::Result<T>,
    ) -> anyhow::Result<()> {
        let first = self.components.len();
        for (i, at) in all.iter().enumerate() {
            let name = format!("{kind}-{}", i + 1);
            self.spawn_service(&name, kind, at.admin_url(), at, &config(at)?)?;
        }
        let what = match kind {
            Kind::Mediator => "mediators",
            _ => "domain managers",
        };
        self.wait_replicas(first, what).await
    }

    /// Participants join exactly as a party from another company would
    /// (docs/onboarding.md): identity file → allowlisting from it → connection bundle →
    /// connect from the bundle.
    async fn join_participants(
        &mut self,
        args: &Args,
        layout: &Layout,
        dbs: &[TestDatabase; 2],
    ) -> anyhow::Result<()> {
        let dm_endpoints = layout
            .domain_managers
            .iter()
            .map(Listeners::admin_url)
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
        self.bundle_path = Some(bundle_path);
        for (i, (at, db)) in layout.participants.iter().zip(dbs).enumerate() {
            let name = format!("participant{}", i + 1);
            let data = self.dir.join(&name);
            let member = self.join(&name, &data, &dm_endpoints, &bundle_s).await?;
            let mut config = config::participant(&data, &db.url, at, AutoConfirm::Payload);
            config.ping_timeout = Duration::from_secs(args.ping_timeout.as_secs().max(1));
            let path = self.config_path(&name);
            config::write(&path, &config, &[])?;
            self.run_participant(&name, &path, at)?;
            self.participants.push(ParticipantInfo {
                name: name.clone(),
                member,
                admin: at.admin_url(),
            });
            let url = at.admin_url();
            self.wait(self.components.len() - 1, async move {
                wait_for_health(&url, None, "", START_TIMEOUT).await
            })
            .await?;
            say!(self, "{name} is connected and subscribed");
        }
        Ok(())
    }

    /// `participant init`, `export-identity`, allowlisting from the identity file and
    /// `connect --bundle`; returns the member id.
    async fn join(
        &mut self,
        name: &str,
        data: &Path,
        dm_endpoints: &str,
        bundle: &str,
    ) -> anyhow::Result<String> {
        let data_s = data.to_string_lossy().into_owned();
        let member = self
            .cmd(
                "participant",
                &["init", "--name", name, "--data-dir", &data_s],
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
                dm_endpoints,
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
                &["connect", "--bundle", bundle, "--data-dir", &data_s],
            )
            .await?;
        say!(self, "{name}: {connected}");
        self.identity_files.push(identity_path);
        Ok(member)
    }

    /// `participant run --config-file <path>`.
    fn run_participant(&mut self, name: &str, path: &Path, at: &Listeners) -> anyhow::Result<()> {
        let run_args = [
            "run",
            "--config-file",
            &path.to_string_lossy(),
            "--log-format",
            "json",
        ];
        let comp = Component::spawn(Spec {
            name,
            kind: Kind::Participant,
            grpc: at.admin_url(),
            ops: at.ops_url(),
            binary: &self.bin("participant"),
            args: &run_args,
            log: self.logs.join(format!("{name}.log")),
            dir: &self.dir,
        })?;
        self.components.push(comp);
        Ok(())
    }
}
