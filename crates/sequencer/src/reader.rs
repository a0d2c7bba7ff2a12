//! The shared reader: one per instance. It follows the safe watermark (woken
//! by LISTEN/NOTIFY, polling only as a fallback), reads every newly deliverable
//! event once, decodes it once, and publishes it to all local subscriptions, so
//! database reads do not grow with the number of subscribers.

use std::sync::Arc;
use std::time::Duration;

use domain_proto::v1::{Envelope, SubmissionRequest};
use prost::Message as _;
use tokio::sync::{Mutex, Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::store::{self, BROADCAST_MEMBER_ID, StoredEvent};

/// An event decoded once for every subscriber of this instance.
#[derive(Debug)]
pub struct GlobalEvent {
    pub ts: i64,
    pub sender: i32,
    pub message_id: String,
    pub recipients: Vec<i32>,
    pub envelopes: Vec<Envelope>,
    pub content: Vec<u8>,
    pub signature: Vec<u8>,
    /// The sender's `traceparent`, delivered to every recipient.
    pub trace_context: Option<String>,
}

impl GlobalEvent {
    pub fn from_stored(e: StoredEvent) -> Self {
        // Stored submissions were decoded and validated before they were written;
        // a decode failure here would mean a corrupted row, and an empty envelope
        // list keeps counters consistent while the signature check exposes it.
        let envelopes = SubmissionRequest::decode(e.submission.as_slice())
            .map(|s| s.envelopes)
            .unwrap_or_default();
        Self {
            ts: e.ts,
            sender: e.sender,
            message_id: e.message_id,
            recipients: e.recipients,
            envelopes,
            content: e.content,
            signature: e.signature,
            trace_context: e.trace_context,
        }
    }

    /// Returns true when the event belongs to the member's stream.
    pub fn is_for(&self, member_id: i32, registered_ts: i64) -> bool {
        if self.recipients.first() == Some(&BROADCAST_MEMBER_ID) {
            self.ts > registered_ts
        } else {
            self.recipients.contains(&member_id)
        }
    }
}

/// A contiguous slice of the global stream: every event in `(after, up_to]`.
#[derive(Debug)]
pub struct EventBatch {
    pub after: i64,
    pub up_to: i64,
    pub events: Vec<Arc<GlobalEvent>>,
}

struct ReaderInner {
    position: i64,
    tx: broadcast::Sender<Arc<EventBatch>>,
}

/// Handle shared between the reader task and subscriptions.
pub struct SharedReader {
    inner: Mutex<ReaderInner>,
    pub wake: Notify,
    started: tokio::sync::watch::Sender<bool>,
}

impl SharedReader {
    pub fn new(buffer: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(buffer.max(16));
        let (started, _) = tokio::sync::watch::channel(false);
        Arc::new(Self {
            inner: Mutex::new(ReaderInner { position: 0, tx }),
            wake: Notify::new(),
            started,
        })
    }

    /// Subscribes to live batches. Returns the position from which live batches
    /// start: the caller must read everything up to it from the database.
    pub async fn subscribe(&self) -> (i64, broadcast::Receiver<Arc<EventBatch>>) {
        let mut started = self.started.subscribe();
        let _ = started.wait_for(|s| *s).await;
        let inner = self.inner.lock().await;
        (inner.position, inner.tx.subscribe())
    }

    /// Runs the reader loop until shutdown.
    pub async fn run(
        self: Arc<Self>,
        pool: deadpool_postgres::Pool,
        poll_interval: Duration,
        page: i64,
        shutdown: CancellationToken,
    ) {
        // Start at the current safe watermark: subscriptions catch up from the
        // database themselves, the live feed only needs what comes next.
        loop {
            let start = match pool.get().await {
                Ok(c) => store::safe_watermark(&**c).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match start {
                Ok(p) => {
                    self.inner.lock().await.position = p;
                    self.started.send_replace(true);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "reader cannot read the safe watermark");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        loop {
            if let Err(error) = self.catch_up(&pool, page).await {
                tracing::warn!(%error, "reader failed to read events");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                // Fallback only: notifications normally wake us first.
                _ = tokio::time::sleep(poll_interval) => {}
            }
        }
    }

    async fn catch_up(&self, pool: &deadpool_postgres::Pool, page: i64) -> Result<(), String> {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        loop {
            let position = self.inner.lock().await.position;
            let safe = store::safe_watermark(&**client)
                .await
                .map_err(|e| e.to_string())?;
            if safe <= position {
                return Ok(());
            }
            let events = store::read_global(&**client, position, safe, page)
                .await
                .map_err(|e| e.to_string())?;
            let full = events.len() as i64 >= page;
            let up_to = if full {
                events.last().map_or(safe, |e| e.ts)
            } else {
                safe
            };
            let events: Vec<Arc<GlobalEvent>> = events
                .into_iter()
                .map(|e| Arc::new(GlobalEvent::from_stored(e)))
                .collect();
            metrics::counter!(m::EVENTS_READ).increment(events.len() as u64);
            let mut inner = self.inner.lock().await;
            let batch = Arc::new(EventBatch {
                after: inner.position,
                up_to,
                events,
            });
            inner.position = up_to;
            // No receivers is fine: nobody is subscribed on this instance.
            let _ = inner.tx.send(batch);
            drop(inner);
            if !full {
                return Ok(());
            }
        }
    }
}
