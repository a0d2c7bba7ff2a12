//! Harness of the mediator end-to-end tests (mediator_protocol.rs, mediator_failover.rs,
//! fault_network.rs): a 2-instance sequencer cluster, `mediator` replicas
//! (real processes) over their own database, and participants played by the
//! test over `SequencerConnection`: they send confirmation requests and signed
//! responses and collect the verdicts from their own event streams, verifying
//! the sequencer's and the mediator's signatures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checks::db_client;
use crate::topology::{
    Member, domain_manager, new_participant, send_topology, sequencer_registration, set_state,
    sleep_until_micros,
};
use crate::{connect, http_get, now_micros};
use anyhow::{Context as _, bail, ensure};
use domain_identity::{DomainId, MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_localnet::config::{self, Listeners};
use domain_localnet::sequencers::{Placement, SequencerCluster};
use domain_proto::confirmation::v1 as pb;
use domain_proto::mediator::admin::v1 as mediator_admin_pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_sequencer_client::SequencerConnection;
use domain_testkit::pg::{PgCluster, TestDatabase};
use domain_testkit::process::{ManagedProcess, TestLogs, binary_path};
use domain_topology::{DomainParameters, Mapping, Operation, Permission, TopologyTransaction};
use prost::Message as _;

/// The participants of [`MediatorDomain::start_pair`].
pub const PAIR: [(&str, Permission); 2] = [
    ("alice", Permission::Submission),
    ("bob", Permission::Submission),
];

/// Default topology change delay (no parameters transaction changes it).
pub const CHANGE_DELAY_MICROS: i64 = 250_000;

/// One `mediator` replica.
pub struct MediatorNode {
    pub name: String,
    /// Its ports; the admin API listens on 127.0.0.1, the ops port on the placement's
    /// address.
    pub listeners: Listeners,
    pub config_path: std::path::PathBuf,
    pub process: Option<ManagedProcess>,
    /// Where it runs (root namespace on loopback by default).
    pub placement: Placement,
}

impl MediatorNode {
    /// The admin API (loopback of the replica's namespace: unreachable from the test
    /// when the replica runs in a namespace of its own).
    pub fn admin_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.listeners.admin)
    }
    pub fn ops_url(&self) -> String {
        self.listeners.ops_url()
    }
}

/// A domain on test hosts with their own addresses (fault_network.rs): the databases (on
/// a server the namespaces reach), the address the sequencers listen on (in the root
/// namespace), and one placement per mediator replica.
pub struct MediatorNet {
    pub seq_database: TestDatabase,
    pub med_database: TestDatabase,
    pub sequencer_addr: std::net::IpAddr,
    pub replicas: Vec<Placement>,
}

/// A verdict as a participant received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub verdict: pb::Verdict,
    /// Sequencing timestamp of the verdict event.
    pub ts: i64,
    pub at: Instant,
}

/// Verdicts seen in one participant's stream, by request id.
#[derive(Default)]
pub struct VerdictLog {
    pub by_request: HashMap<i64, Vec<Received>>,
    /// Verdict envelopes that failed verification (must stay empty).
    pub invalid: Vec<String>,
    pub total: usize,
}

pub struct Participant {
    pub member: Member,
    pub conn: SequencerConnection,
    pub verdicts: Arc<Mutex<VerdictLog>>,
    collector: tokio::task::JoinHandle<()>,
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.collector.abort();
    }
}

/// The domain under test.
/// Fields drop in order: participants' collectors, then mediators, then sequencers.
pub struct MediatorDomain {
    pub participants: BTreeMap<String, Participant>,
    pub nodes: Vec<MediatorNode>,
    pub logs: TestLogs,
    pub cluster: SequencerCluster,
    pub seq_db: tokio_postgres::Client,
    pub med_db: TestDatabase,
    pub mediator: Member,
    next_id: AtomicU64,
}

impl MediatorDomain {
    /// Starts 2 sequencers, registers the mediator, allowlists `participants`
    /// with a `response_timeout`, starts `replicas` mediators and waits until one
    /// is ready, then connects the participants (alternating instances).
    pub async fn start(
        logs: TestLogs,
        prefix: &str,
        replicas: usize,
        participants: &[(&str, Permission)],
        response_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_with(logs, prefix, replicas, participants, response_timeout, None).await
    }

    /// [`Self::start`] with participants `alice` and `bob`, both with permission
    /// `submission` (the parties of a [`Load`]).
    pub async fn start_pair(
        logs: TestLogs,
        prefix: &str,
        replicas: usize,
        response_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start(logs, prefix, replicas, &PAIR, response_timeout).await
    }

    /// [`Self::start`] with the sequencers, databases and replicas placed by `net`.
    pub async fn start_with(
        logs: TestLogs,
        prefix: &str,
        replicas: usize,
        participants: &[(&str, Permission)],
        response_timeout: Duration,
        net: Option<MediatorNet>,
    ) -> anyhow::Result<Self> {
        let (cluster, database, med_db, placements) = match net {
            None => {
                let database = PgCluster::shared()
                    .create_database(&format!("{prefix}_seq"))
                    .await;
                let cluster =
                    SequencerCluster::start(logs.clone(), database.clone(), 2, "").await?;
                let med_db = PgCluster::shared()
                    .create_database(&format!("{prefix}_med"))
                    .await;
                (
                    cluster,
                    database,
                    med_db,
                    vec![Placement::default(); replicas],
                )
            }
            Some(net) => {
                let placement = Placement {
                    netns: None,
                    addr: net.sequencer_addr,
                    database_url: None,
                };
                let cluster = SequencerCluster::start_placed(
                    logs.clone(),
                    net.seq_database.clone(),
                    "",
                    &[],
                    &[placement.clone(), placement],
                    "",
                )
                .await?;
                (cluster, net.seq_database, net.med_database, net.replicas)
            }
        };
        let seq_db = db_client(&database.url).await?;

        // The shared key, made by the binary itself.
        let key_path = logs.dir().join("mediator-key.pem");
        let out = std::process::Command::new(binary_path("mediator"))
            .arg("generate-key")
            .arg(&key_path)
            .output()
            .context("run mediator generate-key")?;
        ensure!(
            out.status.success(),
            "mediator generate-key failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout)?.trim().to_string();
        let key = SigningKeyPair::load_pem(&key_path)?;
        ensure!(
            key.fingerprint().to_string() == printed,
            "generate-key printed {printed}, the key's fingerprint is {}",
            key.fingerprint()
        );
        let mediator_id = MemberId::new(
            MemberRole::Mediator,
            UniqueId::new("mediator", *key.fingerprint())?,
        );
        // Registered before any topology, so the mediator sees all of it.
        cluster.register(&mediator_id).await?;

        // Play the domain manager: allowlist, then the response timeout.
        let dom = connect(&cluster, 0, &domain_manager(&cluster)).await?;
        let mut members = Vec::new();
        // The sequencer's registration first (the domain manager's bootstrap does the
        // same): the mediator trusts only a sequencer key the namespace registered.
        let mut serial = 1;
        let mut last_ts = send_topology(
            &cluster,
            &dom,
            &sequencer_registration(&cluster, serial).await?,
        )
        .await?;
        for (name, permission) in participants {
            let member = new_participant(name)?;
            serial += 1;
            last_ts =
                send_topology(&cluster, &dom, &set_state(serial, &member.0, *permission)).await?;
            members.push((name.to_string(), member));
        }
        serial += 1;
        let params = TopologyTransaction {
            serial,
            operation: Operation::Replace,
            mapping: Mapping::Parameters(DomainParameters {
                participant_response_timeout: response_timeout,
                ..DomainParameters::default()
            }),
        };
        last_ts = last_ts.max(send_topology(&cluster, &dom, &params).await?);
        sleep_until_micros(last_ts + CHANGE_DELAY_MICROS + 20_000).await;

        let mut domain = Self {
            logs,
            cluster,
            seq_db,
            med_db,
            mediator: (mediator_id, Arc::new(key)),
            nodes: Vec::new(),
            participants: BTreeMap::new(),
            next_id: AtomicU64::new(0),
        };
        for i in 0..replicas {
            let placement = placements.get(i).cloned().unwrap_or_default();
            domain.add_mediator_node(i, &key_path, placement)?;
            domain.start_mediator(i)?;
        }
        let active = domain.wait_active(Duration::from_secs(30)).await?;
        println!("mediator replica {active} is active");
        // One replica being active says nothing about the others having started listening
        // (seen in CI on a loaded machine: the passive replica's health check was refused).
        for i in 0..replicas {
            if domain.nodes[i].placement.netns.is_some() {
                domain.wait_live(i, Duration::from_secs(30)).await?;
            } else {
                domain.wait_reachable(i, Duration::from_secs(30)).await?;
            }
        }

        for (i, (name, member)) in members.into_iter().enumerate() {
            let conn = connect_admitted(&domain.cluster, i % 2, &member).await?;
            let verdicts = Arc::new(Mutex::new(VerdictLog::default()));
            let collector = tokio::spawn(collect_verdicts(
                conn.clone(),
                domain.mediator.0.clone(),
                domain.cluster.domain_id.clone(),
                verdicts.clone(),
            ));
            domain.participants.insert(
                name,
                Participant {
                    member,
                    conn,
                    verdicts,
                    collector,
                },
            );
        }
        Ok(domain)
    }

    fn add_mediator_node(
        &mut self,
        i: usize,
        key_path: &std::path::Path,
        placement: Placement,
    ) -> anyhow::Result<()> {
        let name = format!("mediator-{i}");
        let at = Listeners::free(placement.addr);
        // Each replica prefers another sequencer instance.
        let mut endpoints: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .map(|n| n.public_endpoint())
            .collect();
        let len = endpoints.len();
        endpoints.rotate_left(i % len);
        let mediator = config::mediator(
            &self.cluster.domain_id.to_string(),
            key_path,
            placement
                .database_url
                .as_deref()
                .unwrap_or(&self.med_db.url),
            &at,
            &self.cluster.pki_files,
            endpoints,
        )?;
        let config_path = config::config_path(self.logs.dir(), &name);
        config::write(&config_path, &mediator, &[])?;
        self.nodes.push(MediatorNode {
            name,
            listeners: at,
            config_path,
            process: None,
            placement,
        });
        Ok(())
    }

    /// (Re)starts replica `i` (does not wait for anything).
    pub fn start_mediator(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(i).context("no such replica")?;
        node.process = Some(
            node.placement
                .service("mediator", &node.config_path)
                // Test fault hook: while this file exists, the replica holds its next
                // fenced transaction open (see `hold_file`).
                .env(
                    "MEDIATOR_FAULT_HOLD_FENCED_TX_FILE",
                    self.logs.dir().join(format!("{}.hold", node.name)),
                )
                .name(node.name.clone())
                .logs(&self.logs)
                .spawn()?,
        );
        Ok(())
    }

    /// The file that makes replica `i` hold its next fenced transaction open while it
    /// exists (`MEDIATOR_FAULT_HOLD_FENCED_TX_FILE`).
    pub fn hold_file(&self, i: usize) -> std::path::PathBuf {
        self.logs.dir().join(format!("mediator-{i}.hold"))
    }

    /// Whether replica `i` answers ready on its ops port.
    pub async fn is_ready(&self, i: usize) -> bool {
        let Some(node) = self.nodes.get(i) else {
            return false;
        };
        matches!(http_get(&node.ops_url(), "/health/ready").await, Ok(body) if body == "ready\n")
    }

    /// Waits until exactly one running replica is ready; returns its index.
    pub async fn wait_active(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ready = Vec::new();
            for i in 0..self.nodes.len() {
                if self.is_ready(i).await {
                    ready.push(i);
                }
            }
            match ready.as_slice() {
                [one] => return Ok(*one),
                [] if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                [] => bail!("no mediator replica became ready within {timeout:?}"),
                many => bail!("several mediator replicas are ready at once: {many:?}"),
            }
        }
    }

    pub async fn status(&self, i: usize) -> anyhow::Result<mediator_admin_pb::StatusResponse> {
        let node = self.nodes.get(i).context("no such replica")?;
        let mut client =
            mediator_admin_pb::mediator_admin_service_client::MediatorAdminServiceClient::connect(
                node.admin_endpoint(),
            )
            .await?;
        Ok(client
            .status(mediator_admin_pb::StatusRequest {})
            .await?
            .into_inner())
    }

    /// Waits until replica `i` answers `/health/live` on its ops port.
    pub async fn wait_live(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let node = self.nodes.get(i).context("no such replica")?;
        let deadline = Instant::now() + timeout;
        loop {
            match http_get(&node.ops_url(), "/health/live").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("mediator replica {i} never answered live")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until replica `i` answers its gRPC health check (whatever the status).
    pub async fn wait_reachable(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.grpc_health(i).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("mediator replica {i} never answered health")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `grpc.health.v1.Health/Check` for service `""` on replica `i`'s admin API.
    pub async fn grpc_health(&self, i: usize) -> anyhow::Result<ServingStatus> {
        let node = self.nodes.get(i).context("no such replica")?;
        let channel = tonic::transport::Endpoint::from_shared(node.admin_endpoint())?
            .connect()
            .await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let response = grpc
            .unary(
                tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                }),
                path,
                domain_proto::codec::DomainCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
            )
            .await?;
        Ok(match response.into_inner().status {
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            other => ServingStatus::Other(other),
        })
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub async fn metric(
        &self,
        i: usize,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<f64> {
        let [value] = self.metrics(i, [(name, labels)]).await?;
        Ok(value)
    }

    /// Several metrics of replica `i` from one scrape: for each `(name, labels)`, the sum
    /// of the series of that name carrying all those labels.
    pub async fn metrics<const N: usize>(
        &self,
        i: usize,
        wanted: [(&str, &[(&str, &str)]); N],
    ) -> anyhow::Result<[f64; N]> {
        let node = self.nodes.get(i).context("no such replica")?;
        let text = http_get(&node.ops_url(), "/metrics").await?;
        Ok(wanted.map(|(name, labels)| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter(|(series, _)| {
                    (*series == name || series.starts_with(&format!("{name}{{")))
                        && labels
                            .iter()
                            .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
                })
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum()
        }))
    }

    pub fn participant(&self, name: &str) -> &Participant {
        self.participants
            .get(name)
            .unwrap_or_else(|| panic!("no participant {name}"))
    }

    pub fn id(&self, name: &str) -> String {
        self.participant(name).member.0.to_string()
    }

    fn message_id(&self, kind: &str) -> String {
        format!("{kind}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// `submitter` sends a confirmation request to the mediator and every
    /// informee and confirmer; returns its request id (sequencing timestamp).
    pub async fn request(
        &self,
        submitter: &str,
        informees: &[&str],
        confirmers: &[&str],
        root_hash: &[u8],
    ) -> anyhow::Result<i64> {
        let p = self.participant(submitter);
        let request = pb::ConfirmationRequest {
            submitter: p.member.0.to_string(),
            informees: informees.iter().map(|n| self.id(n)).collect(),
            confirming_participants: confirmers.iter().map(|n| self.id(n)).collect(),
            root_hash: root_hash.to_vec(),
            payload: b"e2e".to_vec(),
            mediator: self.mediator.0.to_string(),
        };
        let mut recipients = vec![self.mediator.0.to_string()];
        for r in request
            .informees
            .iter()
            .chain(&request.confirming_participants)
        {
            if !recipients.contains(r) {
                recipients.push(r.clone());
            }
        }
        self.send_message(
            submitter,
            "request",
            pb::domain_message::Message::ConfirmationRequest(request),
            recipients,
        )
        .await
    }

    /// `who` sends `message` to `recipients` (message id `<kind>-<n>`); returns its
    /// sequencing timestamp.
    async fn send_message(
        &self,
        who: &str,
        kind: &str,
        message: pb::domain_message::Message,
        recipients: Vec<String>,
    ) -> anyhow::Result<i64> {
        let envelope = sequencer_pb::Envelope {
            content: domain_message(message).into(),
            recipients,
            broadcast: false,
        };
        let r = self
            .participant(who)
            .conn
            .send(
                &self.message_id(kind),
                vec![envelope],
                now_micros() + 60_000_000,
            )
            .await
            .with_context(|| format!("{who} sends a confirmation {kind}"))?;
        Ok(r.sequencing_timestamp_micros)
    }

    /// A response of `who`, signed with its own key.
    pub fn signed_response(
        &self,
        who: &str,
        request_id: i64,
        root_hash: &[u8],
        answer: Answer<'_>,
    ) -> pb::SignedConfirmationResponse {
        let (decision, reason) = match answer {
            Answer::Approve => (pb::ConfirmationDecision::Approve, ""),
            Answer::Reject(reason) => (pb::ConfirmationDecision::Reject, reason),
        };
        let p = self.participant(who);
        let response = pb::ConfirmationResponse {
            request_id,
            participant: p.member.0.to_string(),
            root_hash: root_hash.to_vec(),
            decision: decision as i32,
            reason: reason.to_string(),
            domain_id: self.cluster.domain_id.to_string(),
        };
        domain_confirmation::sign(&p.member.1, &self.cluster.domain_id, &response)
    }

    /// `who` sends `signed` to the mediator; returns its sequencing timestamp.
    pub async fn send_response(
        &self,
        who: &str,
        signed: pb::SignedConfirmationResponse,
    ) -> anyhow::Result<i64> {
        self.send_message(
            who,
            "response",
            pb::domain_message::Message::ConfirmationResponse(signed),
            vec![self.mediator.0.to_string()],
        )
        .await
    }

    /// `who` answers request `request_id`; returns the response's sequencing timestamp.
    pub async fn respond(
        &self,
        who: &str,
        request_id: i64,
        root_hash: &[u8],
        answer: Answer<'_>,
    ) -> anyhow::Result<i64> {
        let signed = self.signed_response(who, request_id, root_hash, answer);
        self.send_response(who, signed).await
    }

    /// Verdict events the mediator got sequenced, by message id (sequencer database).
    pub async fn sequenced_verdicts(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let rows = self
            .seq_db
            .query(
                "SELECT e.message_id, count(*) FROM seq_events e JOIN seq_members m ON m.id = e.sender \
                 WHERE m.member = $1 AND e.message_id LIKE 'verdict-%' GROUP BY e.message_id",
                &[&self.mediator.0.to_string()],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Waits until participant `name` has a verdict for every id in `ids`.
    pub async fn wait_verdicts(
        &self,
        name: &str,
        ids: &[i64],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = {
                let log = self.participant(name).verdicts.lock().expect("lock");
                ids.iter()
                    .filter(|id| !log.by_request.contains_key(id))
                    .count()
            };
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} still misses {missing} of {} verdicts after {timeout:?}",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for every verdict of `ids` at alice (within `alice_timeout`), then at bob
    /// (within 10 s more).
    pub async fn wait_verdicts_at_alice_and_bob(
        &self,
        ids: &[i64],
        alice_timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_verdicts("alice", ids, alice_timeout).await?;
        self.wait_verdicts("bob", ids, Duration::from_secs(10))
            .await
    }

    /// The verdicts `name` received for `request_id`.
    pub fn verdicts_of(&self, name: &str, request_id: i64) -> Vec<pb::Verdict> {
        let log = self.participant(name).verdicts.lock().expect("lock");
        log.by_request
            .get(&request_id)
            .map(|v| v.iter().map(|r| r.verdict.clone()).collect())
            .unwrap_or_default()
    }

    /// Checks that `name` got exactly one valid verdict for each of `ids` and
    /// nothing else; returns them.
    pub fn exactly_one_each(
        &self,
        name: &str,
        ids: &[i64],
    ) -> anyhow::Result<HashMap<i64, Received>> {
        let log = self.participant(name).verdicts.lock().expect("lock");
        ensure!(
            log.invalid.is_empty(),
            "{name} got invalid verdicts: {:?}",
            log.invalid
        );
        let mut out = HashMap::new();
        for id in ids {
            match log.by_request.get(id).map(Vec::as_slice) {
                Some([one]) => {
                    out.insert(*id, one.clone());
                }
                Some(many) if many.len() > 1 => {
                    bail!(
                        "{name} got {} verdicts for request {id}: {many:?}",
                        many.len()
                    )
                }
                _ => bail!("{name} got no verdict for request {id}"),
            }
        }
        let extra: Vec<&i64> = log.by_request.keys().filter(|k| !ids.contains(k)).collect();
        ensure!(
            extra.is_empty(),
            "{name} got verdicts for unknown requests {extra:?}"
        );
        ensure!(
            log.total == ids.len(),
            "{name} got {} verdict envelopes for {} requests",
            log.total,
            ids.len()
        );
        Ok(out)
    }
}

/// What a request of a [`Load`] gets from the party that did not submit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Approve,
    /// A rejection with reason `reject-<i>`.
    Reject,
    /// No response: the request times out.
    Silent,
}

/// Requests between `alice` and `bob` (alternating submitter, both informees and
/// confirmers), request `i` with root hash `<prefix>-<i>`; the submitter always approves.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub prefix: &'static str,
    /// Requests with `i % 10 == reject` are rejected by the other party.
    pub reject: Option<usize>,
    /// Requests with `i % 10 == silent` get no response from the other party.
    pub silent: Option<usize>,
}

impl Load {
    pub fn kind(&self, i: usize) -> Kind {
        match Some(i % 10) {
            r if r == self.reject => Kind::Reject,
            s if s == self.silent => Kind::Silent,
            _ => Kind::Approve,
        }
    }

    /// (submitter, other party) of request `i`.
    pub fn parties(i: usize) -> (&'static str, &'static str) {
        if i.is_multiple_of(2) {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        }
    }

    pub fn root(&self, i: usize) -> Vec<u8> {
        format!("{}-{i}", self.prefix).into_bytes()
    }

    /// The ids of the requests of `range` that are decided by their responses (all but
    /// the silent ones, which wait for the timeout).
    pub fn decided(&self, ids: &[i64], range: std::ops::Range<usize>) -> Vec<i64> {
        range
            .filter(|i| self.kind(*i) != Kind::Silent)
            .map(|i| ids[i])
            .collect()
    }

    /// The verdict request `i` must get.
    pub fn expected(&self, d: &MediatorDomain, i: usize) -> Expected {
        let (_, other) = Self::parties(i);
        match self.kind(i) {
            Kind::Approve => Expected::Approved,
            Kind::Reject => Expected::Rejected {
                participant: d.id(other),
                reason: format!("reject-{i}"),
            },
            Kind::Silent => Expected::TimedOut {
                missing: vec![d.id(other)],
            },
        }
    }
}

impl MediatorDomain {
    /// Sends request `i` of `load`; returns its id.
    pub async fn request_of(&self, load: &Load, i: usize) -> anyhow::Result<i64> {
        let (submitter, _) = Load::parties(i);
        self.request(
            submitter,
            &["alice", "bob"],
            &["alice", "bob"],
            &load.root(i),
        )
        .await
    }

    /// Sends requests `0..n` of `load`, 32 at a time; returns their ids by `i`.
    pub async fn request_all(&self, load: &Load, n: usize) -> anyhow::Result<Vec<i64>> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let mut sent: Vec<(usize, i64)> = futures::stream::iter(0..n)
            .map(|i| async move { Ok::<_, anyhow::Error>((i, self.request_of(load, i).await?)) })
            .buffer_unordered(32)
            .try_collect()
            .await?;
        sent.sort();
        Ok(sent.into_iter().map(|(_, id)| id).collect())
    }

    /// Sends the responses of requests `range` of `load` (`ids` by `i`), `concurrency`
    /// requests at a time.
    pub async fn respond_all(
        &self,
        load: &Load,
        ids: &[i64],
        range: std::ops::Range<usize>,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        futures::stream::iter(range)
            .map(|i| self.respond_to(load, i, ids[i]))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Sends the responses request `i` (id `id`) of `load` gets.
    pub async fn respond_to(&self, load: &Load, i: usize, id: i64) -> anyhow::Result<()> {
        let (submitter, other) = Load::parties(i);
        let root = load.root(i);
        match load.kind(i) {
            Kind::Approve => {
                futures::try_join!(
                    self.respond(submitter, id, &root, Answer::Approve),
                    self.respond(other, id, &root, Answer::Approve)
                )?;
            }
            Kind::Reject => {
                let reason = format!("reject-{i}");
                futures::try_join!(
                    self.respond(submitter, id, &root, Answer::Approve),
                    self.respond(other, id, &root, Answer::Reject(&reason))
                )?;
            }
            Kind::Silent => {
                self.respond(submitter, id, &root, Answer::Approve).await?;
            }
        }
        Ok(())
    }
}

/// A participant's answer to a confirmation request.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Approve,
    /// Reject, with the reason given.
    Reject(&'a str),
}

/// What a verdict should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Approved,
    Rejected { participant: String, reason: String },
    TimedOut { missing: Vec<String> },
}

pub fn check_outcome(v: &pb::Verdict, expected: &Expected) -> anyhow::Result<()> {
    use pb::verdict::Outcome;
    let ok = match (&v.outcome, expected) {
        (Some(Outcome::Approved(_)), Expected::Approved) => true,
        (
            Some(Outcome::Rejected(r)),
            Expected::Rejected {
                participant,
                reason,
            },
        ) => &r.participant == participant && r.reason.contains(reason.as_str()),
        (Some(Outcome::TimedOut(t)), Expected::TimedOut { missing }) => {
            &t.missing_confirmers == missing
        }
        _ => false,
    };
    ensure!(
        ok,
        "request {}: expected {expected:?}, got {:?}",
        v.request_id,
        v.outcome
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    Serving,
    NotServing,
    Other(i32),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub fn domain_message(m: pb::domain_message::Message) -> Vec<u8> {
    pb::DomainMessage { message: Some(m) }.encode_to_vec()
}

/// Connects once the participant's allowlisting is effective on instance `i`.
async fn connect_admitted(
    cluster: &SequencerCluster,
    i: usize,
    member: &Member,
) -> anyhow::Result<SequencerConnection> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(cluster, i, member).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline && format!("{e:#}").contains("not registered") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub use domain_confirmation::verify_verdict;

/// Reads a participant's stream for ever (resubscribing after errors) and
/// records every verdict envelope.
async fn collect_verdicts(
    conn: SequencerConnection,
    mediator: MemberId,
    domain_id: DomainId,
    log: Arc<Mutex<VerdictLog>>,
) {
    let mut next = 0;
    loop {
        let mut stream = match conn.subscribe(next).await {
            Ok(s) => s,
            Err(e) => {
                println!(
                    "  verdict collector of {}: subscribe failed: {e}",
                    conn.member.id.name()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let event = match stream.message().await {
                Ok(Some(r)) => match r.event {
                    Some(e) => e,
                    None => continue,
                },
                Ok(None) => break,
                Err(st) => {
                    println!(
                        "  verdict collector of {}: stream failed: {st}",
                        conn.member.id.name()
                    );
                    break;
                }
            };
            next = event.counter + 1;
            let content = match conn.verify_event(&event) {
                Ok(c) => c,
                Err(e) => {
                    log.lock()
                        .expect("lock")
                        .invalid
                        .push(format!("bad event {}: {e}", event.counter));
                    continue;
                }
            };
            for d in &event.envelopes {
                let Some(env) = &d.envelope else { continue };
                let Ok(msg) = pb::DomainMessage::decode(&env.content[..]) else {
                    continue;
                };
                let Some(pb::domain_message::Message::Verdict(signed)) = msg.message else {
                    continue;
                };
                let mut log = log.lock().expect("lock");
                log.total += 1;
                if content.sender != mediator.to_string() {
                    log.invalid
                        .push(format!("verdict sent by {}", content.sender));
                    continue;
                }
                match verify_verdict(&signed, &mediator, &domain_id) {
                    Ok(verdict) => {
                        log.by_request
                            .entry(verdict.request_id)
                            .or_default()
                            .push(Received {
                                verdict,
                                ts: event.timestamp_micros,
                                at: Instant::now(),
                            })
                    }
                    Err(e) => log.invalid.push(e),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
