//! Integration tests against a real PostgreSQL: the shared testkit cluster (started on
//! first use) or `DATABASE_URL`.

use std::time::{Duration, Instant};

use domain_storage::{
    DatabaseConfig, PoolTimeoutKind, StorageError, check_commit_mode, connect_sqlx,
    dedicated_connection, hot_pool, listen_connection, run_migrations,
};
use domain_testkit::pg::PgCluster;

mod common;
use common::{assert_commit_mode_refused_unless_allowed, set_synchronous_commit};

async fn fresh_config(prefix: &str) -> DatabaseConfig {
    let db = PgCluster::shared().create_database(prefix).await;
    DatabaseConfig {
        application_name: Some(format!("test-{prefix}")),
        ..DatabaseConfig::from_url(db.url)
    }
}

/// Awaits `op`, which must fail within `bound` (`why` says why it must fail), and returns
/// its error.
async fn fails_within<T, E: Into<StorageError>>(
    bound: Duration,
    why: &str,
    op: impl Future<Output = Result<T, E>>,
) -> StorageError {
    let started = Instant::now();
    let err = match op.await {
        Ok(_) => panic!("succeeded, although {why}"),
        Err(e) => e.into(),
    };
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    err
}

#[tokio::test]
async fn hot_pool_and_sqlx_pool_both_query() {
    let cfg = fresh_config("storage_pools").await;

    let hot = hot_pool(&cfg).expect("hot pool");
    let client = hot.get().await.expect("pooled connection");
    let row = client
        .query_one(
            "SELECT $1::int8 + 1, current_setting('application_name')",
            &[&41_i64],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "test-storage_pools");

    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    let (sum, timeout): (i32, String) =
        sqlx::query_as("SELECT 40 + 2, current_setting('statement_timeout')")
            .fetch_one(&pool)
            .await
            .expect("query");
    assert_eq!(sum, 42);
    assert_eq!(
        timeout, "10s",
        "statement timeout applied as a startup option"
    );
}

#[tokio::test]
async fn statement_timeout_cancels_long_statements() {
    let cfg = DatabaseConfig {
        statement_timeout: Duration::from_millis(200),
        ..fresh_config("storage_stmt_timeout").await
    };

    let hot = hot_pool(&cfg).expect("hot pool");
    let client = hot.get().await.expect("pooled connection");
    let why = "cancelled by statement_timeout";
    let err = fails_within(
        Duration::from_secs(3),
        why,
        client.query_one("SELECT pg_sleep(5)", &[]),
    )
    .await;
    assert!(err.is_timeout());

    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    let err = fails_within(
        Duration::from_secs(3),
        why,
        sqlx::query("SELECT pg_sleep(5)").execute(&pool),
    )
    .await;
    assert!(err.is_timeout());

    let (client, _task) = dedicated_connection(&cfg).await.expect("dedicated");
    let err = client
        .batch_execute("SELECT pg_sleep(5)")
        .await
        .expect_err("cancelled by statement_timeout");
    assert!(StorageError::from(err).is_timeout());
}

#[tokio::test]
async fn exhausted_pool_fails_with_wait_timeout() {
    let cfg = DatabaseConfig {
        pool_max_size: 1,
        pool_wait_timeout: Duration::from_millis(200),
        ..fresh_config("storage_pool_wait").await
    };
    let hot = hot_pool(&cfg).expect("hot pool");
    let held = hot.get().await.expect("first connection");

    let err = fails_within(Duration::from_secs(2), "the pool is exhausted", hot.get()).await;
    assert!(
        matches!(err, StorageError::PoolTimeout(PoolTimeoutKind::Wait)),
        "unexpected error: {err}"
    );
    assert!(err.is_timeout());
    assert!(err.to_string().contains("pool-wait-timeout"), "{err}");

    drop(held);
    let again = hot.get().await.expect("connection returned to the pool");
    again
        .simple_query("SELECT 1")
        .await
        .expect("recycled connection works");
}

#[tokio::test]
async fn async_commit_is_refused_unless_allowed() {
    let cfg = fresh_config("storage_commit_mode").await;
    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    check_commit_mode(&pool, false)
        .await
        .expect("default synchronous_commit is durable");

    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .expect("current database");
    set_synchronous_commit(&pool, &db, "off").await;
    pool.close().await;

    // Database-level settings apply to new sessions only: reconnect.
    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    let err = assert_commit_mode_refused_unless_allowed(&pool, "off").await;
    assert!(
        matches!(&err, StorageError::UnsafeCommitMode { value } if value == "off"),
        "unexpected error: {err}"
    );
}

#[tokio::test]
async fn listen_connection_receives_notifications_and_closes_with_the_connection() {
    let cfg = fresh_config("storage_listen").await;
    let (listener, mut notifications, task) = listen_connection(&cfg, &["domain_events", "other"])
        .await
        .expect("listen connection");

    let hot = hot_pool(&cfg).expect("hot pool");
    let sender = hot.get().await.expect("pooled connection");
    sender
        .execute("SELECT pg_notify('domain_events', 'hello')", &[])
        .await
        .expect("notify");

    let n = tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .expect("notification within 5s")
        .expect("channel open");
    assert_eq!(n.channel(), "domain_events");
    assert_eq!(n.payload(), "hello");

    // Killing the backend must close the channel so the subscriber notices.
    let pid: i32 = listener
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    sender
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate listener backend");
    let closed = tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .expect("channel closes within 5s");
    assert!(
        closed.is_none(),
        "got {closed:?} instead of a closed channel"
    );
    let result = task.await.expect("connection task did not panic");
    assert!(result.is_err(), "a killed connection reports an error");
}

#[tokio::test]
async fn dedicated_connection_holds_a_session_lock() {
    let cfg = fresh_config("storage_dedicated").await;
    let (holder, holder_task) = dedicated_connection(&cfg).await.expect("dedicated");
    let (other, _other_task) = dedicated_connection(&cfg).await.expect("dedicated");

    let lock = "SELECT pg_try_advisory_lock(4242)";
    assert!(
        holder
            .query_one(lock, &[])
            .await
            .expect("lock")
            .get::<_, bool>(0)
    );
    assert!(
        !other
            .query_one(lock, &[])
            .await
            .expect("lock")
            .get::<_, bool>(0)
    );

    // Dropping the client closes the session, which releases the lock.
    drop(holder);
    holder_task
        .await
        .expect("task did not panic")
        .expect("orderly close");
    // The backend releases the lock while exiting, a moment after the client side closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !other
        .query_one(lock, &[])
        .await
        .expect("lock")
        .get::<_, bool>(0)
    {
        assert!(
            Instant::now() < deadline,
            "lock not released within 5s of disconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn migrations_apply_once_without_statement_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("0001_create_events.sql"),
        "CREATE TABLE events (id BIGINT PRIMARY KEY, payload BYTEA NOT NULL);",
    )
    .expect("write migration");
    std::fs::write(
        dir.path().join("0002_slow_backfill.sql"),
        // Longer than the statement timeout below: migrations must run without it.
        "SELECT pg_sleep(0.5); INSERT INTO events VALUES (1, '\\x00');",
    )
    .expect("write migration");
    let migrator = sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("migrator");

    let cfg = DatabaseConfig {
        pool_max_size: 1,
        statement_timeout: Duration::from_millis(300),
        ..fresh_config("storage_migrations").await
    };
    let pool = connect_sqlx(&cfg).await.expect("sqlx pool");
    run_migrations(&pool, &migrator).await.expect("migrations");
    run_migrations(&pool, &migrator).await.expect("idempotent");

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("table exists");
    assert_eq!(count, 1);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("migration table");
    assert_eq!(applied, 2);
    // The single pooled connection got its timeout back.
    let timeout: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
        .fetch_one(&pool)
        .await
        .expect("setting");
    assert_eq!(timeout, "300ms");
}

#[tokio::test]
async fn connection_errors_do_not_leak_the_password() {
    let port = domain_testkit::process::free_port();
    let cfg = DatabaseConfig {
        connect_timeout: Duration::from_millis(500),
        pool_wait_timeout: Duration::from_millis(200),
        ..DatabaseConfig::from_url(format!("postgres://app:hunter2@127.0.0.1:{port}/app"))
    };
    let started = Instant::now();
    let sqlx_err = connect_sqlx(&cfg).await.expect_err("nothing listens");
    let (dedicated_err, hot_err) = (
        match dedicated_connection(&cfg).await {
            Ok(_) => panic!("nothing listens, yet the connection succeeded"),
            Err(e) => e,
        },
        hot_pool(&cfg)
            .expect("pool builds lazily")
            .get()
            .await
            .map(drop)
            .map_err(StorageError::from)
            .expect_err("nothing listens"),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for err in [sqlx_err, dedicated_err, hot_err] {
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "password leaked: {text}");
    }
    assert!(!format!("{cfg:?} {}", cfg.url).contains("hunter2"));
}

/// Issue 16: a libpq multi-host URL whose first server is a read-only standby. Every kind of
/// connection — the sqlx pool of start-up, the hot pool, a dedicated connection — skips the
/// standby and lands on the primary; with only the standby listed, start-up refuses it.
#[tokio::test]
async fn multi_host_url_skips_a_standby_for_the_primary() {
    use domain_testkit::pg_ha::{PgHaPair, Replication};
    let pair = PgHaPair::start(Replication::Asynchronous).expect("primary and standby");
    let db = pair.create_database("multi_host").await.expect("database");
    // The standby must have replayed the new database before it is tried.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio_postgres::connect(&pair.standby_url(&db.name), tokio_postgres::NoTls)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the standby never got the database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        pair.standby_port(),
        pair.primary_port(),
        db.name
    );
    let cfg = DatabaseConfig::from_url(url);
    assert_eq!(cfg.hosts().expect("hosts").len(), 2);

    let pool = connect_sqlx(&cfg).await.expect("sqlx pool on the primary");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert!(!in_recovery, "the sqlx pool landed on the standby");
    check_commit_mode(&pool, false)
        .await
        .expect("asynchronous standbys only warn");

    let hot = hot_pool(&cfg).expect("hot pool");
    let client = hot.get().await.expect("pooled connection");
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query");
    assert!(!row.get::<_, bool>(0), "the hot pool landed on the standby");
    let (dedicated, _task) = dedicated_connection(&cfg).await.expect("dedicated");
    let row = dedicated
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("query");
    assert!(
        !row.get::<_, bool>(0),
        "the dedicated connection landed on the standby"
    );

    // The standby alone is refused, naming the reason.
    let only_standby = DatabaseConfig::from_url(pair.standby_url(&db.name));
    let err = connect_sqlx(&only_standby)
        .await
        .expect_err("a standby is not writable")
        .to_string();
    assert!(err.contains("read-only"), "{err}");
}
