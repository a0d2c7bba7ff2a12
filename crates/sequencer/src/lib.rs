//! The sequencer: active-active, totally ordered, durable, signed multicast
//! over one shared PostgreSQL. Owns the `sequencer` binary's logic; see
//! docs/architecture.md for the ordering protocol.

mod admin;
pub mod config;
mod error;
mod event_auth;
mod history_guard;
mod members;
mod metrics;
mod overload;
mod pruning;
mod reader;
mod service;
mod store;
mod subscription;
mod timestamp;
mod topology;
mod writer;

#[cfg(test)]
mod db_tests;

/// The parsers of peer input, public so the fuzz harness (crates/domain-fuzz) drives exactly
/// the code the service runs on every `Send` and topology event.
pub mod untrusted {
    pub use crate::service::{accepted_trace_context, check_submission_shape, decode_send};
    pub use crate::topology::{recorded_participant_key, validate_submission};
}

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{MemberId, MemberRole, UniqueId};
use domain_proto::sequencer::admin::v1::sequencer_admin_service_server::SequencerAdminServiceServer;
use domain_proto::sequencer::v1::sequencer_service_server::SequencerServiceServer;
use domain_runtime::config::member_domain_and_key;
use domain_runtime::ops::Readiness;
use domain_runtime::service::Servers;
use domain_runtime::service::Started;
use domain_runtime::shutdown::Ticks;
use domain_time::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::SequencerConfig;

use crate::members::Members;
use crate::reader::SharedReader;
use crate::service::{SequencerApi, SequencerCore, ServiceSettings};
use crate::store::FaultHooks;
use crate::writer::Writer;

/// Embedded migrations of the sequencer's database (`migrations/sequencer/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sequencer");

/// Already-bound listeners, so tests and binaries choose ports the same way.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    pub ops: TcpListener,
}

/// Test-only faults, read from the environment when the `fault-injection`
/// feature is compiled in (`SEQUENCER_FAULT_DELAY_BEFORE_COMMIT_MS`,
/// `SEQUENCER_FAULT_DELAY_AFTER_WATERMARK_MS`, `SEQUENCER_FAULT_CLOCK_OFFSET_MS`).
fn fault_hooks() -> FaultHooks {
    #[cfg(feature = "fault-injection")]
    {
        // Each hook is a number in the environment; one that is set is logged loudly.
        fn env_number<T: std::str::FromStr>(name: &str, what: &str) -> Option<T> {
            let value = std::env::var(name).ok()?.parse::<T>().ok()?;
            tracing::warn!(hook = name, "fault injection active: {what}");
            Some(value)
        }
        let delay = env_number(
            "SEQUENCER_FAULT_DELAY_BEFORE_COMMIT_MS",
            "delaying every batch before commit",
        )
        .map(Duration::from_millis);
        let after_watermark = env_number(
            "SEQUENCER_FAULT_DELAY_AFTER_WATERMARK_MS",
            "delaying every batch after its watermark update",
        )
        .map(Duration::from_millis);
        if let Some(ms) =
            env_number::<i64>("SEQUENCER_FAULT_CLOCK_OFFSET_MS", "shifted sequencer clock")
        {
            timestamp::set_clock_offset(Duration::from_millis(ms.unsigned_abs()), ms > 0);
        }
        FaultHooks {
            delay_before_commit: delay,
            delay_after_watermark: after_watermark,
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    FaultHooks::default()
}

/// Checks the limits of both gRPC listeners; the error names the key, e.g.
/// ``invalid `public-api.max-connections`: 0 is out of range: must be 1 to 100000``.
pub fn validate_listeners(config: &SequencerConfig) -> Result<(), String> {
    for (section, api) in [
        ("public-api", &config.public_api),
        ("admin-api", &config.admin_api),
    ] {
        api.validate()
            .map_err(|(key, reason)| format!("invalid `{section}.{key}`: {reason}"))?;
    }
    Ok(())
}

/// Runs one sequencer instance until `shutdown` is cancelled.
pub async fn run(config: SequencerConfig, started: Started<Listeners>) -> anyhow::Result<()> {
    crate::metrics::describe();
    config.pruning.validate()?;
    config.reader.validate()?;
    config.validate_limits()?;
    if let Some(reason) = config.admin_api.admin_exposure_problem(true) {
        anyhow::bail!("invalid `admin-api`: {reason}");
    }
    validate_listeners(&config).map_err(anyhow::Error::msg)?;
    let (domain_id, key) =
        member_domain_and_key(config.domain_id.as_ref(), &config.signing_key_file)?;
    let sequencer_id = MemberId::new(
        MemberRole::Sequencer,
        UniqueId::new(config.name.clone(), *key.fingerprint()).context("invalid `name`")?,
    );
    tracing::info!(%domain_id, %sequencer_id, database = %config.database.url.redacted(), "starting sequencer");

    let pool = domain_storage::open(&config.database, &MIGRATOR).await?;

    let tasks = TaskTracker::new();
    let internal = started.shutdown.child_token();
    let members = Members::new(pool.clone());
    members.reload().await.context("cannot load members")?;
    let topology = topology::TopologyCache::new();
    {
        let client = pool.get().await.context("cannot load topology")?;
        topology
            .reload(&**client, &domain_id.to_string())
            .await
            .context("cannot load topology")?;
    }
    let topology_wake = Arc::new(tokio::sync::Notify::new());

    let (_tx, rx, state_tx, writer_handle) = writer::channel(
        config.writer.queue_size,
        overload::QueueBudget::new(
            config.writer.max_queue_bytes,
            config.writer.max_member_queue_bytes,
        ),
    );
    let (peer_tx, peer_rx) = watch::channel(Timestamp::EPOCH);
    let last_db_success = Arc::new(AtomicI64::new(0));
    let history = history_guard::HistoryGuard::new();
    let writer = Writer {
        settings: writer::WriterSettings {
            modulus: config.ha.total_node_count,
            max_batch: config.writer.max_batch,
            max_batch_bytes: config.writer.max_batch_bytes,
            keepalive: config.ha.keepalive_interval,
            commit_timeout: config.writer.commit_timeout,
            batch_heartbeat: config.ha.offline_after / 4,
            address: config.advertised_address.clone(),
            faults: fault_hooks(),
            batch_signatures: config.writer.batch_signatures,
        },
        db: config.database.clone(),
        domain: domain_id.clone(),
        key: key.clone(),
        peer_event_watermark: peer_rx,
        last_db_success: last_db_success.clone(),
        history: history.clone(),
        committed: None,
    };
    let writer_shutdown = CancellationToken::new();
    let writer_task = tokio::spawn(writer.run(rx, state_tx, writer_shutdown.clone()));

    let reader = SharedReader::new(reader::FeedLimits {
        batches: config.reader.feed_buffer,
        bytes: config.reader.feed_bytes as u64,
    });
    let read_page = reader::ReadPage {
        rows: config.reader.page_size,
        // Validated to fit.
        bytes: i64::try_from(config.reader.page_bytes).unwrap_or(i64::MAX),
    };
    tasks.spawn(reader.clone().run(
        pool.clone(),
        config.reader.poll_interval,
        read_page,
        history.clone(),
        internal.clone(),
    ));

    let core = SequencerCore::new(
        ServiceSettings {
            sequencer_id: sequencer_id.clone(),
            public_key: key.public_key().clone(),
            max_request_size: config.max_request_size,
            nonce_ttl: config.auth.nonce_ttl,
            token_ttl: config.auth.token_ttl,
            default_max_sequencing: config.writer.default_max_sequencing,
            subscription_buffer: config.reader.subscription_buffer,
            subscription_buffer_bytes: config.reader.subscription_buffer_bytes,
            read_page,
            max_subscriptions_per_member: config.reader.max_subscriptions_per_member,
            open_participant_access: config.access_mode == config::AccessMode::Open,
            open_registrations_per_second: config.auth.open_registrations_per_second,
            max_clock_skew: config.ha.max_clock_skew,
            domain: domain_id.clone(),
        },
        pool.clone(),
        members.clone(),
        writer_handle.clone(),
        reader.clone(),
        internal.clone(),
        topology.clone(),
    );

    tasks.spawn(listen_loop(
        config.database.clone(),
        config.ha.clone(),
        writer_handle.watch_state(),
        peer_tx,
        reader.clone(),
        core.clone(),
        topology_wake.clone(),
        internal.clone(),
    ));
    tasks.spawn(topology::run_applier(
        pool.clone(),
        topology.clone(),
        domain_id.clone(),
        topology_wake,
        internal.clone(),
    ));
    tasks.spawn(offline_checker(
        pool.clone(),
        writer_handle.watch_state(),
        config.ha.clone(),
        internal.clone(),
    ));
    tasks.spawn(checkpointer(
        pool.clone(),
        reader.clone(),
        config.reader.clone(),
        internal.clone(),
    ));
    if !config.pruning.interval.is_zero() {
        tasks.spawn(pruner(
            pool.clone(),
            config.pruning.clone(),
            internal.clone(),
        ));
    }
    tasks.spawn(pruning_gauges(
        pool.clone(),
        config.pruning.retention,
        internal.clone(),
    ));
    tasks.spawn(gauges(pool.clone(), internal.clone()));

    // Readiness: online writer and a database that answered recently.
    let readiness = Readiness::new();
    tasks.spawn(health_loop(
        writer_handle.watch_state(),
        last_db_success.clone(),
        config.ha.db_health_grace,
        readiness.clone(),
        internal.clone(),
    ));
    // The domain manager member is implied by the domain id: its key is the
    // namespace key, so it can authenticate before any topology exists.
    let mut bootstrap = vec![domain_topology::domain_manager_member(&domain_id)];
    bootstrap.extend(config.bootstrap_members.iter().cloned());
    tasks.spawn(bootstrap_members(
        writer_handle.clone(),
        members.clone(),
        bootstrap,
        internal.clone(),
    ));

    let max_msg = config.public_api.max_message_size;
    let (health, health_server) = domain_runtime::grpc::health_service(max_msg).await;
    let _follow = health.follow(&readiness);
    let api = overload::LoadShed::new(
        SequencerServiceServer::new(SequencerApi(core.clone()))
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg),
        config.overload.max_concurrent_requests,
        config.overload.max_concurrent_requests_per_caller,
    );
    let public = domain_runtime::grpc::service_router(&config.public_api, health_server.clone())?
        .add_service(api);
    let admin_api = SequencerAdminServiceServer::new(admin::SequencerAdmin {
        core: core.clone(),
        pruning: config.pruning.clone(),
    });
    let admin = domain_runtime::grpc::service_router(&config.admin_api, health_server)?
        .add_service(admin_api);
    let mut servers = Servers::new();
    servers.grpc(
        "public",
        &config.public_api,
        public,
        started.listeners.public,
    );
    servers.grpc("admin", &config.admin_api, admin, started.listeners.admin);
    servers.ops(started.listeners.ops, started.metrics, &readiness);

    let history_lost = tokio::select! {
        () = started.shutdown.cancelled() => None,
        reason = history.lost() => Some(reason),
    };
    tracing::info!("shutting down: draining subscriptions and in-flight sends");
    readiness.set_ready(false);
    // Subscriptions end with UNAVAILABLE so clients resume elsewhere; then the
    // servers drain in-flight calls, then the writer leaves the online set.
    internal.cancel();
    let grace = config.shutdown_grace;
    let drained = servers.stop(grace).await;
    writer_shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    let _ = domain_runtime::shutdown::drain_tracker(Duration::from_secs(2), &tasks).await;
    if let Some(reason) = history_lost {
        // Exit non-zero: the orchestrator restarts the instance, which then serves what the
        // database holds (see history_guard).
        anyhow::bail!("stopped because the database lost acknowledged history: {reason}");
    }
    if drained.is_err() {
        anyhow::bail!("shutdown grace period of {grace:?} exceeded");
    }
    tracing::info!("sequencer stopped");
    Ok(())
}

/// LISTENs for watermark and member notifications; reconnects when the
/// connection drops (readers fall back to polling meanwhile).
#[allow(clippy::too_many_arguments)] // one long-lived task; its inputs are the shared handles
async fn listen_loop(
    db: domain_storage::DatabaseConfig,
    ha: config::HaConfig,
    state: watch::Receiver<writer::WriterState>,
    peer_tx: watch::Sender<Timestamp>,
    reader: Arc<SharedReader>,
    core: Arc<SequencerCore>,
    topology_wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let conn = domain_storage::listen_connection(
            &db,
            &[
                store::WATERMARK_CHANNEL,
                store::MEMBERS_CHANNEL,
                store::TOPOLOGY_CHANNEL,
            ],
        )
        .await;
        let (_client, mut rx, task) = match conn {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "cannot open listen connection");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        // Anything missed while disconnected is picked up by this wake-up.
        reader.resync();
        let _ = core.members.reload().await;
        loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => { task.abort(); return; }
                n = rx.recv() => n,
            };
            let Some(n) = n else { break };
            if n.channel() == store::WATERMARK_CHANNEL {
                let notice = match parse_watermark_notification(
                    n.payload(),
                    ha.total_node_count,
                    timestamp::clock(),
                    ha.max_clock_skew,
                ) {
                    Ok(a) => a,
                    Err(reason) => {
                        ::metrics::counter!(crate::metrics::PEER_WATERMARKS_IGNORED, "reason" => reason.label())
                            .increment(1);
                        tracing::warn!(
                            payload = %n.payload().chars().take(80).collect::<String>(),
                            %reason,
                            "ignored a watermark notification"
                        );
                        // Still a reason to look: the read takes the safe watermark from
                        // the database, whatever the payload said.
                        reader.resync();
                        continue;
                    }
                };
                reader.announce(notice.for_reader());
                if let WatermarkNotice::Advanced(PeerWatermark {
                    index: idx,
                    watermark: wm,
                    is_event: true,
                }) = notice
                    && state.borrow().index != Some(idx)
                {
                    peer_tx.send_if_modified(|cur| {
                        if wm > *cur {
                            *cur = wm;
                            true
                        } else {
                            false
                        }
                    });
                }
            } else if n.channel() == store::TOPOLOGY_CHANNEL {
                topology_wake.notify_one();
            } else if n.channel() == store::MEMBERS_CHANNEL {
                if let Some(member) = n.payload().strip_prefix("disabled:") {
                    core.forget_tokens(member).await;
                }
                if let Err(error) = core.members.reload().await {
                    tracing::warn!(%error, "cannot reload members");
                }
            }
        }
        task.abort();
        tracing::warn!("listen connection lost; reconnecting");
    }
}

/// Why a `seq_watermark` notification was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IgnoredWatermark {
    /// Not one of the three payload shapes of `parse_watermark_notification`, with an
    /// index below the modulus and a positive watermark (anyone with access to the
    /// database can `NOTIFY`).
    Malformed,
    /// Further ahead of this instance's clock than `ha.max-clock-skew`: following it would
    /// drag every later timestamp forward for good.
    AheadOfClock,
}

impl IgnoredWatermark {
    fn label(self) -> &'static str {
        match self {
            IgnoredWatermark::Malformed => "malformed",
            IgnoredWatermark::AheadOfClock => "ahead_of_clock",
        }
    }
}

impl std::fmt::Display for IgnoredWatermark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IgnoredWatermark::Malformed => "malformed payload",
            IgnoredWatermark::AheadOfClock => {
                "watermark further ahead of this instance's clock than ha.max-clock-skew \
                 (a peer's clock is fast, or the notification is forged)"
            }
        })
    }
}

/// A peer's watermark announcement after a batch or heartbeat (`seq_watermark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerWatermark {
    index: i16,
    watermark: Timestamp,
    /// Sent after an event batch (not a heartbeat).
    is_event: bool,
}

/// A `seq_watermark` notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatermarkNotice {
    /// `<index>:<watermark>:<e|h>`: after a batch or heartbeat.
    Advanced(PeerWatermark),
    /// `<index>:<watermark>`: the instance came online at this watermark.
    Online { index: i16, watermark: Timestamp },
    /// `<index>:offline`: the instance went (or was marked) offline.
    Offline { index: i16 },
}

impl WatermarkNotice {
    /// What the shared reader takes from it.
    fn for_reader(self) -> reader::Announcement {
        match self {
            WatermarkNotice::Advanced(PeerWatermark {
                index, watermark, ..
            })
            | WatermarkNotice::Online { index, watermark } => {
                reader::Announcement::Watermark { index, watermark }
            }
            WatermarkNotice::Offline { index } => reader::Announcement::Offline { index },
        }
    }
}

/// Parses a `seq_watermark` payload.
///
/// Peers send `<index>:<watermark>:<e|h>` after a batch, `<index>:<watermark>` when they
/// come online and `<index>:offline` when they (or a peer on their behalf) go offline.
/// Anything else, and watermarks further ahead of `now` than `max_skew`, are refused.
fn parse_watermark_notification(
    payload: &str,
    modulus: u16,
    now: Timestamp,
    max_skew: Duration,
) -> Result<WatermarkNotice, IgnoredWatermark> {
    let mut parts = payload.split(':');
    let idx = parts.next().and_then(|s| s.parse::<i16>().ok());
    let Some(idx) = idx else {
        return Err(IgnoredWatermark::Malformed);
    };
    if idx < 0 || idx >= i16::try_from(modulus).unwrap_or(i16::MAX) {
        return Err(IgnoredWatermark::Malformed);
    }
    let second = parts.next();
    if second == Some("offline") {
        return match parts.next() {
            None => Ok(WatermarkNotice::Offline { index: idx }),
            Some(_) => Err(IgnoredWatermark::Malformed),
        };
    }
    let Some(wm) = second.and_then(|s| s.parse::<i64>().ok()) else {
        return Err(IgnoredWatermark::Malformed);
    };
    if wm <= 0 {
        return Err(IgnoredWatermark::Malformed);
    }
    let kind = match (parts.next(), parts.next()) {
        (Some("e"), None) => Some(true),
        (Some("h"), None) => Some(false),
        // go_online's announcement.
        (None, None) => None,
        _ => return Err(IgnoredWatermark::Malformed),
    };
    let watermark = Timestamp::from_micros(wm);
    if watermark > now + max_skew {
        return Err(IgnoredWatermark::AheadOfClock);
    }
    Ok(match kind {
        Some(is_event) => WatermarkNotice::Advanced(PeerWatermark {
            index: idx,
            watermark,
            is_event,
        }),
        None => WatermarkNotice::Online {
            index: idx,
            watermark,
        },
    })
}

async fn offline_checker(
    pool: deadpool_postgres::Pool,
    state: watch::Receiver<writer::WriterState>,
    ha: config::HaConfig,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticks::new(ha.online_check_interval, &shutdown);
    while ticks.next().await {
        // Only an online instance judges its peers: one that lost the database
        // would otherwise be the one lagging.
        // One borrow, released at once: taking a second read lock of the watch while
        // holding the first deadlocks as soon as the writer's `send_modify` queues
        // between them (std's RwLock lets a waiting writer go first), which froze a whole
        // instance (both runtime workers) in `sequencer_order` under load.
        let (index, online) = {
            let s = state.borrow();
            (s.index, s.online)
        };
        let Some(own) = index.filter(|_| online) else {
            continue;
        };
        let Ok(mut client) = pool.get().await else {
            continue;
        };
        match store::mark_lagging_offline(&mut client, own, ha.offline_after).await {
            Ok(marked) => {
                for idx in marked {
                    ::metrics::counter!(crate::metrics::INSTANCES_MARKED_OFFLINE).increment(1);
                    tracing::warn!(instance = idx, "marked stalled peer offline");
                }
            }
            Err(error) => tracing::warn!(%error, "offline check failed"),
        }
    }
}

async fn checkpointer(
    pool: deadpool_postgres::Pool,
    reader: Arc<SharedReader>,
    cfg: config::ReaderConfig,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticks::new(cfg.checkpoint_interval, &shutdown);
    // The first run probes every member: events sequenced before this process started were
    // never seen by its reader.
    let mut probed_all = false;
    while ticks.next().await {
        // Probing every registered member each round made the database's reads grow with
        // the number of members, idle ones included; members that received nothing since
        // the last round have no new events to count.
        let touched = reader.take_touched();
        let only: Option<Vec<i32>> =
            (probed_all && !touched.broadcast).then(|| touched.members.iter().copied().collect());
        if only.as_ref().is_some_and(Vec::is_empty) {
            continue;
        }
        let result = async {
            let mut client = pool.get().await?;
            let safe = store::safe_watermark(&**client).await?;
            store::write_checkpoints(
                &mut client,
                safe,
                cfg.checkpoint_every_events,
                only.as_deref(),
            )
            .await
        }
        .await;
        match result {
            Ok(Some(n)) => {
                probed_all = true;
                ::metrics::counter!(crate::metrics::CHECKPOINTS_WRITTEN).increment(n);
            }
            // Another instance is at it; these members stay for the next round.
            Ok(None) => reader.restore_touched(touched),
            Err(error) => {
                reader.restore_touched(touched);
                tracing::warn!(%error, "checkpoint write failed");
            }
        }
    }
}

async fn pruner(
    pool: deadpool_postgres::Pool,
    cfg: config::PruningConfig,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticks::after_first_period(cfg.interval, &shutdown);
    while ticks.next().await {
        let Ok(client) = pool.get().await else {
            continue;
        };
        // One instance prunes at a time; the others skip this round.
        let mut locked = match pruning::LockedClient::try_lock(client).await {
            Ok(Some(locked)) => locked,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "pruning lock failed");
                continue;
            }
        };
        let result =
            pruning::prune_round(locked.client(), cfg.retention, cfg.batch_size, false).await;
        locked.release().await;
        match result {
            Ok((view, outcome)) => {
                pruning::record(&outcome);
                if outcome.deleted.iter().any(|(_, n)| *n > 0) {
                    tracing::info!(
                        bound = outcome.bound.as_micros(),
                        previous = outcome.previous_bound.as_micros(),
                        holding_back = view.holding_back.as_deref().unwrap_or(""),
                        deleted = ?outcome.deleted,
                        "pruned"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "pruning failed"),
        }
    }
}

/// Pruning gauges on every instance (whichever instance prunes), every few seconds.
async fn pruning_gauges(
    pool: deadpool_postgres::Pool,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticks::new(Duration::from_secs(5), &shutdown);
    let mut holder = None;
    while ticks.next().await {
        let Ok(client) = pool.get().await else {
            continue;
        };
        let view = pruning::view(&**client, retention).await;
        let oldest = pruning::oldest_event(&**client).await;
        if let (Ok(view), Ok(oldest)) = (view, oldest) {
            pruning::publish(&view, oldest, &mut holder);
        }
        if let Ok(rows) = pruning::estimated_rows(&**client).await {
            for (table, n) in rows {
                ::metrics::gauge!(crate::metrics::STORED_ROWS, "table" => table).set(n);
            }
        }
    }
}

async fn gauges(pool: deadpool_postgres::Pool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = pool.status();
        let in_use = status.size.saturating_sub(status.available);
        ::metrics::gauge!(crate::metrics::DB_POOL, "state" => "in_use").set(in_use as f64);
        ::metrics::gauge!(crate::metrics::DB_POOL, "state" => "idle").set(status.available as f64);
        // Capacity has a metric of its own: dividing by a `state="max"` series of the same
        // metric never matches one-to-one (the `state` labels differ).
        ::metrics::gauge!(crate::metrics::DB_POOL_MAX).set(status.max_size as f64);
        let instances = match pool.get().await {
            Ok(client) => store::list_instances(&**client).await.ok(),
            Err(_) => None,
        };
        let Some(instances) = instances else {
            // Unknown while the database is unreachable: drop the lags rather than freeze
            // them (a frozen lag looks healthy). The writer reports itself offline.
            crate::metrics::set_watermark_lags(Vec::new());
            continue;
        };
        let online: Vec<_> = instances.iter().filter(|i| i.online).collect();
        ::metrics::gauge!(crate::metrics::INSTANCES_ONLINE).set(online.len() as f64);
        // Only online rows: an offline row's watermark is frozen, its lag grows without
        // bound, and the row stays behind after every restart (a new process takes a new
        // random index).
        crate::metrics::set_watermark_lags(
            online
                .iter()
                .map(|i| (i.index.to_string(), i.lag_micros as f64 / 1e6))
                .collect(),
        );
    }
}

async fn health_loop(
    state: watch::Receiver<writer::WriterState>,
    last_db_success: Arc<AtomicI64>,
    grace: Duration,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => { readiness.set_ready(false); return; }
            _ = tick.tick() => {}
        }
        let age = timestamp::clock().as_micros() - last_db_success.load(Ordering::Relaxed);
        let ready = state.borrow().online && age < grace.as_micros() as i64;
        if readiness.is_ready() != ready {
            tracing::info!(ready, "readiness changed");
            readiness.set_ready(ready);
        }
    }
}

async fn bootstrap_members(
    writer: writer::WriterHandle,
    members: Arc<Members>,
    list: Vec<MemberId>,
    shutdown: CancellationToken,
) {
    for member in list {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            // Bootstrap only creates members that do not exist yet. A member that exists
            // but is disabled (by topology or DisableMember) stays disabled: registering
            // it again would re-enable it on every restart. (RegisterMember on the admin API
            // remains the operator's explicit override.)
            if let Ok(Some(_)) = members.get(&member.to_string()).await {
                break;
            }
            let mut state = writer.watch_state();
            let _ = state.wait_for(|s| s.online).await;
            match writer.register(member.clone(), None).await {
                Ok(ts) => {
                    tracing::info!(%member, registered_ts = ts.as_micros(), "bootstrap member registered");
                    let _ = members.reload().await;
                    break;
                }
                Err(error) => {
                    tracing::warn!(%member, %error, "bootstrap registration failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod watermark_notification_tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    /// Batches and heartbeats as `Some((index, watermark, is_event))`, online and offline
    /// announcements as `None`.
    fn parse(p: &str) -> Result<Option<(i16, i64, bool)>, IgnoredWatermark> {
        parse_watermark_notification(p, 32, Timestamp::from_micros(NOW), Duration::from_secs(1))
            .map(|n| match n {
                WatermarkNotice::Advanced(a) => {
                    Some((a.index, a.watermark.as_micros(), a.is_event))
                }
                WatermarkNotice::Online { .. } | WatermarkNotice::Offline { .. } => None,
            })
    }

    #[test]
    fn accepts_what_peers_send() {
        assert_eq!(parse(&format!("3:{NOW}:e")), Ok(Some((3, NOW, true))));
        assert_eq!(
            parse(&format!("0:{}:h", NOW + 900_000)),
            Ok(Some((0, NOW + 900_000, false)))
        );
        // go_online and go_offline / the offline checker: legitimate, nothing to follow.
        assert_eq!(parse(&format!("16:{NOW}")), Ok(None));
        assert_eq!(parse("4:offline"), Ok(None));
        // The shared reader follows all four (as hints of when to read).
        let now = Timestamp::from_micros(NOW);
        let reader = |p: &str| {
            parse_watermark_notification(p, 32, now, Duration::from_secs(1)).map(|n| n.for_reader())
        };
        use reader::Announcement::*;
        for p in [
            format!("16:{NOW}"),
            format!("16:{NOW}:e"),
            format!("16:{NOW}:h"),
        ] {
            assert_eq!(
                reader(&p),
                Ok(Watermark {
                    index: 16,
                    watermark: now
                }),
                "{p}"
            );
        }
        assert_eq!(reader("4:offline"), Ok(Offline { index: 4 }));
    }

    #[test]
    fn refuses_forged_and_far_ahead() {
        use IgnoredWatermark::*;
        assert_eq!(parse("0:9223372036854775000:e"), Err(AheadOfClock));
        assert_eq!(
            parse(&format!("1:{}:e", NOW + 1_000_001)),
            Err(AheadOfClock)
        );
        for bad in [
            "",
            "x",
            "1:0",
            "1:2:z",
            "99:offline",
            "1:offline:e",
            "99:5:e",
            "-1:5:e",
            "1:-5:e",
            "1:0:e",
            "1:5:e:x",
        ] {
            assert_eq!(parse(bad), Err(Malformed), "{bad}");
        }
    }
}
