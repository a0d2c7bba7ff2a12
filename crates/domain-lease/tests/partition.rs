//! Local-deadline demotion: the active reaches PostgreSQL through a TCP proxy that the test
//! cuts (black-holes: connections stay open, no byte gets through in either direction, so
//! no statement completes and no error is reported).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    assert_lease_row, fresh_db_with_admin, lease_config, start_active, start_standby, wait_active,
    wait_status,
};
use domain_lease::{LeaseConfig, Role};
use domain_storage::DatabaseConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A TCP proxy to PostgreSQL that can be cut and healed.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, cut_rx.clone()),
                        pump(out_read, in_write, cut_rx),
                    );
                });
            }
        });
        Self { addr, cut, task }
    }

    /// Stops forwarding: bytes are held back (not read, not written) until healed.
    fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, pausing (holding the bytes) while `cut` is true.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => Some(read),
            // Cut while waiting for data: go back to waiting for the heal.
            _ = cut.wait_for(|c| *c) => None,
        };
        let n = match read {
            None => continue,
            Some(Ok(0) | Err(_)) => {
                let _ = to.shutdown().await;
                return;
            }
            Some(Ok(n)) => n,
        };
        // Cut after reading: hold the bytes until healed.
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Returns `db` with its host and port replaced by the proxy's.
fn via_proxy(db: &DatabaseConfig, proxy: SocketAddr) -> DatabaseConfig {
    let pg = db.tokio_postgres_config().expect("parse url");
    let user = pg.get_user().unwrap_or("postgres");
    let password = pg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let dbname = pg.get_dbname().expect("database name");
    DatabaseConfig {
        url: format!("postgres://{user}{password}@{proxy}/{dbname}").into(),
        ..db.clone()
    }
}

fn server_addr(db: &DatabaseConfig) -> SocketAddr {
    let pg = db.tokio_postgres_config().expect("parse url");
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        other => panic!("need a TCP database host, got {other:?}"),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}").parse().expect("host:port")
}

/// Runs the partition scenario with `config_a` for the active behind the proxy; returns
/// how long after the cut A reported passive.
///
/// `slow_pool`: give A's pool long timeouts, so that only the keeper's own bounds (local
/// deadline, `op-timeout`) can end a hanging renewal.
async fn partition_scenario(prefix: &str, config_a: LeaseConfig, slow_pool: bool) -> Duration {
    let (db, admin) = fresh_db_with_admin(prefix).await;
    let proxy = Proxy::start(server_addr(&db)).await;
    let ttl = config_a.ttl;
    let mut db_a = via_proxy(&db, proxy.addr);
    if slow_pool {
        db_a.pool_wait_timeout = Duration::from_secs(10);
        db_a.pool_create_timeout = Duration::from_secs(10);
        db_a.pool_recycle_timeout = Duration::from_secs(10);
        db_a.connect_timeout = Duration::from_secs(10);
    }
    let shutdown = CancellationToken::new();

    let ((a, mut a_rx, task_a), status) = start_active(&db_a, config_a, &shutdown).await;
    let epoch = status.epoch;
    let ((b, mut b_rx, task_b), _) =
        start_standby(&db, lease_config("replica-b"), &shutdown, "replica-a").await;
    // Let A go through a few renewals through the proxy.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(a.is_active());

    proxy.cut();
    let cut = Instant::now();
    let (status, _) = wait_status(&mut a_rx, ttl * 2, "A passive after the cut", |s| {
        !s.is_active()
    })
    .await;
    let demoted = cut.elapsed();
    assert!(a.fence().is_none());
    assert_eq!(status.holder, None, "A cannot know the holder");
    assert!(demoted < ttl, "A still active {demoted:?} after the cut");
    assert!(!b.is_active(), "B active before A demoted itself");

    let status = wait_active(&mut b_rx, "B active").await;
    let takeover = cut.elapsed();
    assert_eq!(status.role, Role::Active { epoch: epoch + 1 });
    assert!(takeover > demoted);

    // Heal: A catches up as passive and leaves B's lease alone.
    proxy.heal();
    let healed = Instant::now();
    wait_status(
        &mut a_rx,
        Duration::from_secs(5),
        "A sees B after the heal",
        |s| !s.is_active() && s.holder.as_deref() == Some("replica-b"),
    )
    .await;
    let caught_up = healed.elapsed();
    assert!(b.is_active());
    assert_lease_row(&admin, "replica-b", epoch + 1).await;
    println!(
        "{prefix}: A passive {demoted:?} after the cut (ttl {ttl:?}); B active {takeover:?} \
         after the cut; A saw B {caught_up:?} after the heal"
    );

    shutdown.cancel();
    task_b.await.expect("B keeper");
    task_a.await.expect("A keeper");
    demoted
}

/// With `op-timeout` just below `ttl` (and pool timeouts longer still), a renewal timing
/// out cannot demote A in time: the
/// first renewal that gets no answer was sent at the earliest just before the cut, so it
/// times out no earlier than about 2 s after the cut. The local deadline (last successful
/// renewal sent + ttl - 10%) passes at most 1.8 s after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_database_demotes_active_by_local_deadline() {
    let config = LeaseConfig {
        renew_interval: Duration::from_millis(300),
        op_timeout: Duration::from_millis(1999),
        ..lease_config("replica-a")
    };
    let deadline = config.ttl - config.safety_margin();
    let demoted = partition_scenario("lease_cut_deadline", config, true).await;
    assert!(
        demoted <= deadline + Duration::from_millis(150),
        "demoted {demoted:?} after the cut: later than the local deadline ({deadline:?})"
    );
}

/// Same with the default settings: a renewal times out (`op-timeout`) before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_database_demotes_active_with_default_settings() {
    partition_scenario("lease_cut_default", lease_config("replica-a"), false).await;
}

/// A short outage demotes the active although the lease row is still its own; when the
/// database is back, it re-acquires its own row with a new epoch (no standby around).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reacquiring_own_lease_after_a_loss_starts_a_new_epoch() {
    let (db, admin) = fresh_db_with_admin("lease_reacquire").await;
    let proxy = Proxy::start(server_addr(&db)).await;
    let shutdown = CancellationToken::new();
    let ((a, mut a_rx, task), status) = start_active(
        &via_proxy(&db, proxy.addr),
        lease_config("replica-a"),
        &shutdown,
    )
    .await;
    let epoch = status.epoch;

    proxy.cut();
    wait_status(&mut a_rx, Duration::from_secs(2), "A passive", |s| {
        !s.is_active()
    })
    .await;
    let live = assert_lease_row(&admin, "replica-a", epoch).await;
    assert!(live, "the row must still be A's for this test");
    proxy.heal();
    let (status, took) = wait_status(&mut a_rx, Duration::from_secs(3), "A active again", |s| {
        s.is_active()
    })
    .await;
    assert_eq!(status.role, Role::Active { epoch: epoch + 1 });
    assert_eq!(a.fence().expect("active").epoch, epoch + 1);
    assert_lease_row(&admin, "replica-a", epoch + 1).await;
    println!(
        "re-acquire: A active again {took:?} after the heal, epoch {epoch} -> {}",
        epoch + 1
    );

    shutdown.cancel();
    task.await.expect("keeper");
}
