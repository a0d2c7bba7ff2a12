//! PostgreSQL-side counters per phase: transactions, rows, WAL volume, and the
//! commits and rollbacks of the bench database, from `pg_stat_database` and the
//! WAL position.

use anyhow::Context as _;
use tokio_postgres::NoTls;

#[derive(Debug, Clone, Default)]
pub struct PgSample {
    xact_commit: i64,
    xact_rollback: i64,
    tup_inserted: i64,
    tup_returned: i64,
    tup_fetched: i64,
    wal_lsn_bytes: i64,
    /// Per table: (scans = seq_scan + idx_scan, rows written = ins + upd + del).
    tables: std::collections::BTreeMap<String, (i64, i64)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgDelta {
    pub commits_per_sec: f64,
    pub rollbacks_per_sec: f64,
    pub rows_inserted_per_sec: f64,
    pub rows_read_per_sec: f64,
    /// Database reads (lookups) per second: index and sequential scans of the sequencer's
    /// tables (`seq_*`), summed. Each read query of the sequencer (a page of events, the
    /// safe watermark, a token check) counts once per table it touches, whatever it returns;
    /// the figure that must stay flat when subscribers are added.
    pub reads_per_sec: f64,
    /// The same per table: which lookups grow (e.g. `seq_events` page reads with the
    /// subscribers, `seq_dedup` with the sends).
    pub table_scans_per_sec: std::collections::BTreeMap<String, f64>,
    /// Server-wide WAL (other databases on the server count too).
    pub wal_mb_per_sec: f64,
    pub commits_per_event: f64,
    pub wal_bytes_per_event: f64,
    /// Per table: scans (index or sequential) per acknowledged event. Shows how
    /// many lookups each event causes: token checks, watermark reads, event reads.
    pub table_scans_per_event: std::collections::BTreeMap<String, f64>,
    /// Per table: rows inserted, updated or deleted per acknowledged event.
    pub table_writes_per_event: std::collections::BTreeMap<String, f64>,
}

/// A plain connection for reading statistics; its connection task ends with the client.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("pg stats connect")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn sample(url: &str) -> anyhow::Result<PgSample> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_returned, tup_fetched,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    let mut tables = std::collections::BTreeMap::new();
    for r in client
        .query(
            "SELECT relname::text, seq_scan + coalesce(idx_scan, 0), n_tup_ins + n_tup_upd + n_tup_del
             FROM pg_stat_user_tables WHERE relname LIKE 'seq\\_%'",
            &[],
        )
        .await?
    {
        tables.insert(r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, i64>(2)));
    }
    Ok(PgSample {
        tables,
        xact_commit: row.get(0),
        xact_rollback: row.get(1),
        tup_inserted: row.get(2),
        tup_returned: row.get(3),
        tup_fetched: row.get(4),
        wal_lsn_bytes: row.get(5),
    })
}

impl PgDelta {
    /// Statistics are flushed by backends with a delay of up to a second, so
    /// rates are approximate for short windows.
    pub fn between(a: &PgSample, b: &PgSample, seconds: f64, events: u64) -> Self {
        let per_s = |x: i64| x as f64 / seconds.max(1e-9);
        let ev = (events as f64).max(1.0);
        let commits = b.xact_commit - a.xact_commit;
        let wal = b.wal_lsn_bytes - a.wal_lsn_bytes;
        // One counter of every table's (scans, writes) over the window, divided by `by`.
        let per_table = |counter: fn(&(i64, i64)) -> i64, by: f64| {
            b.tables
                .iter()
                .map(|(t, now)| {
                    let before = a.tables.get(t).map_or(0, counter);
                    (t.clone(), (counter(now) - before) as f64 / by)
                })
                .collect::<std::collections::BTreeMap<String, f64>>()
        };
        let scans_per_sec = per_table(|t| t.0, seconds.max(1e-9));
        Self {
            commits_per_sec: per_s(commits),
            rollbacks_per_sec: per_s(b.xact_rollback - a.xact_rollback),
            rows_inserted_per_sec: per_s(b.tup_inserted - a.tup_inserted),
            rows_read_per_sec: per_s(
                (b.tup_returned - a.tup_returned) + (b.tup_fetched - a.tup_fetched),
            ),
            reads_per_sec: scans_per_sec.values().sum(),
            table_scans_per_sec: scans_per_sec,
            wal_mb_per_sec: per_s(wal) / 1e6,
            commits_per_event: commits as f64 / ev,
            wal_bytes_per_event: wal as f64 / ev,
            table_scans_per_event: per_table(|t| t.0, ev),
            table_writes_per_event: per_table(|t| t.1, ev),
        }
    }
}

/// Databases on the server besides `postgres` and the templates. Tests that fail keep
/// theirs on the shared test server, and autovacuum visits every database in turn: with
/// hundreds of them it runs all the time and its CPU counts as PostgreSQL's (on
/// 2026-12-08 the shared test server held 553; the effect on a run was not isolated).
pub async fn other_databases(url: &str) -> anyhow::Result<i64> {
    let n = connect(url)
        .await?
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
            &[],
        )
        .await?
        .get(0);
    Ok(n)
}

/// More databases than this on the server (the bench's own included) get a warning.
pub const MANY_DATABASES: i64 = 20;
