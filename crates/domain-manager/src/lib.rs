//! The domain manager: owns the domain namespace key and the topology store,
//! and sends signed topology transactions through the sequencer. Replicas are
//! active-passive behind a leader lease (domain-lease); see
//! docs/domain-manager.md for configuration, bootstrap order, error codes and
//! metrics.

mod admin;
pub mod config;
mod error;
mod fault;
mod gateway;
mod manager;
mod metrics;
mod status;
mod store;

#[cfg(test)]
mod db_tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{DomainId, IdError, KeyError, MemberId, SigningKeyPair, UniqueId};
use domain_lease::{LeaseHandle, Role, RunningLease};
use domain_proto::manager::admin::v1::domain_admin_service_server::DomainAdminServiceServer;
use domain_runtime::grpc::HealthHandle;
use domain_runtime::ops::Readiness;
use domain_runtime::service::Started;
use domain_runtime::shutdown::Ticks;
use domain_sequencer_client::MemberIdentity;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::DomainManagerConfig;

use crate::admin::{DomainAdmin, ProbeTarget};
use crate::config::ComponentKind;
use crate::gateway::GrpcGateway;
use crate::manager::{Core, CoreSettings};

/// Embedded migrations of the domain manager's database (`migrations/domain-manager/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/domain-manager");

/// gRPC service name whose health mirrors readiness (active and bootstrapped).
pub const ADMIN_SERVICE_NAME: &str =
    domain_proto::manager::admin::v1::domain_admin_service_server::SERVICE_NAME;

/// Already-bound listeners, so tests and binaries choose ports the same way.
pub use domain_runtime::service::AdminListeners as Listeners;

/// Why a namespace key could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("invalid domain name {name:?}: {error}")]
    DomainName { name: String, error: IdError },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The domain id of `domain_name` under `namespace_key`.
pub fn domain_id_for(
    domain_name: &str,
    namespace_key: &SigningKeyPair,
) -> Result<DomainId, IdError> {
    Ok(DomainId::new(UniqueId::new(
        domain_name,
        *namespace_key.fingerprint(),
    )?))
}

/// Creates the namespace key at `path` (mode 0600) unless it exists, then returns the
/// domain id and whether the key was created. Never overwrites a key.
pub fn init_namespace_key(
    path: &Path,
    domain_name: &str,
) -> Result<(DomainId, bool), KeyFileError> {
    UniqueId::validate_name(domain_name).map_err(|error| KeyFileError::DomainName {
        name: domain_name.to_owned(),
        error,
    })?;
    let (key, created) = if path.exists() {
        (SigningKeyPair::load_pem(path)?, false)
    } else {
        let key = SigningKeyPair::generate();
        match key.save_pem(path) {
            Ok(()) => (key, true),
            // Another `init` won the race: use its key.
            Err(KeyError::KeyFileExists { .. }) => (SigningKeyPair::load_pem(path)?, false),
            Err(e) => return Err(e.into()),
        }
    };
    let id = domain_id_for(domain_name, &key).map_err(|error| KeyFileError::DomainName {
        name: domain_name.to_owned(),
        error,
    })?;
    Ok((id, created))
}

/// The domain id of an existing namespace key file.
pub fn domain_id_of_key_file(path: &Path, domain_name: &str) -> Result<DomainId, KeyFileError> {
    UniqueId::validate_name(domain_name).map_err(|error| KeyFileError::DomainName {
        name: domain_name.to_owned(),
        error,
    })?;
    let key = SigningKeyPair::load_pem(path)?;
    domain_id_for(domain_name, &key).map_err(|error| KeyFileError::DomainName {
        name: domain_name.to_owned(),
        error,
    })
}

/// Runs one domain-manager replica until `shutdown` is cancelled (or an unrecoverable
/// error, such as a database belonging to another domain).
pub async fn run(
    mut config: DomainManagerConfig,
    started: Started<Listeners>,
) -> anyhow::Result<()> {
    crate::metrics::describe();
    fault::init();
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let key =
        domain_runtime::config::load_signing_key("namespace-key-file", &config.namespace_key_file)?;
    let domain_id = domain_id_for(&config.domain_name, &key).context("invalid `domain-name`")?;
    let member = domain_topology::domain_manager_member(&domain_id);
    let admin_addr = started.listeners.admin.local_addr()?;
    let advertised = if config.advertised_admin_address.is_empty() {
        let scheme = if config.admin_api.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{admin_addr}")
    } else {
        config.advertised_admin_address.clone()
    };
    tracing::info!(
        %domain_id,
        %member,
        advertised_admin_address = %advertised,
        database = %config.database.url,
        "starting domain manager"
    );

    // Database: migrations, commit mode, and refuse another domain's database.
    let pool = domain_storage::open(&config.database, &MIGRATOR).await?;
    {
        let client = pool
            .get()
            .await
            .context("cannot get a database connection")?;
        store::check_domain(&**client, &domain_id).await?;
    }
    let running_lease = RunningLease::start(
        &config.database,
        "domain-manager-lease",
        &config.lease,
        &advertised,
    )?;
    let lease = running_lease.handle();

    // Core and its sequencer gateway.
    let tls = domain_runtime::tls::sequencer_client_tls(config.sequencer_tls.as_ref())?;
    let gateway = Arc::new(GrpcGateway::new(
        config.sequencers.clone(),
        tls,
        MemberIdentity {
            id: member,
            key: key.clone(),
        },
        domain_id.clone(),
    ));
    let genesis_mediators = config
        .genesis
        .mediators
        .iter()
        .map(|m| MemberId::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .context("invalid `genesis.mediators`")?;
    let core = Core::new(
        domain_id.clone(),
        key,
        pool.clone(),
        lease.clone(),
        gateway,
        CoreSettings {
            send_deadline: config.send_deadline,
            max_sequencing_window: config.max_sequencing_window,
            genesis_mediators,
            genesis_parameters: config.genesis.parameters.into(),
            lease_name: config.lease.name.clone(),
        },
    );

    let tasks = TaskTracker::new();
    let internal = CancellationToken::new();
    let readiness = Readiness::new();
    let max_msg = config.admin_api.max_message_size;
    let (health, health_server) = domain_runtime::grpc::health_service(max_msg).await;
    tasks.spawn(follow_readiness(
        health,
        readiness.clone(),
        internal.clone(),
    ));
    tasks.spawn(activity_loop(
        core.clone(),
        readiness.clone(),
        config.retry_interval,
        internal.clone(),
    ));
    tasks.spawn(gauge_loop(core.clone(), internal.clone()));

    // Sequencer ops URLs are probed too, unless listed in `status-components` already.
    let listed = |url: &str| config.status_components.iter().any(|c| c.ops_url == url);
    let mut probes: Vec<ProbeTarget> = config
        .sequencers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.ops_url
                .as_ref()
                .filter(|url| !listed(url))
                .map(|url| ProbeTarget {
                    name: format!("sequencer-{i}"),
                    kind: ComponentKind::Sequencer,
                    ops_url: url.clone(),
                })
        })
        .collect();
    probes.extend(config.status_components.iter().map(|c| ProbeTarget {
        name: c.name.clone(),
        kind: c.kind,
        ops_url: c.ops_url.clone(),
    }));
    let admin_api = DomainAdminServiceServer::new(DomainAdmin {
        core: core.clone(),
        advertised_address: advertised,
        probes: Arc::new(probes),
        connection: config.connection.clone().map(Arc::new),
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let admin = domain_runtime::grpc::service_router(&config.admin_api, health_server)?
        .add_service(admin_api);
    let (servers, shutdown) = started.serve_admin(&config.admin_api, admin, &readiness);

    let fatal = tokio::select! {
        () = shutdown.cancelled() => None,
        () = core.fatal().cancelled() => core.fatal_reason(),
    };
    tracing::info!("shutting down: draining admin calls, then releasing the lease");
    readiness.set_ready(false);
    // Stop starting new work, let in-flight admin calls finish (each is bounded by
    // `send-deadline`), then release the lease so a standby takes over at once.
    internal.cancel();
    let grace = config.shutdown_grace;
    let drained = servers.stop(grace).await;
    let _ = domain_runtime::shutdown::drain_tracker(Duration::from_secs(2), &tasks).await;
    running_lease.release().await;
    if let Some(reason) = fatal {
        anyhow::bail!(reason);
    }
    if drained.is_err() {
        anyhow::bail!("shutdown grace period of {grace:?} exceeded");
    }
    tracing::info!("domain manager stopped");
    Ok(())
}

/// Mirrors readiness into gRPC health: service `""` and `domain.manager.admin.v1.DomainAdminService`.
async fn follow_readiness(health: HealthHandle, readiness: Readiness, shutdown: CancellationToken) {
    let mut changes = readiness.subscribe();
    loop {
        let ready = *changes.borrow_and_update();
        health.set_ready(ready).await;
        health.set_service_ready(ADMIN_SERVICE_NAME, ready).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    health.set_ready(false).await;
    health.set_service_ready(ADMIN_SERVICE_NAME, false).await;
}

/// What the activity loop last logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logged {
    Nothing,
    Active(i64),
    Passive,
}

/// Follows the lease: on becoming active, activates the core (bootstrap, resend of
/// pending transactions) and only then reports ready; while active, retries pending
/// transactions; on becoming passive, reports not ready.
pub async fn activity_loop(
    core: Arc<Core>,
    readiness: Readiness,
    retry_interval: Duration,
    shutdown: CancellationToken,
) {
    let lease: LeaseHandle = core.lease().clone();
    let mut changes = lease.subscribe();
    let mut tick = tokio::time::interval(retry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged = Logged::Nothing;
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    // The keeper stopped (shutdown).
                    readiness.set_ready(false);
                    break;
                }
            }
            _ = tick.tick() => {}
        }
        let status = lease.status();
        match status.role {
            Role::Active { epoch } => {
                if logged != Logged::Active(epoch) {
                    tracing::info!(
                        epoch,
                        holder = status.holder.as_deref().unwrap_or_default(),
                        "became active"
                    );
                    logged = Logged::Active(epoch);
                    readiness.set_ready(false);
                }
                if core.is_ready() && !core.has_pending() {
                    if !readiness.is_ready() {
                        readiness.set_ready(true);
                    }
                    continue;
                }
                // Bootstrap (not ready yet), or resend of pending transactions left by a
                // failed write (ready: such rows do not make the replica unready).
                let deadline = Instant::now() + core.send_deadline();
                // Cancellable: on shutdown a resend in progress is dropped (the row stays
                // pending for the next active) so the lease is released at once.
                // Also cancelled when the lease changes (typically: lost because the
                // database is unreachable, which is also what keeps `activate` waiting): the
                // replica must stop reporting ready at once, not when the database call
                // gives up (seen: 5 s after the standby took over, with the database
                // partitioned away).
                let result = tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = core.activate(deadline) => result,
                    _ = changes.changed() => continue,
                };
                match result {
                    Ok(()) => {
                        if failing_since.take().is_some() {
                            tracing::info!(epoch, "topology store caught up");
                        }
                        if !readiness.is_ready() {
                            tracing::info!(epoch, "ready: accepting admin writes");
                        }
                        readiness.set_ready(true);
                    }
                    Err(error) => {
                        if failing_since.is_none() {
                            failing_since = Some(Instant::now());
                        }
                        readiness.set_ready(core.is_ready());
                        tracing::warn!(epoch, %error, "activation or resend failed; retrying");
                    }
                }
            }
            Role::Passive => {
                if readiness.is_ready() {
                    readiness.set_ready(false);
                }
                let first_news = logged == Logged::Nothing && status.holder.is_some();
                if matches!(logged, Logged::Active(_)) || first_news {
                    tracing::info!(
                        active_holder = status.holder.as_deref().unwrap_or_default(),
                        active_address = status.holder_address.as_deref().unwrap_or_default(),
                        epoch = status.epoch,
                        "became passive"
                    );
                    logged = Logged::Passive;
                }
            }
        }
    }
}

/// Keeps `dm_allowlist_size` current on every replica (passive ones read the database).
async fn gauge_loop(core: Arc<Core>, shutdown: CancellationToken) {
    let mut ticks = Ticks::new(Duration::from_secs(5), &shutdown);
    while ticks.next().await {
        if let Err(error) = core.refresh_allowlist_gauge().await {
            tracing::debug!(%error, "cannot refresh the allowlist gauge");
        }
    }
}
