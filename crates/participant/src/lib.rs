//! The reference participant: a domain member that exists to exercise and demonstrate the
//! domain (no Daml engine). It keeps its identity in a data directory ([`identity`]),
//! connects to one domain through several sequencer endpoints with the failover
//! [`domain_sequencer_client::DomainClient`] ([`connection`], [`node`]), answers
//! confirmation requests automatically ([`protocol`], policy in [`config::AutoConfirm`]),
//! records committed transactions in its own PostgreSQL database ([`store`]), and runs
//! pings: two-party confirmation round trips through the mediator. See
//! docs/participant.md.

mod admin;
pub mod config;
/// Domain connection settings (the `connect` command and the node share them).
pub mod connection;
mod error;
/// The participant's key and id on disk (`init`, `id`).
pub mod identity;
mod metrics;
mod node;
/// The confirmation state machine, pure and deterministic: public for the fuzz harness.
pub mod protocol;
mod store;

pub use metrics::{PING_RTT, PING_RTT_BUCKETS};

use std::time::Duration;

use anyhow::Context as _;
use domain_proto::participant::admin::v1::participant_admin_service_server::ParticipantAdminServiceServer;
use domain_runtime::ops::Readiness;
use domain_runtime::service::Started;
use sqlx::Connection as _;

pub use config::ParticipantConfig;

/// Embedded migrations of the participant's database (`migrations/participant/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/participant");

/// Already-bound listeners, so tests and binaries choose ports the same way.
pub use domain_runtime::service::AdminListeners as Listeners;

/// Runs the participant node until `shutdown` is cancelled.
pub async fn run(config: ParticipantConfig, started: Started<Listeners>) -> anyhow::Result<()> {
    metrics::describe();
    let identity = identity::load(&config.data_dir)?;
    let connection = connection::load(&config.data_dir)?;
    tracing::info!(
        participant = %identity.member,
        data_dir = %config.data_dir.display(),
        database = %config.database.url.redacted(),
        domain = connection.as_ref().map(|c| c.domain_id.as_str()).unwrap_or("(none yet)"),
        "starting participant"
    );

    let pool = domain_storage::prepare(&config.database, &MIGRATOR).await?;
    // One node per database: a second process would interleave the stream position.
    let mut lock_conn = pool
        .acquire()
        .await
        .context("cannot connect to the database")?
        .detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(store::INSTANCE_LOCK_KEY)
        .fetch_one(&mut lock_conn)
        .await
        .context("cannot take the instance lock")?;
    if !locked {
        anyhow::bail!(
            "another participant process is running on database {}; stop it first",
            config.database.url.redacted()
        );
    }

    let readiness = Readiness::new();
    let node = node::Node::new(
        identity,
        config.clone(),
        pool.clone(),
        connection,
        readiness.clone(),
    );
    let internal = started.shutdown.child_token();
    let sessions = tokio::spawn(node::run_sessions(node.clone(), internal.clone()));

    let max_msg = config.admin_api.max_message_size;
    let (health, health_server) = domain_runtime::grpc::health_service(max_msg).await;
    let _follow = health.follow(&readiness);
    let admin_api =
        ParticipantAdminServiceServer::new(admin::ParticipantAdmin { node: node.clone() })
            .max_decoding_message_size(max_msg)
            .max_encoding_message_size(max_msg);
    let admin = domain_runtime::grpc::service_router(&config.admin_api, health_server)?
        .add_service(admin_api);
    let (servers, shutdown) = started.serve_admin(&config.admin_api, admin, &readiness);

    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = sessions => {
            // Only ends early if the task panicked.
            if let Err(e) = r {
                tracing::error!(error = %e, "session task failed");
            }
        }
    }
    tracing::info!("shutting down");
    readiness.set_ready(false);
    internal.cancel();
    let grace = config.shutdown_grace;
    let drained = servers.stop(grace).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), lock_conn.close()).await;
    pool.close().await;
    if drained.is_err() {
        anyhow::bail!("shutdown grace period of {grace:?} exceeded");
    }
    tracing::info!("participant stopped");
    Ok(())
}
