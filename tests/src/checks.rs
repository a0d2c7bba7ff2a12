//! Assertions shared by the end-to-end tests: expected gRPC status with its
//! `domain-error-code`, stream ends, database access, log retention.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{ClientError, SequencerConnection};
use domain_testkit::process::TestLogs;
use tonic::{Code, Status};

/// Metadata key of the stable error code.
pub use domain_proto::error::ERROR_CODE_HEADER as ERROR_CODE;

/// A test that returns `Err` does not panic: mark its logs failed so their tails
/// are printed, and mark a passing test so its logs are deleted.
pub async fn keep_logs_on_error<T>(
    logs: &TestLogs,
    body: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let result = body.await;
    if result.is_err() {
        logs.mark_failed();
    } else {
        logs.passed();
    }
    result
}

pub async fn db_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub use domain_proto::error::error_code;

/// Checks the gRPC code and the `domain-error-code` metadata (None: must be absent).
pub fn expect_status(
    st: &Status,
    code: Code,
    domain_code: Option<&str>,
    case: &str,
) -> anyhow::Result<()> {
    println!(
        "  {case}: {:?} {ERROR_CODE}={:?} message={:?}",
        st.code(),
        error_code(st),
        st.message()
    );
    ensure!(
        st.code() == code && error_code(st) == domain_code,
        "{case}: expected {code:?} with {ERROR_CODE}={domain_code:?}, got {:?} with {:?}: {}",
        st.code(),
        error_code(st),
        st.message()
    );
    Ok(())
}

/// Extracts the gRPC status of a call that must fail.
pub fn status_of<T: std::fmt::Debug>(
    r: Result<T, ClientError>,
    case: &str,
) -> anyhow::Result<Status> {
    match r {
        Ok(v) => bail!("{case}: expected a rejection, got {v:?}"),
        Err(ClientError::Status(st)) => Ok(st),
        Err(e) => bail!("{case}: expected a gRPC status, got {e}"),
    }
}

/// The status a subscription fails with: either the call itself or the first
/// stream item. An event or an orderly end instead is an error.
pub async fn subscribe_error(
    conn: &SequencerConnection,
    from: i64,
    case: &str,
) -> anyhow::Result<Status> {
    let mut stream = match conn.subscribe(from).await {
        Err(ClientError::Status(st)) => return Ok(st),
        Err(e) => bail!("{case}: subscribe failed without a status: {e}"),
        Ok(s) => s,
    };
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Err(_) => bail!("{case}: neither an event nor an error within 10s"),
        Ok(Err(st)) => Ok(st),
        Ok(Ok(Some(r))) => bail!(
            "{case}: expected an error, got event {:?}",
            r.event.map(|e| e.counter)
        ),
        Ok(Ok(None)) => bail!("{case}: stream ended without an error"),
    }
}

/// Reads the next event of a stream (10 s limit).
pub async fn next_event(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    what: &str,
) -> anyhow::Result<pb::SequencedEvent> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .with_context(|| format!("{what}: no event within 10s"))?
        .with_context(|| format!("{what}: stream failed"))?
        .and_then(|r| r.event)
        .with_context(|| format!("{what}: stream ended"))
}

/// Content of the first delivered envelope of an event.
pub fn content_of(e: &pb::SequencedEvent) -> Vec<u8> {
    e.envelopes
        .first()
        .and_then(|d| d.envelope.as_ref())
        .map(|env| env.content.to_vec())
        .unwrap_or_default()
}

/// Waits for a live stream to fail; returns the status and when it arrived.
pub async fn stream_end(
    mut stream: tonic::Streaming<pb::SubscribeResponse>,
    what: String,
) -> anyhow::Result<(Status, Instant)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => bail!("{what}: still open 10 s after the member was disabled"),
            Ok(Err(st)) => return Ok((st, Instant::now())),
            Ok(Ok(None)) => bail!("{what}: ended without a status"),
            Ok(Ok(Some(r))) => println!(
                "  {what}: event {:?} before the end",
                r.event.map(|e| e.counter)
            ),
        }
    }
}
