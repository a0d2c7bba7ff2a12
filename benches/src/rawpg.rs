//! Phase 1: what PostgreSQL alone can take for the sequencer's row shape on this
//! server. Rows like `seq_events` (bigint ts, smallint instance, int sender, text
//! message id, int[] recipients, three bytea columns) plus a recipients index
//! table, inserted with the same `unnest` statements the writer uses, many rows per
//! transaction, `synchronous_commit = on`, from several connections at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::{Percentiles, micros_histogram};

const SCHEMA: &str = "
DROP TABLE IF EXISTS bench_raw_events, bench_raw_recipients;
CREATE TABLE bench_raw_events (
    ts             bigint   PRIMARY KEY,
    instance_index smallint NOT NULL,
    sender         integer  NOT NULL,
    message_id     text     NOT NULL,
    recipients     integer[] NOT NULL,
    submission     bytea    NOT NULL,
    content        bytea    NOT NULL,
    signature      bytea    NOT NULL
);
CREATE TABLE bench_raw_recipients (
    member_id integer NOT NULL,
    ts        bigint  NOT NULL,
    PRIMARY KEY (member_id, ts)
);";

/// Result of phase 1.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RawResult {
    pub connections: usize,
    pub rows_per_txn: usize,
    pub seconds: f64,
    pub rows: u64,
    pub transactions: u64,
    pub rows_per_sec: f64,
    pub txn_latency: Percentiles,
    pub submission_bytes: usize,
    /// CPU over the phase (the bench's share is the 4 loader connections).
    pub cpu: crate::sysstat::CpuUsage,
    /// PostgreSQL CPU time per inserted row, µs.
    pub postgres_cpu_micros_per_row: f64,
    /// Server settings that matter for the figure.
    pub settings: Vec<(String, String)>,
}

/// Runs phase 1 against `url` for `duration`.
pub async fn run(
    url: &str,
    connections: usize,
    batch: usize,
    duration: Duration,
    payload_bytes: usize,
) -> anyhow::Result<RawResult> {
    let admin = connect(url).await?;
    admin
        .batch_execute(SCHEMA)
        .await
        .context("cannot create the raw tables")?;
    let mut settings = Vec::new();
    for name in [
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "shared_buffers",
        "max_wal_size",
        "full_page_writes",
        "server_version",
    ] {
        let v: String = admin.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
        settings.push((name.to_string(), v));
    }
    // The sequencer stores the signed submission: envelope content plus ids,
    // recipients and the signature around it (about 200 bytes more).
    let submission_bytes = payload_bytes + 200;
    let next_ts = Arc::new(AtomicI64::new(1));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = url.to_string();
        let next_ts = next_ts.clone();
        tasks.push(tokio::spawn(async move {
            writer(&url, c, batch, deadline, submission_bytes, next_ts).await
        }));
    }
    let started = Instant::now();
    let cpu_before = crate::sysstat::sample(&[]);
    let mut hist = micros_histogram();
    let mut txns = 0u64;
    for t in tasks {
        let (h, n) = t.await.context("raw writer panicked")??;
        hist.add(&h).context("histogram merge")?;
        txns += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = crate::sysstat::CpuUsage::between(&cpu_before, &crate::sysstat::sample(&[]));
    let rows = txns * batch as u64;
    // Leave the server as we found it: the sequencer phases should not pay for
    // vacuuming or checkpointing these rows.
    admin
        .batch_execute("DROP TABLE bench_raw_events, bench_raw_recipients")
        .await?;
    let _ = admin.batch_execute("CHECKPOINT").await;
    Ok(RawResult {
        connections,
        rows_per_txn: batch,
        seconds,
        rows,
        transactions: txns,
        rows_per_sec: rows as f64 / seconds,
        txn_latency: Percentiles::of(&hist),
        submission_bytes,
        postgres_cpu_micros_per_row: if rows > 0 {
            cpu.postgres_pct / 100.0 * seconds * 1e6 / rows as f64
        } else {
            0.0
        },
        cpu,
        settings,
    })
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn writer(
    url: &str,
    conn_index: usize,
    batch: usize,
    deadline: Instant,
    submission_bytes: usize,
    next_ts: Arc<AtomicI64>,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
    let mut client = connect(url).await?;
    client.batch_execute("SET synchronous_commit = on").await?;
    let events = client
        .prepare(
            "INSERT INTO bench_raw_events (ts, instance_index, sender, message_id, recipients, submission, content, signature)
             SELECT t.ts, $2, t.sender, t.message_id, t.recipients::int[], t.submission, t.content, t.signature
             FROM unnest($1::bigint[], $3::int[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::bytea[])
               AS t(ts, sender, message_id, recipients, submission, content, signature)",
        )
        .await?;
    let recipients = client
        .prepare("INSERT INTO bench_raw_recipients (member_id, ts) SELECT * FROM unnest($1::int[], $2::bigint[])")
        .await?;
    let filler: Vec<u8> = (0..submission_bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let content = vec![7u8; 150];
    let signature = vec![9u8; 64];
    let sender = conn_index as i32 + 1;
    let subscriber = 100 + conn_index as i32;
    let index: i16 = (conn_index % 2) as i16;
    let mut hist = micros_histogram();
    let mut n = 0u64;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let first = next_ts.fetch_add(batch as i64, Ordering::Relaxed);
        let ts: Vec<i64> = (first..first + batch as i64).collect();
        let senders = vec![sender; batch];
        let mids: Vec<String> = (0..batch)
            .map(|i| format!("raw-{conn_index}-{}", seq + i as u64))
            .collect();
        seq += batch as u64;
        let rec: Vec<String> = vec![format!("{{{sender},{subscriber}}}"); batch];
        let subs: Vec<&[u8]> = vec![filler.as_slice(); batch];
        let cons: Vec<&[u8]> = vec![content.as_slice(); batch];
        let sigs: Vec<&[u8]> = vec![signature.as_slice(); batch];
        let mut rm = Vec::with_capacity(batch * 2);
        let mut rt = Vec::with_capacity(batch * 2);
        for t in &ts {
            rm.push(sender);
            rt.push(*t);
            rm.push(subscriber);
            rt.push(*t);
        }
        let t0 = Instant::now();
        let tx = client.transaction().await?;
        let params: [&(dyn ToSql + Sync); 8] =
            [&ts, &index, &senders, &mids, &rec, &subs, &cons, &sigs];
        tx.execute(&events, &params).await?;
        tx.execute(&recipients, &[&rm, &rt]).await?;
        tx.commit().await?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        n += 1;
    }
    Ok((hist, n))
}
