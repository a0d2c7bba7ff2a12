//! Topology store and active-replica logic against a real PostgreSQL, with real lease
//! keepers and an in-process fake sequencer (which verifies signatures and deduplicates
//! message ids like the real one).

use domain_proto::error::ServiceError as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::DomainManagerError;
use crate::gateway::{
    DiscoveredSequencer, InstanceList, SendOutcome, Sequenced, SequencerGateway, TopologySend,
};
use crate::manager::{Core, CoreSettings, Retirement, WriteOutcome};
use crate::store::{self, RowState, StoreError};
use domain_identity::{DomainId, MemberId, MemberRole, PublicKey, SigningKeyPair, UniqueId};
use domain_lease::{Fence, LeaseConfig, LeaseHandle, LeaseKeeper, LeaseStatus, Role};
use domain_storage::DatabaseConfig;
use domain_testkit::pg::PgCluster;
use domain_topology::{DomainParameters, Mapping, Operation, Permission, TrustLevel};
use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "domain-manager";

/// Max sequencing time of rows the tests insert directly (2027: well in the future).
const MAX_SEQUENCING_TS: i64 = 1_800_000_000_000_000;

/// A fresh migrated database.
async fn fresh_db() -> DatabaseConfig {
    let db = PgCluster::shared().create_database("dm").await;
    let config = DatabaseConfig {
        pool_max_size: 4,
        pool_wait_timeout: Duration::from_secs(1),
        application_name: Some("dm-test".into()),
        ..DatabaseConfig::from_url(db.url)
    };
    let pool = domain_storage::connect_sqlx(&config)
        .await
        .expect("connect sqlx");
    domain_storage::run_migrations(&pool, &crate::MIGRATOR)
        .await
        .expect("migrate");
    pool.close().await;
    config
}

fn pool(db: &DatabaseConfig) -> deadpool_postgres::Pool {
    domain_storage::hot_pool(db).expect("pool")
}

/// A running lease keeper standing for one replica process.
struct Replica {
    handle: LeaseHandle,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

fn start_keeper(db: &DatabaseConfig, holder: &str) -> Replica {
    let config = LeaseConfig {
        holder: holder.into(),
        holder_address: format!("http://{holder}.example:4402"),
        ttl: Duration::from_millis(600),
        renew_interval: Duration::from_millis(150),
        poll_interval: Duration::from_millis(50),
        op_timeout: Duration::from_millis(250),
        ..LeaseConfig::new(LEASE)
    };
    let keeper = LeaseKeeper::new(pool(db), config).expect("lease config");
    let handle = keeper.handle();
    let stop = CancellationToken::new();
    let task = tokio::spawn(keeper.run(stop.clone()));
    Replica { handle, task, stop }
}

async fn wait_status(
    handle: &LeaseHandle,
    what: &str,
    mut pred: impl FnMut(&LeaseStatus) -> bool,
) -> LeaseStatus {
    let mut rx: watch::Receiver<LeaseStatus> = handle.subscribe();
    match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| pred(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("not reached: {what}; last {:?}", handle.status()),
    }
}

async fn wait_active(replica: &Replica) -> Fence {
    wait_status(&replica.handle, "active", LeaseStatus::is_active).await;
    replica.handle.fence().expect("fence while active")
}

fn domain() -> (DomainId, Arc<SigningKeyPair>) {
    let key = Arc::new(SigningKeyPair::generate());
    let id = DomainId::new(UniqueId::new("testdomain", *key.fingerprint()).expect("id"));
    (id, key)
}

fn member(role: MemberRole, name: &str) -> (MemberId, SigningKeyPair) {
    let key = SigningKeyPair::generate();
    (
        MemberId::new(role, UniqueId::new(name, *key.fingerprint()).expect("id")),
        key,
    )
}

/// What the fake does with the next sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// Nothing reaches a sequencer.
    Unreachable,
    /// The sequencer sequences it but the answer is lost.
    LoseAnswer,
}

/// An in-process sequencer: verifies the namespace signature, deduplicates message
/// ids, advances its clock by 1 s per event, and (after [`FakeSequencer::expire_seen`])
/// refuses sends past their max sequencing time like the real one.
struct FakeSequencer {
    domain_id: DomainId,
    namespace: domain_identity::PublicKey,
    clock: AtomicI64,
    dedup: Mutex<HashMap<String, i64>>,
    /// Every message id ever sequenced, with its timestamp: the receipts in the domain
    /// manager's own stream (never pruned here).
    receipts: Mutex<HashMap<String, i64>>,
    /// Largest max sequencing time of any send so far (sent or not).
    latest_deadline: AtomicI64,
    /// Sends whose max sequencing time is at or below this are refused as too late.
    expired_through: AtomicI64,
    mode: Mutex<Mode>,
    /// Every send that reached the sequencer: (serial, deduplicated).
    log: Mutex<Vec<(u64, bool)>>,
    sequencers: Vec<DiscoveredSequencer>,
    /// Every key the core named through `trust_sequencer_key`, with how many sends had
    /// reached the sequencer by then.
    trusted: Mutex<Vec<(PublicKey, usize)>>,
    /// When set, a send is sequenced, then announces itself on `entered` and waits for
    /// `release` before answering.
    hold: AtomicBool,
    entered: Notify,
    release: Notify,
}

impl FakeSequencer {
    fn new(domain_id: &DomainId, namespace: &SigningKeyPair) -> Arc<Self> {
        let (sequencer_id, key) = member(MemberRole::Sequencer, "sequencer");
        Arc::new(Self {
            domain_id: domain_id.clone(),
            namespace: namespace.public_key().clone(),
            clock: AtomicI64::new(1_700_000_000_000_000),
            dedup: Mutex::new(HashMap::new()),
            receipts: Mutex::new(HashMap::new()),
            latest_deadline: AtomicI64::new(0),
            expired_through: AtomicI64::new(0),
            mode: Mutex::new(Mode::Ok),
            log: Mutex::new(Vec::new()),
            sequencers: vec![DiscoveredSequencer {
                sequencer_id,
                public_key: key.public_key().clone(),
            }],
            trusted: Mutex::new(Vec::new()),
            hold: AtomicBool::new(false),
            entered: Notify::new(),
            release: Notify::new(),
        })
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn sends(&self) -> Vec<(u64, bool)> {
        self.log.lock().expect("lock").clone()
    }

    /// Sequencer time passes every max sequencing time used so far, and the sequencer
    /// prunes their deduplication records (receipts stay in the stream).
    fn expire_seen(&self) {
        self.expired_through.store(
            self.latest_deadline.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        self.dedup.lock().expect("lock").clear();
    }

    /// The timestamp `message_id` was sequenced at, while its deduplication record lasts.
    fn dedup_ts(&self, message_id: &str) -> Option<i64> {
        self.dedup.lock().expect("lock").get(message_id).copied()
    }

    /// Message ids sequenced so far.
    fn sequenced_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .receipts
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    async fn send(&self, send: TopologySend<'_>) -> Result<SendOutcome, DomainManagerError> {
        let TopologySend {
            serial,
            message_id,
            max_sequencing_ts,
            signed,
        } = send;
        self.latest_deadline
            .fetch_max(max_sequencing_ts, Ordering::SeqCst);
        let mode = *self.mode.lock().expect("lock");
        if mode == Mode::Unreachable {
            return Err(DomainManagerError::SequencerUnavailable(
                "fake: unreachable".into(),
            ));
        }
        let tx = domain_topology::verify_signed(signed, &self.domain_id, &self.namespace)
            .expect("the sequencer accepts only valid namespace signatures");
        assert_eq!(tx.serial, serial, "message id and serial agree");
        assert!(
            message_id.starts_with(&domain_topology::message_id(serial)),
            "message id {message_id} names serial {serial}"
        );
        let (ts, deduplicated) = {
            let mut dedup = self.dedup.lock().expect("lock");
            match dedup.get(message_id) {
                Some(ts) => (*ts, true),
                None if max_sequencing_ts <= self.expired_through.load(Ordering::SeqCst) => {
                    return Ok(SendOutcome::DeadlinePassed);
                }
                None => {
                    let ts = self.clock.fetch_add(1_000_000, Ordering::SeqCst);
                    dedup.insert(message_id.to_owned(), ts);
                    let earlier = self
                        .receipts
                        .lock()
                        .expect("lock")
                        .insert(message_id.to_owned(), ts);
                    assert!(earlier.is_none(), "{message_id} sequenced twice");
                    (ts, false)
                }
            }
        };
        self.log.lock().expect("lock").push((serial, deduplicated));
        // Sequenced; the answer is held back.
        if self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        if mode == Mode::LoseAnswer {
            return Err(DomainManagerError::SequencerUnavailable(
                "fake: answer lost".into(),
            ));
        }
        Ok(SendOutcome::Sequenced(Sequenced {
            sequencing_ts: ts,
            deduplicated,
        }))
    }
}

impl SequencerGateway for FakeSequencer {
    fn send_topology<'a>(
        &'a self,
        send: TopologySend<'a>,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<SendOutcome, DomainManagerError>> {
        Box::pin(self.send(send))
    }

    fn find_receipt<'a>(
        &'a self,
        message_id: &'a str,
        _sequenced_after: i64,
        max_sequencing_ts: i64,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<Option<i64>, DomainManagerError>> {
        assert!(
            max_sequencing_ts <= self.expired_through.load(Ordering::SeqCst),
            "asked about {message_id} before its max sequencing time passed"
        );
        let found = self.receipts.lock().expect("lock").get(message_id).copied();
        Box::pin(async move { Ok(found) })
    }

    fn trust_sequencer_key(&self, key: &PublicKey) {
        let sends = self.log.lock().expect("lock").len();
        self.trusted
            .lock()
            .expect("lock")
            .push((key.clone(), sends));
    }

    fn discover_sequencers(
        &self,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<Vec<DiscoveredSequencer>, DomainManagerError>> {
        let result = if *self.mode.lock().expect("lock") == Mode::Unreachable {
            Err(DomainManagerError::SequencerUnavailable(
                "fake: unreachable".into(),
            ))
        } else {
            Ok(self.sequencers.clone())
        };
        Box::pin(async move { result })
    }

    fn list_instances(
        &self,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<InstanceList, DomainManagerError>> {
        Box::pin(async { Ok(InstanceList::default()) })
    }
}

struct Setup {
    db: DatabaseConfig,
    domain_id: DomainId,
    key: Arc<SigningKeyPair>,
    fake: Arc<FakeSequencer>,
    mediators: Vec<MemberId>,
    parameters: DomainParameters,
}

impl Setup {
    async fn new() -> Self {
        let db = fresh_db().await;
        let (domain_id, key) = domain();
        let fake = FakeSequencer::new(&domain_id, &key);
        Self {
            db,
            domain_id,
            key,
            fake,
            mediators: vec![
                member(MemberRole::Mediator, "mediator1").0,
                member(MemberRole::Mediator, "mediator2").0,
            ],
            parameters: DomainParameters {
                topology_change_delay: Duration::from_millis(100),
                ..DomainParameters::default()
            },
        }
    }

    fn core(&self, replica: &Replica) -> Arc<Core> {
        Core::new(
            self.domain_id.clone(),
            self.key.clone(),
            pool(&self.db),
            replica.handle.clone(),
            self.fake.clone(),
            settings(self.mediators.clone(), self.parameters),
        )
    }

    /// A fresh setup with replica `dm-a` active; returns its fence too.
    async fn with_active() -> (Self, Replica, Fence) {
        let s = Self::new().await;
        let a = start_keeper(&s.db, "dm-a");
        let fence = wait_active(&a).await;
        (s, a, fence)
    }

    /// A pooled connection to the test database.
    async fn client(&self) -> deadpool_postgres::Object {
        pool(&self.db).get().await.expect("client")
    }

    /// A fresh setup with replica `dm-a` active and its core bootstrapped.
    async fn bootstrapped() -> (Self, Replica, Arc<Core>) {
        let s = Self::new().await;
        let a = start_keeper(&s.db, "dm-a");
        wait_active(&a).await;
        let core = s.core(&a);
        core.activate(deadline()).await.expect("bootstrap");
        (s, a, core)
    }

    /// Inserts a pending `Replace` of `mapping` under `fence`, signed by the namespace key,
    /// on a connection of its own.
    async fn insert(
        &self,
        fence: &Fence,
        mapping: Mapping,
    ) -> Result<store::TopologyRecord, StoreError> {
        let mut client = self.client().await;
        store::insert_pending(
            &mut client,
            fence,
            &self.domain_id,
            &self.key,
            Operation::Replace,
            mapping,
            MAX_SEQUENCING_TS,
        )
        .await
    }

    async fn rows(&self) -> Vec<store::TopologyRecord> {
        let client = pool(&self.db).get().await.expect("client");
        store::load(&**client, &self.domain_id, store::Rows::All)
            .await
            .expect("load")
    }
}

/// The default domain parameters as a topology mapping.
fn default_parameters() -> Mapping {
    Mapping::Parameters(DomainParameters::default())
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// The core settings of every test replica, with the given genesis topology.
fn settings(
    genesis_mediators: Vec<MemberId>,
    genesis_parameters: DomainParameters,
) -> CoreSettings {
    CoreSettings {
        send_deadline: Duration::from_secs(5),
        max_sequencing_window: Duration::from_secs(60),
        genesis_mediators,
        genesis_parameters,
        lease_name: LEASE.into(),
    }
}

/// `core.set_participant_state` without a key, with the default [`deadline`].
async fn set_state(
    core: &Core,
    participant: &MemberId,
    permission: Permission,
    trust_level: TrustLevel,
) -> Result<WriteOutcome, DomainManagerError> {
    core.set_participant_state(participant, permission, trust_level, None, deadline())
        .await
}

/// Asserts that a write was refused with DM_NOT_ACTIVE naming `holder` and its address.
fn assert_not_active(result: Result<WriteOutcome, DomainManagerError>, holder: &str) {
    match result {
        Err(DomainManagerError::NotActive {
            holder: named,
            address,
        }) => {
            assert_eq!(named.as_deref(), Some(holder));
            assert_eq!(
                address,
                Some(format!("http://{holder}.example:4402")),
                "address of {holder}"
            );
        }
        other => panic!("expected DM_NOT_ACTIVE naming {holder}, got {other:?}"),
    }
}

#[tokio::test]
async fn serials_are_allocated_in_order_and_rows_go_from_pending_to_sequenced() {
    let (s, a, fence) = Setup::with_active().await;
    let mut client = s.client().await;
    let (participant, _) = member(MemberRole::Participant, "alice");

    let participant_row = Mapping::Participant {
        participant: participant.clone(),
        permission: Permission::Submission,
        trust_level: TrustLevel::Ordinary,
        public_key: None,
    };
    let mut inserted = Vec::new();
    for (n, mapping) in [participant_row, default_parameters()]
        .into_iter()
        .enumerate()
    {
        let record = s.insert(&fence, mapping).await;
        inserted.push(record.unwrap_or_else(|e| panic!("insert {}: {e:?}", n + 1)));
    }
    let serials: Vec<u64> = inserted.iter().map(|r| r.serial()).collect();
    assert_eq!(serials, [1, 2]);
    let first = &inserted[0];
    // What is stored verifies under the namespace key.
    let verified = domain_topology::verify_signed(&first.signed, &s.domain_id, s.key.public_key())
        .expect("signed by the namespace key");
    assert_eq!(verified, first.tx);

    let pending = store::load(&**client, &s.domain_id, store::Rows::Pending)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|r| r.written_epoch == fence.epoch));

    let timing = store::mark_sequenced(&mut client, &fence, 1, 1_000, 1_250)
        .await
        .expect("mark");
    assert_eq!(timing, (1_000, 1_250));
    // Marking again keeps the first timing.
    let again = store::mark_sequenced(&mut client, &fence, 1, 9_000, 9_250)
        .await
        .expect("mark again");
    assert_eq!(again, (1_000, 1_250));

    let rows = s.rows().await;
    assert_eq!(
        rows.iter().map(|r| r.state).collect::<Vec<_>>(),
        vec![
            RowState::Sequenced {
                sequenced_ts: 1_000,
                effective_ts: 1_250
            },
            RowState::Pending
        ]
    );
    let latest = store::latest_sequenced_for_key(
        &**client,
        &s.domain_id,
        &format!("participant/{participant}"),
    )
    .await
    .expect("latest")
    .expect("present");
    assert_eq!(latest.serial(), 1);
    assert!(
        store::latest_sequenced_for_key(&**client, &s.domain_id, "parameters")
            .await
            .expect("latest")
            .is_none(),
        "pending rows are not reported"
    );
    a.stop.cancel();
}

#[tokio::test]
async fn a_stale_fence_gets_no_write_accepted() {
    let (s, a, stale) = Setup::with_active().await;
    // A dies without releasing (crash / pause); B takes over once the lease expires.
    a.task.abort();
    let b = start_keeper(&s.db, "dm-b");
    let fresh = wait_active(&b).await;
    assert!(fresh.epoch > stale.epoch);

    let mut client = s.client().await;
    let inserted = s
        .insert(&fresh, default_parameters())
        .await
        .expect("the new active writes");

    let rejected = s
        .insert(&stale, default_parameters())
        .await
        .expect_err("stale insert");
    assert!(
        matches!(&rejected, StoreError::Lease(e) if e.is_fenced()),
        "{rejected:?}"
    );
    let rejected = store::mark_sequenced(&mut client, &stale, inserted.serial(), 5, 6)
        .await
        .expect_err("stale update");
    assert!(matches!(&rejected, StoreError::Lease(e) if e.is_fenced()));
    let rejected = store::ensure_domain(&mut client, &stale, &s.domain_id)
        .await
        .expect_err("stale domain row");
    assert!(matches!(&rejected, StoreError::Lease(e) if e.is_fenced()));
    let as_status: DomainManagerError = rejected.into();
    assert_eq!(as_status.code(), "DM_NOT_ACTIVE");

    let stale_rows: i64 = client
        .query_one(
            "SELECT count(*) FROM dm_topology WHERE written_epoch = $1",
            &[&stale.epoch],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stale_rows, 0, "no row carries the stale epoch");
    let domain_rows: i64 = client
        .query_one("SELECT count(*) FROM dm_domain", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(domain_rows, 0);
    let rows = s.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, RowState::Pending);
    assert_eq!(rows[0].written_epoch, fresh.epoch);
    b.stop.cancel();
}

#[tokio::test]
async fn bootstrap_is_idempotent_across_restarts_and_takeovers() {
    let (s, a, core) = Setup::bootstrapped().await;

    let rows = s.rows().await;
    let kinds: Vec<_> = rows.iter().map(|r| r.tx.mapping.kind()).collect();
    assert_eq!(
        kinds,
        vec!["sequencer", "mediator", "mediator", "domain_parameters"]
    );
    assert!(rows.iter().all(|r| r.sequenced().is_some()));
    assert_eq!(
        rows.iter().map(|r| r.serial()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let sends = s.fake.sends().len();
    // The gateway trusts the key it registers before the registration is sent.
    let key = s.fake.sequencers[0].public_key.clone();
    assert_eq!(
        *s.fake.trusted.lock().expect("lock"),
        vec![(key.clone(), 0)],
        "the discovered key is trusted before the first send"
    );

    // Same process again, and a restarted process (new core) on the same epoch.
    core.activate(deadline()).await.expect("again");
    s.core(&a).activate(deadline()).await.expect("restart");
    // Another replica after a takeover.
    a.stop.cancel();
    let _ = a.task.await;
    let b = start_keeper(&s.db, "dm-b");
    wait_active(&b).await;
    s.core(&b).activate(deadline()).await.expect("takeover");

    assert_eq!(s.rows().await, rows, "bootstrap wrote nothing new");
    assert_eq!(s.fake.sends().len(), sends, "nothing was sent again");
    // Every new core (restart, takeover) trusts the registered key from its store.
    let trusted = s.fake.trusted.lock().expect("lock").clone();
    assert_eq!(trusted.len(), 3, "{trusted:?}");
    assert!(trusted.iter().all(|(k, _)| *k == key), "{trusted:?}");
    b.stop.cancel();
}

#[tokio::test]
async fn a_database_of_another_domain_is_refused() {
    let (s, a, fence) = Setup::with_active().await;
    let mut client = s.client().await;
    store::ensure_domain(&mut client, &fence, &s.domain_id)
        .await
        .expect("first domain");
    store::ensure_domain(&mut client, &fence, &s.domain_id)
        .await
        .expect("idempotent");
    store::check_domain(&**client, &s.domain_id)
        .await
        .expect("own domain");

    let (other, other_key) = domain();
    let e = store::check_domain(&**client, &other)
        .await
        .expect_err("other domain");
    assert!(matches!(e, StoreError::DomainMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(&s.domain_id.to_string()));
    let e = store::ensure_domain(&mut client, &fence, &other)
        .await
        .expect_err("other domain");
    assert!(matches!(e, StoreError::DomainMismatch { .. }));

    // A replica configured for the other domain stops instead of writing.
    let core = Core::new(
        other.clone(),
        other_key,
        pool(&s.db),
        a.handle.clone(),
        s.fake.clone(),
        settings(Vec::new(), DomainParameters::default()),
    );
    assert!(core.activate(deadline()).await.is_err());
    assert!(core.fatal().is_cancelled());
    assert!(
        core.fatal_reason()
            .is_some_and(|r| r.contains("belongs to domain"))
    );
    assert!(s.rows().await.is_empty());
    a.stop.cancel();
}

#[tokio::test]
async fn writes_are_idempotent_and_failed_sends_are_resent_with_the_same_serial() {
    let (s, a, core) = Setup::bootstrapped().await;
    let (alice, _) = member(MemberRole::Participant, "alice");

    let set = set_state(&core, &alice, Permission::Submission, TrustLevel::Ordinary)
        .await
        .expect("set");
    assert!(set.changed);
    assert_eq!(set.serial, 5);
    let rows = s.rows().await;
    let RowState::Sequenced {
        sequenced_ts,
        effective_ts,
    } = rows[4].state
    else {
        panic!("not sequenced: {:?}", rows[4]);
    };
    // Genesis parameters (delay 100ms) are in force by then: ts + 100ms.
    assert_eq!(effective_ts, sequenced_ts + 100_000);
    assert_eq!(set.effective_ts, effective_ts);

    let again = set_state(&core, &alice, Permission::Submission, TrustLevel::Ordinary)
        .await
        .expect("same state");
    assert_eq!((again.changed, again.serial), (false, 5));
    assert_eq!(again.effective_ts, set.effective_ts);
    let sends = s.fake.sends().len();

    // The sequencer sequences the change but the answer is lost: the row stays pending.
    s.fake.set_mode(Mode::LoseAnswer);
    let e = set_state(&core, &alice, Permission::Observation, TrustLevel::Vip)
        .await
        .expect_err("answer lost");
    assert_eq!(e.code(), "DM_SEQUENCER_UNAVAILABLE");
    // Unreachable: the next write first resends serial 6, fails, allocates nothing.
    s.fake.set_mode(Mode::Unreachable);
    let e = core
        .retire_participant(&alice, Retirement::Disable, deadline())
        .await
        .expect_err("unreachable");
    assert_eq!(e.code(), "DM_SEQUENCER_UNAVAILABLE");
    let rows = s.rows().await;
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[5].state, RowState::Pending);

    // Back: the retry resends serial 6 with its message id; the sequencer deduplicates
    // and the original timestamp is recorded.
    s.fake.set_mode(Mode::Ok);
    core.retry_pending(deadline()).await.expect("resend");
    let log = s.fake.sends();
    assert_eq!(log[sends..], [(6, false), (6, true)]);
    let rows = s.rows().await;
    assert!(rows[5].sequenced().is_some());
    let sequenced_6 = rows[5].sequenced().expect("sequenced").sequenced_ts;
    assert_eq!(Some(sequenced_6), s.fake.dedup_ts("topology-6"));

    // Disable keeps the trust level; remove; unknown participants are refused.
    let disabled = core
        .retire_participant(&alice, Retirement::Disable, deadline())
        .await
        .expect("disable");
    assert!(disabled.changed);
    let latest = s.rows().await.pop().expect("row");
    assert_eq!(
        latest.tx.mapping,
        Mapping::Participant {
            participant: alice.clone(),
            permission: Permission::Disabled,
            trust_level: TrustLevel::Vip,
            public_key: None,
        }
    );
    let removed = core
        .retire_participant(&alice, Retirement::Remove, deadline())
        .await
        .expect("remove");
    assert!(removed.changed);
    assert!(
        !core
            .retire_participant(&alice, Retirement::Remove, deadline())
            .await
            .expect("idempotent")
            .changed
    );
    let (bob, _) = member(MemberRole::Participant, "bob");
    for (what, result) in [
        (
            "disable",
            core.retire_participant(&bob, Retirement::Disable, deadline())
                .await,
        ),
        (
            "remove",
            core.retire_participant(&bob, Retirement::Remove, deadline())
                .await,
        ),
    ] {
        assert_eq!(
            result.expect_err(what).code(),
            "DM_UNKNOWN_PARTICIPANT",
            "{what} an unknown participant"
        );
    }
    a.stop.cancel();
}

/// Issue 11 item 14: a resend refused because its max sequencing time passed (and the
/// deduplication record is gone) must not be sequenced again: if the original was
/// sequenced (answer lost), its timestamp from the own stream is recorded; if it never
/// reached the sequencer, it is sent again under a new message id, once.
#[tokio::test]
async fn item_14_resend_past_its_deadline_records_the_original_or_sends_anew() {
    let (s, a, core) = Setup::bootstrapped().await;
    let first = s.rows().await.len();
    let (alice, _) = member(MemberRole::Participant, "alice");
    let (bob, _) = member(MemberRole::Participant, "bob");
    let copies = |serial: usize| -> Vec<(String, i64)> {
        let exact = format!("topology-{serial}");
        let renamed = format!("topology-{serial}-");
        let mut ids: Vec<(String, i64)> = s
            .fake
            .receipts
            .lock()
            .expect("lock")
            .iter()
            .filter(|(id, _)| **id == exact || id.starts_with(&renamed))
            .map(|(id, ts)| (id.clone(), *ts))
            .collect();
        ids.sort();
        ids
    };

    // A write of `participant` fails with the sequencer in `mode` (`failure`); its deadline
    // passes and the record is pruned; the retry settles it (`settled`). Returns the row of
    // serial `serial` and the copies sequenced under that serial (exactly one).
    let settle_past_deadline =
        async |participant: &MemberId, mode: Mode, failure: &str, settled: &str, serial: usize| {
            s.fake.set_mode(mode);
            set_state(
                &core,
                participant,
                Permission::Submission,
                TrustLevel::Ordinary,
            )
            .await
            .expect_err(failure);
            s.fake.expire_seen();
            s.fake.set_mode(Mode::Ok);
            core.retry_pending(deadline()).await.expect(settled);
            let row = s.rows().await[serial - 1].clone();
            let sequenced = copies(serial);
            assert_eq!(sequenced.len(), 1, "serial {serial}: {sequenced:?}");
            (row, sequenced)
        };

    // Sequenced, answer lost; then its deadline passes and the record is pruned.
    let serial = first + 1;
    let (row, sequenced) =
        settle_past_deadline(&alice, Mode::LoseAnswer, "answer lost", "settled", serial).await;
    assert_eq!(sequenced[0].0, format!("topology-{serial}"));
    assert_eq!(
        row.sequenced().map(|t| t.sequenced_ts),
        Some(sequenced[0].1),
        "the domain manager records the timestamp members see"
    );

    // Never reached a sequencer before its deadline passed: sent again, once, under a
    // new message id, which the row records.
    let serial = first + 2;
    let (row, sequenced) =
        settle_past_deadline(&bob, Mode::Unreachable, "unreachable", "sent anew", serial).await;
    assert!(
        sequenced[0].0.starts_with(&format!("topology-{serial}-")),
        "{sequenced:?}"
    );
    assert_eq!(row.message_id.as_deref(), Some(sequenced[0].0.as_str()));
    assert_eq!(
        row.sequenced().map(|t| t.sequenced_ts),
        Some(sequenced[0].1)
    );
    assert!(s.fake.sequenced_ids().len() >= serial);
    a.stop.cancel();
}

#[tokio::test]
async fn a_passive_replica_names_the_active_one_and_a_lost_lease_stops_the_write() {
    let (s, a, core_a) = Setup::bootstrapped().await;

    let b = start_keeper(&s.db, "dm-b");
    wait_status(&b.handle, "passive, seeing dm-a", |st| {
        st.role == Role::Passive && st.holder.as_deref() == Some("dm-a")
    })
    .await;
    let core_b = s.core(&b);
    let (alice, _) = member(MemberRole::Participant, "alice");
    assert_not_active(
        set_state(
            &core_b,
            &alice,
            Permission::Submission,
            TrustLevel::Ordinary,
        )
        .await,
        "dm-a",
    );

    // A's transaction is sequenced but the answer has not arrived when A loses its
    // lease (paused past its ttl).
    s.fake.hold.store(true, Ordering::SeqCst);
    let write = tokio::spawn({
        let core_a = core_a.clone();
        let alice = alice.clone();
        async move {
            set_state(
                &core_a,
                &alice,
                Permission::Submission,
                TrustLevel::Ordinary,
            )
            .await
        }
    });
    s.fake.entered.notified().await;
    a.task.abort();
    wait_active(&b).await;
    s.fake.hold.store(false, Ordering::SeqCst);
    // A stops waiting for the answer as soon as its lease is gone.
    let e = tokio::time::timeout(Duration::from_secs(2), write)
        .await
        .expect("the write stops once the lease is lost")
        .expect("join")
        .expect_err("lease lost mid-way");
    assert_eq!(e.code(), "DM_NOT_ACTIVE", "{e:?}");
    // A's keeper is gone and never saw B; the answer still names B (from the lease row).
    assert_not_active(
        set_state(
            &core_a,
            &alice,
            Permission::Observation,
            TrustLevel::Ordinary,
        )
        .await,
        "dm-b",
    );
    let rows = s.rows().await;
    assert_eq!(rows.last().map(|r| r.state), Some(RowState::Pending));
    let sequenced_first = s.fake.dedup_ts("topology-5");

    // The new active resends it (deduplicated) before anything else.
    core_b.activate(deadline()).await.expect("takeover");
    let row = s.rows().await.pop().expect("row");
    let fence_b = b.handle.fence().expect("active");
    assert_eq!(row.serial(), 5);
    assert_eq!(row.written_epoch, fence_b.epoch);
    assert_eq!(row.sequenced().map(|t| t.sequenced_ts), sequenced_first);
    let again = set_state(
        &core_b,
        &alice,
        Permission::Submission,
        TrustLevel::Ordinary,
    )
    .await
    .expect("idempotent on the new active");
    assert_eq!((again.changed, again.serial), (false, 5));
    b.stop.cancel();
}
