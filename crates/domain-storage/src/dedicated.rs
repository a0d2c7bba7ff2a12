//! Dedicated (never pooled) tokio-postgres connections: leader leases and LISTEN/NOTIFY.

use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Notification};

use crate::{DatabaseConfig, PgTlsStream, StorageError};

/// The task driving a dedicated connection. It finishes when the connection closes:
/// `Ok(())` after an orderly close (the [`Client`] was dropped), `Err` when the server or
/// network broke it. A lease holder should treat the task finishing as losing the lease.
pub type ConnectionTask = JoinHandle<Result<(), tokio_postgres::Error>>;

/// Capacity of the notification channel of [`listen_connection`].
const NOTIFICATION_BUFFER: usize = 1024;

/// Opens a connection outside any pool, for state tied to the session such as
/// `pg_try_advisory_lock` leader leases.
///
/// Uses the same settings as the hot pool (keepalives, `tcp_user_timeout`,
/// `statement_timeout`), so a silently dead network is noticed within about
/// `tcp-keepalive-idle + tcp-user-timeout`. The connection is driven by the returned task.
pub async fn dedicated_connection(
    cfg: &DatabaseConfig,
) -> Result<(Client, ConnectionTask), StorageError> {
    let pg = cfg.tokio_postgres_config()?;
    let (client, connection) = connect(cfg, &pg).await?;
    let task = tokio::spawn(connection);
    Ok((client, task))
}

/// Opens a dedicated connection, subscribes it to `channels` with `LISTEN`, and forwards
/// every notification to the returned receiver.
///
/// Channel names are quoted, so they are case-sensitive: `NOTIFY events` (unquoted, folded
/// to lowercase) reaches a listener on `"events"`, not on `"Events"`. Use lowercase names.
///
/// The receiver yields `None` once the connection is gone (server restart, network loss,
/// or the [`Client`] being dropped), so the caller notices and can reconnect and re-query
/// whatever it may have missed; the task's result says why. The receiver must be drained:
/// when it is full, the connection stops being driven (queries on the client wait too)
/// rather than dropping notifications.
pub async fn listen_connection(
    cfg: &DatabaseConfig,
    channels: &[&str],
) -> Result<(Client, mpsc::Receiver<Notification>, ConnectionTask), StorageError> {
    let pg = cfg.tokio_postgres_config()?;
    let (client, mut connection) = connect(cfg, &pg).await?;
    let (tx, rx) = mpsc::channel(NOTIFICATION_BUFFER);
    let task = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    // A dropped receiver just means nobody is interested any more; keep
                    // driving the connection for the client's sake.
                    let _ = tx.send(notification).await;
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(
                        severity = notice.severity(),
                        message = notice.message(),
                        "postgres notice on listen connection"
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "listen connection failed");
                    return Err(error);
                }
                None => return Ok(()),
            }
        }
    });
    // The connection task must already be running: the client's queries only make
    // progress while the connection is polled.
    if !channels.is_empty() {
        let sql: String = channels
            .iter()
            .map(|channel| format!("LISTEN {};", quote_identifier(channel)))
            .collect();
        if let Err(e) = client.batch_execute(&sql).await {
            task.abort();
            return Err(e.into());
        }
    }
    Ok((client, rx, task))
}

/// Connects with an overall deadline: tokio-postgres applies `connect_timeout` to the TCP
/// connect of each host only, not to authentication or the read-write probe.
async fn connect(
    cfg: &DatabaseConfig,
    pg: &tokio_postgres::Config,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, PgTlsStream<tokio_postgres::Socket>>,
    ),
    StorageError,
> {
    let tls_settings = cfg.tls_settings()?;
    let tls = tls_settings.connector()?;
    let hosts = u32::try_from(pg.get_hosts().len().max(1)).unwrap_or(u32::MAX);
    let deadline = cfg.connect_timeout.saturating_mul(hosts);
    match tokio::time::timeout(deadline, pg.connect(tls)).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(error)) => Err(crate::error::name_tls_settings(error, &tls_settings)),
        Err(_) => Err(StorageError::Timeout {
            action: "connecting to the database",
            after: deadline,
        }),
    }
}

/// Quotes an SQL identifier: wraps it in double quotes and doubles embedded ones.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
