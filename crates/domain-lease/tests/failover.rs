//! Failover and fencing against a real PostgreSQL (the testkit's shared cluster or
//! `DATABASE_URL`). Every keeper has its own pool, like a separate process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    assert_lease_row, connect, fenced_insert, fresh_db, fresh_db_with_admin, keeper, lease_config,
    lease_row, start_active, start_standby, wait_active, wait_status, written_rows,
};
use domain_lease::{LeaseError, LeaseHandle, Role};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// Takeover target from DESIGN.md §7.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abrupt_stop_of_active_fails_over_within_three_seconds() {
    let (db, admin) = fresh_db_with_admin("lease_crash").await;
    let config_a = lease_config("replica-a");
    let (ttl, renew_interval) = (config_a.ttl, config_a.renew_interval);
    let shutdown = CancellationToken::new();

    let ((a, a_rx, task_a), status) = start_active(&db, config_a, &shutdown).await;
    assert_eq!(status.epoch, 1, "a fresh lease starts at epoch 1");
    let ((b, _, task_b), status) =
        start_standby(&db, lease_config("replica-b"), &shutdown, "replica-a").await;
    assert_eq!(status.role, Role::Passive);
    assert_eq!(
        status.holder_address.as_deref(),
        Some("replica-a.example:4402")
    );

    // Steady state, spanning several renewals and polls: exactly one active at every sample.
    let steady_until = Instant::now() + Duration::from_secs(2);
    let mut samples = 0;
    while Instant::now() < steady_until {
        let active = [a.is_active(), b.is_active()];
        assert_eq!(active, [true, false], "sample {samples}");
        samples += 1;
        sleep(Duration::from_millis(5)).await;
    }
    let epoch = a.fence().expect("A active").epoch;

    // Crash A: its task is dropped mid-flight, nothing is released.
    task_a.abort();
    let crashed = Instant::now();
    let mut failover_samples = 0;
    let took = loop {
        let (a_active, b_active) = (a.is_active(), b.is_active());
        assert!(
            !(a_active && b_active),
            "two actives {:?} after the crash",
            crashed.elapsed()
        );
        failover_samples += 1;
        if b_active {
            break crashed.elapsed();
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(10),
            "B never took over"
        );
        sleep(Duration::from_millis(2)).await;
    };
    println!(
        "abrupt stop: B active {took:?} after A's task was aborted (ttl {ttl:?}); {samples} \
         steady + {failover_samples} failover samples, never two actives"
    );
    assert!(took < TAKEOVER_LIMIT, "takeover took {took:?}");
    // The lease was renewed at most `renew-interval` before the crash, so B must not have
    // taken it before it expired.
    assert!(
        took >= ttl - renew_interval - Duration::from_millis(200),
        "B took over after only {took:?}, before A's lease could have expired"
    );
    assert!(!a.is_active(), "A's handle still active after its deadline");
    assert!(
        a_rx.borrow().is_active(),
        "A's aborted keeper could not publish, yet its handle reports passive"
    );
    assert!(
        assert_holds(&admin, &b, "replica-b", epoch + 1).await,
        "B's lease is live"
    );

    shutdown.cancel();
    task_b.await.expect("B keeper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_release_hands_over_at_once() {
    let (db, admin) = fresh_db_with_admin("lease_release").await;
    let config_b = lease_config("replica-b");
    let poll_interval = config_b.poll_interval;
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();

    let ((a, a_rx, task_a), _) = start_active(&db, lease_config("replica-a"), &stop_a).await;
    let ((b, mut b_rx, task_b), _) = start_standby(&db, config_b, &stop_b, "replica-a").await;
    let epoch = a.fence().expect("A active").epoch;

    stop_a.cancel();
    let stopped = Instant::now();
    let status = wait_active(&mut b_rx, "B active").await;
    let took = stopped.elapsed();
    task_a.await.expect("A keeper");
    println!("graceful release: B active {took:?} after A was asked to stop");
    assert!(
        took < poll_interval + Duration::from_millis(500),
        "takeover after release took {took:?}"
    );
    assert_eq!(status.role, Role::Active { epoch: epoch + 1 });
    assert!(!a.is_active());
    assert!(!a_rx.borrow().is_active(), "A's final status is passive");
    assert!(a.fence().is_none());
    assert_holds(&admin, &b, "replica-b", epoch + 1).await;

    stop_b.cancel();
    task_b.await.expect("B keeper");
}

/// A's keeper runs on its own single-threaded runtime, which the test blocks: like a
/// `SIGSTOP`ped process, A can neither renew nor demote itself. Meanwhile a writer keeps
/// using A's fence, holding each transaction open between the check and the insert (the
/// worst case: a zombie writer that never looks at the role).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_holder_gets_no_write_accepted_after_takeover() {
    let (db, admin) = fresh_db_with_admin("lease_split_brain").await;
    let (keeper_a, a) = keeper(&db, lease_config("replica-a"));
    let ttl = keeper_a.config().ttl;
    let mut a_rx = keeper_a.subscribe();

    // A's "process": a current-thread runtime on its own OS thread.
    let stop_a = CancellationToken::new();
    let (rt_tx, rt_rx) = std::sync::mpsc::channel();
    let a_thread = {
        let stop_a = stop_a.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for A");
            rt_tx.send(rt.handle().clone()).expect("send handle");
            rt.block_on(keeper_a.run(stop_a));
        })
    };
    let a_runtime = rt_rx.recv().expect("A's runtime");
    wait_active(&mut a_rx, "A active").await;
    let stop_b = CancellationToken::new();
    let ((b, mut b_rx, b_task), _) =
        start_standby(&db, lease_config("replica-b"), &stop_b, "replica-a").await;
    let fence_a = a.fence().expect("A active");
    let epoch = fence_a.epoch;

    // A's zombie writer: check, hold the transaction 40 ms, insert, commit, repeat.
    let writer_stop = Arc::new(AtomicBool::new(false));
    let zombie = {
        let url = db.url.expose().to_owned();
        let mut client = connect(&url).await;
        let fence = fence_a.clone();
        let writer_stop = writer_stop.clone();
        tokio::spawn(async move {
            let (mut committed, mut fenced, mut terminated) = (0_u32, 0_u32, 0_u32);
            let mut first_fenced = None;
            while !writer_stop.load(Ordering::Relaxed) {
                let result = domain_lease::fenced_transaction(&mut client, &fence, async |tx| {
                    sleep(Duration::from_millis(40)).await;
                    tx.execute(
                        "INSERT INTO fenced_writes (epoch, who) VALUES ($1, 'A')",
                        &[&fence.epoch],
                    )
                    .await?;
                    Ok::<_, LeaseError>(())
                })
                .await;
                match result {
                    Ok(()) => committed += 1,
                    Err(LeaseError::Fenced { .. }) => {
                        fenced += 1;
                        first_fenced.get_or_insert_with(Instant::now);
                        sleep(Duration::from_millis(10)).await;
                    }
                    // The transaction in flight when the lease expired: the takeover
                    // ended its session (issue 11 item 8). A pool would reconnect.
                    Err(LeaseError::Postgres(e))
                        if e.is_closed()
                            || e.code()
                                == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN) =>
                    {
                        terminated += 1;
                        client = connect(&url).await;
                    }
                    Err(e) => panic!("zombie writer: unexpected error {e}"),
                }
            }
            (committed, fenced, terminated, first_fenced)
        })
    };
    sleep(Duration::from_millis(300)).await;

    // Pause A: block its runtime's only thread.
    let pause = Duration::from_secs(4);
    a_runtime.spawn(async move { std::thread::sleep(pause) });
    let paused = Instant::now();

    // The handle applies A's local deadline itself, although A's keeper cannot run.
    while a.is_active() {
        assert!(paused.elapsed() < ttl * 2, "A's handle never went passive");
        sleep(Duration::from_millis(2)).await;
    }
    let handle_passive = paused.elapsed();
    assert!(
        a_rx.borrow().is_active(),
        "A's keeper ran although its runtime is blocked"
    );
    assert!(a.fence().is_none());
    assert!(handle_passive < ttl, "took {handle_passive:?}");

    let status = wait_active(&mut b_rx, "B active").await;
    let takeover = paused.elapsed();
    assert_eq!(status.role, Role::Active { epoch: epoch + 1 });
    assert!(takeover < TAKEOVER_LIMIT, "takeover took {takeover:?}");
    assert!(
        handle_passive < takeover,
        "A's handle still active ({handle_passive:?}) when B took over ({takeover:?})"
    );
    let fence_b = b.fence().expect("B active");
    assert_eq!(fence_b.epoch, epoch + 1);

    // B writes; the zombie keeps trying meanwhile.
    let mut b_client = connect(db.url.expose()).await;
    for _ in 0..10 {
        fenced_insert(&mut b_client, &fence_b, "B")
            .await
            .expect("B's fenced write");
        sleep(Duration::from_millis(20)).await;
    }
    // A direct attempt with A's stale fence.
    let mut stale_client = connect(db.url.expose()).await;
    match fenced_insert(&mut stale_client, &fence_a, "A-stale").await {
        Err(LeaseError::Fenced { name, epoch: e }) => {
            assert_eq!((name.as_str(), e), (common::LEASE, epoch));
        }
        other => panic!("stale fence accepted: {other:?}"),
    }
    writer_stop.store(true, Ordering::Relaxed);
    let (committed, fenced, terminated, first_fenced) = zombie.await.expect("zombie writer");
    assert!(
        terminated <= 1,
        "only the transaction open at the expiry is ended: {terminated} were"
    );
    assert!(committed > 0, "the zombie wrote nothing while A was active");
    assert!(fenced > 0, "the zombie was never fenced");
    let first_fenced = first_fenced.expect("fenced at least once");
    assert!(
        first_fenced.duration_since(paused) < takeover + Duration::from_millis(300),
        "the zombie was fenced only {:?} after the pause (takeover at {takeover:?})",
        first_fenced.duration_since(paused)
    );

    // Every epoch-e row precedes every epoch-e+1 row: no write with the old epoch landed
    // after the takeover.
    let rows = written_rows(&admin).await;
    let last_a = rows.iter().filter(|r| r.1 == epoch).map(|r| r.0).max();
    let first_b = rows.iter().filter(|r| r.1 == epoch + 1).map(|r| r.0).min();
    let (Some(last_a), Some(first_b)) = (last_a, first_b) else {
        panic!("missing rows: {rows:?}");
    };
    assert!(
        last_a < first_b,
        "epoch {epoch} row after takeover: {rows:?}"
    );
    assert!(
        rows.iter().all(|r| r.1 == epoch || r.1 == epoch + 1),
        "{rows:?}"
    );
    assert!(rows.windows(2).all(|w| w[0].1 <= w[1].1), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.2 == "B").count(), 10);
    assert!(rows.iter().all(|r| r.2 != "A-stale"));
    assert_eq!(
        rows.iter().filter(|r| r.2 == "A").count(),
        committed as usize
    );

    // A resumes: it must go passive, see B, and leave the lease alone.
    let resumed_by = paused + pause + Duration::from_secs(3);
    let (status, _) = wait_status(
        &mut a_rx,
        resumed_by.saturating_duration_since(Instant::now()),
        "A passive and seeing B after resuming",
        |s| !s.is_active() && s.holder.as_deref() == Some("replica-b"),
    )
    .await;
    assert_eq!(status.epoch, epoch + 1);
    assert!(b.is_active());
    assert_lease_row(&admin, "replica-b", epoch + 1).await;
    println!(
        "paused holder: A's handle passive {handle_passive:?} after the pause; B active \
         {takeover:?} after it; zombie writer: {committed} commits at epoch {epoch}, \
         {terminated} transaction ended by the takeover, then {fenced} fenced attempts, the \
         first {:?} after the pause; B wrote 10 rows at epoch {}",
        first_fenced.duration_since(paused),
        epoch + 1
    );

    stop_b.cancel();
    b_task.await.expect("B keeper");
    stop_a.cancel();
    a_thread.join().expect("A's thread");
    assert!(!a_rx.borrow().is_active());
}

/// Issue 11 item 8: a holder paused inside a fenced transaction must not block the
/// takeover. While A's lease is live, its open fenced transaction holds nothing up (A
/// renews normally, nobody touches it); once A's keeper is gone and the lease expired by
/// the database clock, one of three standbys ends A's transaction and takes over within
/// `ttl + poll-interval` plus scheduling slack, with the next epoch; A's write never
/// commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn item_8_takeover_ends_open_fenced_transaction_of_expired_holder() {
    let (db, admin) = fresh_db_with_admin("lease_concurrent").await;
    let shutdown = CancellationToken::new();
    let ((a, _, task_a), _) = start_active(&db, lease_config("replica-a"), &shutdown).await;
    let mut standbys = Vec::new();
    for name in ["replica-b", "replica-c", "replica-d"] {
        let ((handle, _, task), _) =
            start_standby(&db, lease_config(name), &shutdown, "replica-a").await;
        standbys.push((name, handle, task));
    }
    let fence_a = a.fence().expect("A active");
    let epoch = fence_a.epoch;

    // A opens a fenced transaction and writes, but does not commit.
    let mut a_client = connect(db.url.expose()).await;
    let a_pid: i32 = a_client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("A's pid")
        .get(0);
    let tx = a_client.transaction().await.expect("begin");
    fence_a
        .check(&tx)
        .await
        .expect("A's check passes while active");
    tx.execute(
        "INSERT INTO fenced_writes (epoch, who) VALUES ($1, 'A')",
        &[&epoch],
    )
    .await
    .expect("A's insert");
    // The open transaction's row lock does not hold up A's renewals: in 1.2 s at least two
    // of them (every 500 ms) move expires_at by about 1 s. Its session is left alone
    // meanwhile: the lease is live.
    let (_, _, expires_before) = lease_expiry(&admin).await;
    sleep(Duration::from_millis(1200)).await;
    let (holder, db_epoch, expires_after) = lease_expiry(&admin).await;
    assert_eq!((holder.as_str(), db_epoch), ("replica-a", epoch));
    assert!(
        expires_after - expires_before >= 900_000,
        "A's renewals stalled behind its own fenced transaction: expires_at moved only {} us",
        expires_after - expires_before
    );
    assert!(a.is_active());
    assert!(
        backend_alive(&admin, a_pid).await,
        "A's session was terminated while its lease was live"
    );

    // A's keeper dies without releasing (the process is paused); its transaction stays
    // open.
    task_a.abort();
    let aborted = Instant::now();
    let limit = Duration::from_secs(2) + Duration::from_millis(250) + Duration::from_secs(1);
    let (winner, fence_w) = loop {
        if let Some((name, h, _)) = standbys.iter().find(|(_, h, _)| h.is_active()) {
            break (*name, h.fence().expect("winner's fence"));
        }
        let (holder, db_epoch, _) = lease_row(&admin).await;
        assert!(
            aborted.elapsed() < limit,
            "no takeover {:?} after A's keeper died with a fenced transaction open (lease \
             row: {holder} at epoch {db_epoch}): the paused holder blocks the failover",
            aborted.elapsed()
        );
        sleep(Duration::from_millis(5)).await;
    };
    let takeover = aborted.elapsed();
    assert_eq!(fence_w.epoch, epoch + 1);
    assert!(
        !backend_alive(&admin, a_pid).await,
        "A's session survived the takeover"
    );
    let err = tx
        .commit()
        .await
        .expect_err("A's transaction was ended by the takeover");
    println!("A's commit after the takeover: {err}");
    drop(a_client);
    // The losers stay passive: exactly one active at every sample, epoch unchanged.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let active: Vec<&str> = standbys
            .iter()
            .filter(|(_, h, _)| h.is_active())
            .map(|(n, _, _)| *n)
            .collect();
        assert_eq!(active, vec![winner]);
        sleep(Duration::from_millis(5)).await;
    }
    assert_lease_row(&admin, winner, epoch + 1).await;
    println!(
        "open fenced transaction: A renewed normally for 1.2 s with it open; {winner} took \
         over {takeover:?} after A's keeper died, ending A's transaction; epoch {} -> {}",
        epoch,
        epoch + 1
    );

    let mut w_client = connect(db.url.expose()).await;
    fenced_insert(&mut w_client, &fence_w, winner)
        .await
        .expect("the winner's fenced write");
    // A's stale fence is refused on a fresh session too.
    let mut a_again = connect(db.url.expose()).await;
    let err = fenced_insert(&mut a_again, &fence_a, "A")
        .await
        .expect_err("A's stale fence");
    assert!(err.is_fenced(), "{err}");

    let rows = written_rows(&admin).await;
    let epochs: Vec<(i64, &str)> = rows.iter().map(|r| (r.1, r.2.as_str())).collect();
    assert_eq!(
        epochs,
        vec![(epoch + 1, winner)],
        "A's write must not commit"
    );

    shutdown.cancel();
    for (_, _, task) in standbys {
        task.await.expect("standby keeper");
    }
}

/// Asserts that `handle` (of `holder`) is active at `epoch` and that the lease row says so;
/// returns whether the row is live.
async fn assert_holds(
    admin: &tokio_postgres::Client,
    handle: &LeaseHandle,
    holder: &str,
    epoch: i64,
) -> bool {
    let fence = handle.fence().expect("active");
    assert_eq!(fence.epoch, epoch, "{holder}'s fence");
    assert_lease_row(admin, holder, epoch).await
}

/// Whether a backend with `pid` exists in this database.
async fn backend_alive(client: &tokio_postgres::Client, pid: i32) -> bool {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .get::<_, i64>(0)
        == 1
}

/// Returns `(holder, epoch, expires_at in microseconds since the epoch)`.
async fn lease_expiry(client: &tokio_postgres::Client) -> (String, i64, i64) {
    let row = client
        .query_one(
            "SELECT holder, epoch, (extract(epoch FROM expires_at) * 1000000)::int8 \
             FROM leases WHERE name = $1",
            &[&common::LEASE],
        )
        .await
        .expect("lease row");
    (row.get(0), row.get(1), row.get(2))
}

/// Many writers running fenced transactions back to back (the lease row is locked by some
/// transaction nearly all the time) must not starve the renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_survive_continuous_fenced_writes() {
    const WRITERS: usize = 16;
    let db = fresh_db("lease_write_load").await;
    let shutdown = CancellationToken::new();
    let ((a, a_rx, task_a), status) = start_active(&db, lease_config("replica-a"), &shutdown).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let mut client = connect(db.url.expose()).await;
        let (stop, a) = (stop.clone(), a.clone());
        writers.push(tokio::spawn(async move {
            let mut commits = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let Some(fence) = a.fence() else {
                    sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if fenced_insert(&mut client, &fence, "A").await.is_ok() {
                    commits += 1;
                }
            }
            commits
        }));
    }
    let started = Instant::now();
    let mut samples = 0_u64;
    let mut passive_samples = 0_u64;
    while started.elapsed() < Duration::from_secs(6) {
        samples += 1;
        if !a.is_active() {
            passive_samples += 1;
        }
        sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut commits = 0;
    for writer in writers {
        commits += writer.await.expect("writer");
    }
    let final_status = a_rx.borrow().clone();
    println!(
        "write load: {WRITERS} writers committed {commits} fenced transactions in 6 s \
         ({:.0}/s); A passive in {passive_samples} of {samples} samples; epoch {} -> {}",
        commits as f64 / 6.0,
        status.epoch,
        final_status.epoch
    );
    assert_eq!(
        passive_samples, 0,
        "A lost the lease under fenced write load"
    );
    assert_eq!(
        final_status.role,
        Role::Active {
            epoch: status.epoch
        }
    );
    assert!(commits > 1000, "only {commits} commits");

    shutdown.cancel();
    task_a.await.expect("A keeper");
}
