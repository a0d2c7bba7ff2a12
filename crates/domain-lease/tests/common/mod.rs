//! Shared helpers of the lease integration tests: a fresh database with the lease table
//! and a `fenced_writes` test table, keepers with their own pools (one per simulated
//! process), and fenced writes.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use domain_lease::{
    Fence, LEASE_TABLE_DDL, LeaseConfig, LeaseError, LeaseHandle, LeaseKeeper, LeaseStatus,
    fenced_transaction,
};
use domain_storage::{DatabaseConfig, hot_pool};
use domain_testkit::pg::PgCluster;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub const LEASE: &str = "test-lease";

/// Creates a database holding `leases` and `fenced_writes (id serial, epoch bigint, who
/// text)`; returns its config (short pool timeouts so a dead server fails fast).
pub async fn fresh_db(prefix: &str) -> DatabaseConfig {
    let db = PgCluster::shared().create_database(prefix).await;
    let client = connect(&db.url).await;
    client
        .batch_execute(LEASE_TABLE_DDL)
        .await
        .expect("apply LEASE_TABLE_DDL");
    client
        .batch_execute(
            "CREATE TABLE fenced_writes (id serial PRIMARY KEY, epoch bigint NOT NULL, \
             who text NOT NULL)",
        )
        .await
        .expect("create fenced_writes");
    DatabaseConfig {
        pool_max_size: 4,
        pool_wait_timeout: Duration::from_millis(500),
        pool_create_timeout: Duration::from_secs(1),
        pool_recycle_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        application_name: Some(format!("lease-test-{prefix}")),
        ..DatabaseConfig::from_url(db.url)
    }
}

/// [`fresh_db`] and a plain admin connection to it, as most tests start.
pub async fn fresh_db_with_admin(prefix: &str) -> (DatabaseConfig, Client) {
    let db = fresh_db(prefix).await;
    let admin = connect(db.url.expose()).await;
    (db, admin)
}

/// Opens a plain connection (driven by a spawned task).
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to test database");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Default lease settings for holder `holder` (address `<holder>.example:4402`).
pub fn lease_config(holder: &str) -> LeaseConfig {
    LeaseConfig {
        holder: holder.to_owned(),
        holder_address: format!("{holder}.example:4402"),
        ..LeaseConfig::new(LEASE)
    }
}

/// A keeper with its own pool, as a separate process would have.
pub fn keeper(db: &DatabaseConfig, config: LeaseConfig) -> (LeaseKeeper, LeaseHandle) {
    let pool = hot_pool(db).expect("pool");
    let keeper = LeaseKeeper::new(pool, config).expect("valid lease config");
    let handle = keeper.handle();
    (keeper, handle)
}

/// A running keeper: its handle, its status feed and its task.
pub type Running = (LeaseHandle, watch::Receiver<LeaseStatus>, JoinHandle<()>);

/// Spawns a keeper for `config` with its own pool, running until `shutdown`.
pub fn spawn_keeper(
    db: &DatabaseConfig,
    config: LeaseConfig,
    shutdown: &CancellationToken,
) -> Running {
    let (keeper, handle) = keeper(db, config);
    let rx = keeper.subscribe();
    let task = tokio::spawn(keeper.run(shutdown.clone()));
    (handle, rx, task)
}

/// [`spawn_keeper`], then waits up to 5 s until it is active; returns the active status too.
pub async fn start_active(
    db: &DatabaseConfig,
    config: LeaseConfig,
    shutdown: &CancellationToken,
) -> (Running, LeaseStatus) {
    let what = format!("{} active", config.holder);
    let (handle, mut rx, task) = spawn_keeper(db, config, shutdown);
    let status = wait_active(&mut rx, &what).await;
    ((handle, rx, task), status)
}

/// [`spawn_keeper`], then waits up to 5 s until it sees `holder` holding the lease; returns
/// that status too.
pub async fn start_standby(
    db: &DatabaseConfig,
    config: LeaseConfig,
    shutdown: &CancellationToken,
    holder: &str,
) -> (Running, LeaseStatus) {
    let what = format!("{} sees {holder}", config.holder);
    let (handle, mut rx, task) = spawn_keeper(db, config, shutdown);
    let status = wait_holder(&mut rx, &what, holder).await;
    ((handle, rx, task), status)
}

/// Waits until the keeper publishes a status matching `pred`; returns the status and how
/// long it took. Panics after `limit`.
pub async fn wait_status(
    rx: &mut watch::Receiver<LeaseStatus>,
    limit: Duration,
    what: &str,
    pred: impl FnMut(&LeaseStatus) -> bool,
) -> (LeaseStatus, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(limit, async {
        rx.wait_for(pred).await.map(|status| status.clone())
    })
    .await;
    match result {
        Ok(Ok(status)) => (status, started.elapsed()),
        Ok(Err(_)) => panic!("keeper stopped while waiting for: {what}"),
        Err(_) => panic!(
            "not reached within {limit:?}: {what}; last status {:?}",
            *rx.borrow()
        ),
    }
}

/// Waits up to 5 s until the keeper reports itself active (`what` names the wait).
pub async fn wait_active(rx: &mut watch::Receiver<LeaseStatus>, what: &str) -> LeaseStatus {
    wait_status(rx, Duration::from_secs(5), what, |s| s.is_active())
        .await
        .0
}

/// Waits up to 5 s until the keeper sees `holder` holding the lease (`what` names the wait).
pub async fn wait_holder(
    rx: &mut watch::Receiver<LeaseStatus>,
    what: &str,
    holder: &str,
) -> LeaseStatus {
    wait_status(rx, Duration::from_secs(5), what, |s| {
        s.holder.as_deref() == Some(holder)
    })
    .await
    .0
}

/// Returns `(holder, epoch, live)` of the lease row.
pub async fn lease_row(client: &Client) -> (String, i64, bool) {
    let row = client
        .query_one(
            "SELECT holder, epoch, expires_at > clock_timestamp() FROM leases WHERE name = $1",
            &[&LEASE],
        )
        .await
        .expect("lease row");
    (row.get(0), row.get(1), row.get(2))
}

/// Asserts that the lease row names `holder` at `epoch`; returns whether it is live.
pub async fn assert_lease_row(client: &Client, holder: &str, epoch: i64) -> bool {
    let (db_holder, db_epoch, live) = lease_row(client).await;
    assert_eq!((db_holder.as_str(), db_epoch), (holder, epoch), "lease row");
    live
}

/// Inserts `(fence.epoch, who)` into `fenced_writes` in a fenced transaction; returns the id.
pub async fn fenced_insert(
    client: &mut Client,
    fence: &Fence,
    who: &str,
) -> Result<i32, LeaseError> {
    fenced_transaction(client, fence, async |tx| {
        let row = tx
            .query_one(
                "INSERT INTO fenced_writes (epoch, who) VALUES ($1, $2) RETURNING id",
                &[&fence.epoch, &who],
            )
            .await?;
        Ok::<_, LeaseError>(row.get(0))
    })
    .await
}

/// Returns all `fenced_writes` rows as `(id, epoch, who)`, by id.
pub async fn written_rows(client: &Client) -> Vec<(i32, i64, String)> {
    client
        .query("SELECT id, epoch, who FROM fenced_writes ORDER BY id", &[])
        .await
        .expect("read fenced_writes")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}
