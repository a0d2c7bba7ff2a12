//! The mediator: a domain member that collects confirmation responses for
//! confirmation requests and sends exactly one verdict per request (approve,
//! reject, or timeout) to every informee. Replicas are active-passive behind a
//! leader lease (domain-lease); the active one persists every processed batch
//! of events together with its position in the event stream, so a successor
//! resumes exactly where it stopped, and verdict message ids derive from the
//! request, so a resend is deduplicated by the sequencer. See docs/mediator.md.
//!
//! Layers: [`protocol`] is the pure state machine (events in, decisions out);
//! [`store`] persists and reloads its state; [`link`] holds the connection to
//! the sequencers; [`session`] is one active term (subscription, processing,
//! verdict sending, time proofs); this module wires them, follows the lease and
//! serves the admin and ops endpoints.

mod admin;
pub mod config;
mod error;
mod fault;
mod link;
mod metrics;
/// The confirmation state machine, pure and deterministic: public for the fuzz harness and
/// for tests that drive it without a database.
pub mod protocol;
mod session;
mod store;

pub use metrics::{DECISION_BUCKETS, DECISION_LATENCY};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use domain_backoff::{Backoff, BackoffConfig};
use domain_identity::{MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_lease::{LeaseHandle, RunningLease};
use domain_proto::mediator::admin::v1::mediator_admin_service_server::MediatorAdminServiceServer;
use domain_runtime::config::member_domain_and_key;
use domain_runtime::ops::Readiness;
use domain_runtime::service::Started;
use domain_sequencer_client::MemberIdentity;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::MediatorConfig;

use crate::link::SequencerLink;
use crate::metrics as m;
use crate::protocol::ProcessorSettings;

/// Already-bound listeners, so tests and binaries choose ports the same way.
pub use domain_runtime::service::AdminListeners as Listeners;

/// What the admin API and the readiness logic read about the running session.
#[derive(Debug)]
pub(crate) struct Shared {
    pub mediator_id: MemberId,
    /// A session (active term) has loaded its state and is processing.
    pub session_running: AtomicBool,
    pub pending: AtomicU64,
    pub last_counter: AtomicI64,
    /// Sequencing timestamp of the last processed event (0 before the first).
    pub last_ts: AtomicI64,
}

/// Everything a session needs; built once per process.
pub(crate) struct Context {
    pub settings: ProcessorSettings,
    pub pool: deadpool_postgres::Pool,
    pub link: Arc<SequencerLink>,
    pub lease: LeaseHandle,
    pub shared: Arc<Shared>,
    pub time_proof_interval: Duration,
    pub max_batch_events: usize,
    pub max_inflight_verdicts: usize,
    pub sequencer_timeout: Duration,
    pub request_retention: Duration,
    pub acknowledge_interval: Duration,
}

pub use domain_time::now_micros;

/// The mediator id of a key: `MED::<name>::<fingerprint>`.
pub fn mediator_id(name: &str, key: &SigningKeyPair) -> anyhow::Result<MemberId> {
    Ok(MemberId::new(
        MemberRole::Mediator,
        UniqueId::new(name, *key.fingerprint()).context("invalid `name`")?,
    ))
}

/// Runs one mediator replica until `shutdown` is cancelled.
pub async fn run(config: MediatorConfig, started: Started<Listeners>) -> anyhow::Result<()> {
    crate::metrics::describe();
    fault::init();
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let (domain_id, key) =
        member_domain_and_key(config.domain_id.as_ref(), &config.signing_key_file)?;
    let mediator_id = mediator_id(&config.name, &key)?;
    tracing::info!(%domain_id, %mediator_id, database = %config.database.url.redacted(), "starting mediator");

    let pool = domain_storage::open(&config.database, &store::MIGRATOR).await?;
    {
        let client = pool.get().await.context("cannot connect to the database")?;
        store::check_owner(&client, &mediator_id.to_string(), &domain_id.to_string())
            .await
            .context("refusing the database")?;
    }
    let running_lease = RunningLease::start(
        &config.database,
        "mediator-lease",
        &config.lease,
        &config.advertised_admin_address,
    )?;
    let lease = running_lease.handle();

    let tls = domain_runtime::tls::sequencer_client_tls(config.sequencer_tls.as_ref())?;
    let link = Arc::new(SequencerLink::new(
        config.sequencers.clone(),
        tls,
        MemberIdentity {
            id: mediator_id.clone(),
            key: key.clone(),
        },
        domain_id.clone(),
        config.sequencer_timeout,
    ));
    let shared = Arc::new(Shared {
        mediator_id: mediator_id.clone(),
        session_running: AtomicBool::new(false),
        pending: AtomicU64::new(0),
        last_counter: AtomicI64::new(-1),
        last_ts: AtomicI64::new(0),
    });
    let ctx = Arc::new(Context {
        settings: ProcessorSettings {
            mediator_id: mediator_id.clone(),
            domain_id: domain_id.clone(),
            key: key.clone(),
            verdict_ttl: config.verdict_ttl,
            namespace_key: None,
        },
        pool: pool.clone(),
        link,
        lease: lease.clone(),
        shared: shared.clone(),
        time_proof_interval: config.time_proof_interval,
        max_batch_events: config.max_batch_events,
        max_inflight_verdicts: config.max_inflight_verdicts,
        sequencer_timeout: config.sequencer_timeout,
        request_retention: config.request_retention,
        acknowledge_interval: config.acknowledge_interval,
    });

    // Readiness: active (lease held), state loaded and subscribed.
    let readiness = Readiness::new();
    let max_msg = config.admin_api.max_message_size;
    let (health, health_server) = domain_runtime::grpc::health_service(max_msg).await;
    let _follow = health.follow(&readiness);
    let admin_api = MediatorAdminServiceServer::new(admin::MediatorAdmin {
        shared: shared.clone(),
        lease: lease.clone(),
        pool: pool.clone(),
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let admin = domain_runtime::grpc::service_router(&config.admin_api, health_server)?
        .add_service(admin_api);
    let (servers, shutdown) = started.serve_admin(&config.admin_api, admin, &readiness);

    let work_stop = CancellationToken::new();
    // Connect to the sequencers while still passive, so a takeover finds the client
    // connected, authenticated and health-checked (a passive replica runs no subscription).
    tokio::spawn(warm_up(ctx.clone(), work_stop.clone()));
    let supervisor = tokio::spawn(supervise(ctx, readiness.clone(), work_stop.clone()));

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping processing, then releasing the lease");
    readiness.set_ready(false);
    work_stop.cancel();
    let grace = config.shutdown_grace;
    if tokio::time::timeout(grace, supervisor).await.is_err() {
        tracing::warn!("processing did not stop within the shutdown grace");
    }
    // Release only after processing stopped, so the successor starts from our last commit.
    running_lease.release().await;
    let drained = servers.stop(grace).await;
    if drained.is_err() {
        anyhow::bail!("shutdown grace period of {grace:?} exceeded");
    }
    tracing::info!("mediator stopped");
    Ok(())
}

/// Connects the shared sequencer client, retrying until it works or `stop`.
async fn warm_up(ctx: Arc<Context>, stop: CancellationToken) {
    let mut backoff = Backoff::new(BackoffConfig::new(
        Duration::from_millis(100),
        Duration::from_secs(5),
    ));
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = ctx.link.get() => c,
        };
        match connected {
            Ok(_) => return,
            Err(error) => tracing::warn!(%error, "cannot connect to the sequencers yet; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Follows the lease: while active, runs a session; when the lease is lost,
/// stops it at once; when it fails, starts a new one from the database.
async fn supervise(ctx: Arc<Context>, readiness: Readiness, stop: CancellationToken) {
    let mut changes = ctx.lease.subscribe();
    ::metrics::gauge!(m::ACTIVE).set(0.0);
    loop {
        let fence = loop {
            if stop.is_cancelled() {
                return;
            }
            if let Some(fence) = ctx.lease.fence() {
                break fence;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        let acquired = Instant::now();
        tracing::info!(epoch = fence.epoch, "lease acquired: activating");
        ::metrics::counter!(m::ACTIVATIONS).increment(1);
        let session_stop = stop.child_token();
        let mut session = tokio::spawn(session::run(
            ctx.clone(),
            fence.clone(),
            session_stop.clone(),
            readiness.clone(),
            acquired,
        ));
        let result = loop {
            tokio::select! {
                r = &mut session => break Some(r),
                _ = stop.cancelled() => break None,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if ctx.lease.fence().as_ref() != Some(&fence) {
                tracing::warn!(
                    epoch = fence.epoch,
                    "lease lost: stopping the subscription and verdict sending"
                );
                ::metrics::counter!(m::SESSION_FAILURES, "reason" => "lease_lost").increment(1);
                break None;
            }
        };
        session_stop.cancel();
        readiness.set_ready(false);
        ::metrics::gauge!(m::ACTIVE).set(0.0);
        match result {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(error))) => {
                tracing::error!(epoch = fence.epoch, error = %error, "processing session failed; restarting from the database");
                ::metrics::counter!(m::SESSION_FAILURES, "reason" => error.label()).increment(1);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Some(Err(join)) => {
                tracing::error!(error = %join, "processing session panicked; restarting from the database");
                ::metrics::counter!(m::SESSION_FAILURES, "reason" => "invariant").increment(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None => {
                if tokio::time::timeout(Duration::from_secs(2), &mut session)
                    .await
                    .is_err()
                {
                    session.abort();
                }
            }
        }
        // Anything the session published is stale now (set again in case the
        // session flipped readiness while being stopped).
        readiness.set_ready(false);
        ctx.shared.session_running.store(false, Ordering::SeqCst);
    }
}
