//! One member's subscription: catch up from the database starting at the
//! nearest counter checkpoint, then follow the shared reader's live feed.
//! Counters are derived, never stored per event: the member's n-th event (in
//! timestamp order, behind the safe watermark) has counter n on every instance.

use crate::error::ServiceError as _;
use std::collections::HashMap;
use std::sync::Arc;

use domain_proto::common::v1::Signature as ProtoSignature;
use domain_proto::sequencer::v1::{DeliveredEnvelope, SequencedEvent, SubscribeResponse};
use std::pin::Pin;
use std::task::{Context, Poll};

use domain_time::Timestamp;
use prost::Message as _;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::SequencerError;
use crate::metrics as m;
use crate::reader::{FeedError, GlobalEvent, ReadPage, SharedReader};
use crate::store::{self, MemberRow};

pub struct SubscriptionContext {
    pub pool: deadpool_postgres::Pool,
    pub reader: Arc<SharedReader>,
    pub sequencer_fingerprint: String,
    pub revoked: broadcast::Receiver<String>,
    pub shutdown: CancellationToken,
    pub page: ReadPage,
}

/// What a subscription sends towards its client.
pub type Item = Result<SubscribeResponse, Status>;

/// An [`Item`] as the outbox queues it, with its size in bytes. Boxed because a channel
/// allocates its slots 32 at a time when it is created: with the 208-byte response inline,
/// that was 7 KiB for every subscription, idle or not, a third of what an idle one held
/// (issue 17, RSS per idle subscriber). Boxed, the first block is 768 bytes.
type Queued = (Result<Box<SubscribeResponse>, Status>, u32);

/// Creates the buffer between a subscription task and its gRPC response stream, bounded
/// both in events (`reader.subscription-buffer`) and in encoded bytes
/// (`reader.subscription-buffer-bytes`): a client that reads slowly makes its task wait,
/// holding no more than that (plus the page or batch it is delivering).
pub fn outbox(events: usize, bytes: usize) -> (Outbox, SubscriptionStream) {
    let max = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
    let budget = Arc::new(Semaphore::new(max as usize));
    let (tx, rx) = mpsc::channel(events.max(1));
    (
        Outbox {
            tx,
            budget: budget.clone(),
            max,
        },
        SubscriptionStream { rx, budget },
    )
}

/// Sending side of [`outbox`].
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    max: u32,
}

/// The client went away.
#[derive(Debug)]
pub struct Gone;

impl Outbox {
    /// Queues `item` once the buffer has room for it, in events and bytes. An item larger
    /// than the whole byte budget waits for the buffer to be empty.
    pub async fn send(&self, item: Item) -> Result<(), Gone> {
        let bytes = match &item {
            Ok(r) => u32::try_from(r.encoded_len())
                .unwrap_or(u32::MAX)
                .min(self.max),
            Err(_) => 0,
        };
        // The permits of queued items come back only through the stream: when the client
        // is gone they never do, so waiting must also end when the stream is dropped.
        tokio::select! {
            permit = self.budget.acquire_many(bytes) => match permit {
                Ok(p) => p.forget(),
                Err(_) => return Err(Gone),
            },
            _ = self.tx.closed() => return Err(Gone),
        }
        self.tx
            .send((item.map(Box::new), bytes))
            .await
            .map_err(|_| Gone)
    }

    /// Resolves when the client's stream is dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The gRPC response stream of a subscription: returns each item's bytes to the budget
/// as the transport takes it.
pub struct SubscriptionStream {
    rx: mpsc::Receiver<Queued>,
    budget: Arc<Semaphore>,
}

impl tokio_stream::Stream for SubscriptionStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((item, bytes))) => {
                self.budget.add_permits(bytes as usize);
                Poll::Ready(Some(item.map(|r| *r)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Open subscriptions per member on this instance, capped: each holds buffers (and,
/// while it catches up, a page of events), so one member must not open them without
/// bound.
pub struct MemberSlots {
    limit: usize,
    open: Arc<std::sync::Mutex<HashMap<i32, usize>>>,
}

/// One counted subscription; released when dropped, i.e. when its task ends for any
/// reason (client gone, error, disable, shutdown, panic).
pub struct MemberSlot {
    member_id: i32,
    open: Arc<std::sync::Mutex<HashMap<i32, usize>>>,
}

impl MemberSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            open: Arc::default(),
        }
    }

    /// Counts a new subscription of `member`, or refuses it with
    /// [`SequencerError::TooManySubscriptions`] when the member is at the limit.
    pub fn acquire(&self, member: &MemberRow) -> Result<MemberSlot, SequencerError> {
        // Nothing panics under this lock; a poisoned one still holds correct counts.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(member.id).or_insert(0);
        if *n >= self.limit {
            metrics::counter!(m::SUBSCRIPTIONS_REFUSED).increment(1);
            return Err(SequencerError::TooManySubscriptions {
                member: member.member.clone(),
                limit: self.limit,
            });
        }
        *n += 1;
        Ok(MemberSlot {
            member_id: member.id,
            open: self.open.clone(),
        })
    }

    /// Open subscriptions of the member with database id `member_id`.
    #[cfg(test)]
    pub fn open(&self, member_id: i32) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&member_id).copied().unwrap_or(0)
    }
}

impl Drop for MemberSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.member_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.member_id);
            }
        }
    }
}

/// How long a failed subscription waits to queue its final status for the client.
const STATUS_SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

struct Cursor {
    /// Counter of the last event counted (delivered or skipped); -1 before the first.
    counter: i64,
    /// Timestamp of that event (the epoch before the first).
    prev_ts: Timestamp,
    /// Everything at or below this timestamp has been processed.
    position: Timestamp,
}

/// Streams the member's events from `from_counter` into `out` until the client
/// leaves, the member is disabled, the subscriber falls behind, or shutdown.
/// `slot` counts the subscription against the member's limit while this runs.
pub async fn run(
    mut ctx: SubscriptionContext,
    member: Arc<MemberRow>,
    from_counter: i64,
    out: Outbox,
    slot: MemberSlot,
) {
    metrics::gauge!(m::ACTIVE_SUBSCRIPTIONS).increment(1.0);
    let result = stream(&mut ctx, &member, from_counter, &out).await;
    metrics::gauge!(m::ACTIVE_SUBSCRIPTIONS).decrement(1.0);
    if let Err(e) = result {
        tracing::info!(member = %member.member, error = %e, "subscription ended");
        // The status queues behind the events still buffered; a client that does not
        // read at all must not keep the task (and its slot) for ever.
        let _ = tokio::time::timeout(STATUS_SEND_LIMIT, out.send(Err(e.to_status()))).await;
    }
    drop(slot);
}

async fn stream(
    ctx: &mut SubscriptionContext,
    member: &MemberRow,
    from_counter: i64,
    out: &Outbox,
) -> Result<(), SequencerError> {
    // Subscribe to the live feed first so nothing published during catch-up is missed.
    let (live_from, mut live) = ctx.reader.subscribe(member.id).await;
    let mut cursor = catch_up(ctx, member, from_counter, live_from, out).await?;
    // A disable handled while catching up ends the stream here at the latest.
    check_revoked(ctx, member).await?;
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                return Err(SequencerError::InstanceOffline("sequencer is shutting down; resume elsewhere".into()));
            }
            revoked = ctx.revoked.recv() => match revoked {
                Ok(name) if name == member.member => {
                    return Err(SequencerError::MemberDisabled(name));
                }
                Ok(_) | Err(broadcast::error::RecvError::Closed) => {}
                // Revocations were missed: ask the database instead of guessing.
                Err(broadcast::error::RecvError::Lagged(_)) => still_enabled(ctx, member).await?,
            },
            _ = out.closed() => return Ok(()),
            batch = live.recv() => {
                let batch = match batch {
                    Ok(b) => b,
                    // The feed dropped batches this subscriber had not taken, to stay in
                    // its batch and byte limits: resuming from the database is gap-free.
                    Err(FeedError::Lagged) => {
                        metrics::counter!(m::SUBSCRIBERS_CUT).increment(1);
                        return Err(SequencerError::SubscriberTooSlow { resume_from: cursor.counter + 1 });
                    }
                    Err(FeedError::Closed) => {
                        return Err(SequencerError::InstanceOffline("reader stopped".into()));
                    }
                };
                // The batches the feed skipped held nothing for this member.
                if let Some(skipped) = live.take_skipped_through() {
                    cursor.position = cursor.position.max(skipped);
                }
                if batch.after > cursor.position {
                    // Cannot happen while the reader publishes contiguous ranges; refuse
                    // to guess rather than risk a gap.
                    return Err(SequencerError::Internal(format!(
                        "live feed gap: expected events after {}, got batch after {}", cursor.position, batch.after)));
                }
                for event in &batch.events {
                    if event.ts <= cursor.position || !event.is_for(member.id, member.registered_ts) {
                        continue;
                    }
                    deliver(ctx, member, event, &mut cursor, from_counter, out).await?;
                }
                cursor.position = cursor.position.max(batch.up_to);
            }
        }
    }
}

/// Ends the stream when a revocation of `member` is pending on the channel; when some
/// were missed (the channel lagged), the database decides.
async fn check_revoked(
    ctx: &mut SubscriptionContext,
    member: &MemberRow,
) -> Result<(), SequencerError> {
    loop {
        match ctx.revoked.try_recv() {
            Ok(name) if name == member.member => {
                return Err(SequencerError::MemberDisabled(name));
            }
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                still_enabled(ctx, member).await?;
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                return Ok(());
            }
        }
    }
}

/// `MemberDisabled` unless the member is still enabled in the database.
async fn still_enabled(
    ctx: &SubscriptionContext,
    member: &MemberRow,
) -> Result<(), SequencerError> {
    let conn = ctx
        .pool
        .get()
        .await
        .map_err(|e| SequencerError::Database(e.to_string()))?;
    let row = conn
        .query_opt(
            "SELECT enabled FROM seq_members WHERE id = $1",
            &[&member.id],
        )
        .await
        .map_err(|e| SequencerError::Database(e.to_string()))?;
    match row.map(|r| r.get::<_, bool>(0)) {
        Some(true) => Ok(()),
        _ => Err(SequencerError::MemberDisabled(member.member.clone())),
    }
}

/// Delivers the member's events from `from_counter` up to `up_to` (where the live feed
/// starts) from the database.
///
/// Each page is read in its own short transaction, and the connection is back in the
/// pool before any of the page's events is sent: waiting on a client that reads slowly
/// (or never) must hold neither a pooled connection nor a snapshot, which would starve
/// the instance's other work and pin the vacuum horizon of the whole database. Pruning
/// may therefore run between two pages; [`read_page`] notices it and repositions.
async fn catch_up(
    ctx: &mut SubscriptionContext,
    member: &MemberRow,
    from_counter: i64,
    up_to: Timestamp,
    out: &Outbox,
) -> Result<Cursor, SequencerError> {
    let mut cursor = None;
    loop {
        let page = read_page(ctx, member, from_counter, up_to, &mut cursor).await?;
        // A member disabled during its catch-up does not get the rest of its backlog.
        check_revoked(ctx, member).await?;
        let Some(c) = cursor.as_mut() else {
            return Err(SequencerError::Internal(
                "catch-up page without cursor".into(),
            ));
        };
        for e in page.events {
            let event = GlobalEvent::from_stored(e);
            deliver(ctx, member, &event, c, from_counter, out).await?;
        }
        if !page.truncated {
            break;
        }
    }
    let mut cursor =
        cursor.ok_or_else(|| SequencerError::Internal("catch-up without cursor".into()))?;
    cursor.position = cursor.position.max(up_to);
    Ok(cursor)
}

/// Reads the next catch-up page after `cursor` (positioning it first, on the first page)
/// in one short REPEATABLE READ transaction, and returns with the connection released.
///
/// Counters stay exact across pages although each has its own snapshot: a page sees
/// either the old lower bound or a new one together with the checkpoints pruning wrote
/// at it (one transaction). When the bound passed the cursor between pages, the events
/// between them are gone or invisible, and the member's newest checkpoint at or below
/// the bound counts them: if the member still needed one of them, the stream ends with
/// `EVENTS_PRUNED`, exactly as a fresh subscription from that counter would; if it was
/// only counting towards `from_counter`, the cursor moves to the checkpoint.
async fn read_page(
    ctx: &SubscriptionContext,
    member: &MemberRow,
    from_counter: i64,
    up_to: Timestamp,
    cursor: &mut Option<Cursor>,
) -> Result<store::EventPage, SequencerError> {
    let db = |e: tokio_postgres::Error| SequencerError::Database(e.to_string());
    let mut conn = ctx
        .pool
        .get()
        .await
        .map_err(|e| SequencerError::Database(e.to_string()))?;
    // One snapshot per page: a prune running concurrently must not delete rows between
    // the bound check and the reading, or counters would shift. Everything up to `up_to`
    // was committed before the reader published it, so the snapshot sees all of it.
    let client = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let lower = store::lower_bound(&*client).await?;
    // Events at or below the pruning bound are gone: the member's last checkpoint at or
    // below the bound tells which counters they had.
    let pruned = if lower > member.registered_ts {
        store::checkpoint_at_or_below(&*client, member.id, lower).await?
    } else {
        None
    };
    match cursor {
        None => {
            if let Some(store::Checkpoint {
                counter: pruned_through,
                ..
            }) = pruned
                && from_counter <= pruned_through
            {
                return Err(SequencerError::EventsPruned {
                    counter: from_counter,
                    oldest: pruned_through + 1,
                });
            }
            let store::Checkpoint {
                counter: cp_counter,
                ts: cp_ts,
            } = store::checkpoint_below(&*client, member.id, from_counter)
                .await?
                .unwrap_or(store::Checkpoint {
                    counter: -1,
                    ts: member.registered_ts,
                });
            let mut c = Cursor {
                counter: cp_counter,
                prev_ts: if cp_counter >= 0 {
                    cp_ts
                } else {
                    Timestamp::EPOCH
                },
                position: cp_ts,
            };
            // Skip phase: count timestamps only, from the checkpoint to the requested
            // counter. Database work only (nothing waits on the client), so it stays in
            // this first transaction.
            while c.counter + 1 < from_counter {
                let tss = store::member_timestamps(
                    &*client,
                    member.id,
                    member.registered_ts,
                    c.position,
                    up_to,
                    10_000,
                    lower,
                )
                .await?;
                if tss.is_empty() {
                    // Every event up to the live position is counted and the requested
                    // counter is not reached yet: normal when this instance's reader trails
                    // the one that served the member, but not past the database's safe
                    // watermark, below which every instance counts the same events.
                    ahead_of_history(&*client, member, from_counter, &c, lower).await?;
                    break;
                }
                for ts in tss {
                    if c.counter + 1 >= from_counter {
                        break;
                    }
                    c.counter += 1;
                    c.prev_ts = ts;
                    c.position = ts;
                }
            }
            *cursor = Some(c);
        }
        Some(c) => {
            if let Some(store::Checkpoint {
                counter: pruned_through,
                ts: cp_ts,
            }) = pruned
                && pruned_through > c.counter
            {
                // Pruning moved past the cursor since the previous page.
                let next = (c.counter + 1).max(from_counter);
                if next <= pruned_through {
                    return Err(SequencerError::EventsPruned {
                        counter: next,
                        oldest: pruned_through + 1,
                    });
                }
                *c = Cursor {
                    counter: pruned_through,
                    prev_ts: cp_ts,
                    position: cp_ts,
                };
            }
        }
    }
    let Some(c) = cursor.as_ref() else {
        return Err(SequencerError::Internal("catch-up cursor not set".into()));
    };
    let page = store::member_events(
        &*client,
        member.id,
        member.registered_ts,
        c.position,
        up_to,
        ctx.page.rows,
        lower,
        ctx.page.bytes,
    )
    .await?;
    client.commit().await.map_err(db)?;
    Ok(page)
}

/// Fails with `SEQ_COUNTER_AHEAD` when the member's events up to the current safe watermark
/// (counted on from `c`) do not reach `from_counter - 1`. A member can only have seen
/// counters below that many events, so asking beyond means the database lost events it
/// received (it went back in time: an asynchronous standby was promoted). Refusing tells the
/// member at once; waiting would leave it stalled until new events fill the counters again
/// (and only then would it see the fork).
async fn ahead_of_history(
    client: &impl tokio_postgres::GenericClient,
    member: &MemberRow,
    from_counter: i64,
    c: &Cursor,
    lower: Timestamp,
) -> Result<(), SequencerError> {
    let safe = store::safe_watermark(client).await?;
    let mut counted = c.counter;
    let mut position = c.position;
    while counted + 1 < from_counter {
        let tss = store::member_timestamps(
            client,
            member.id,
            member.registered_ts,
            position,
            safe,
            10_000,
            lower,
        )
        .await?;
        let Some(last) = tss.last() else {
            return Err(SequencerError::CounterAhead {
                counter: from_counter,
                next: counted + 1,
            });
        };
        counted += i64::try_from(tss.len()).unwrap_or(i64::MAX);
        position = *last;
    }
    Ok(())
}

async fn deliver(
    ctx: &SubscriptionContext,
    member: &MemberRow,
    event: &GlobalEvent,
    cursor: &mut Cursor,
    from_counter: i64,
    out: &Outbox,
) -> Result<(), SequencerError> {
    cursor.counter += 1;
    let prev = cursor.prev_ts;
    cursor.prev_ts = event.ts;
    cursor.position = event.ts;
    if cursor.counter < from_counter {
        return Ok(());
    }
    let sequenced = to_member_event(
        event,
        member,
        cursor.counter,
        prev,
        &ctx.sequencer_fingerprint,
    );
    // Waiting here is the subscriber's bounded buffer: if it stays full, the
    // shared feed overtakes us and the subscription is cut as too slow. Nothing
    // database-side is held while waiting.
    tokio::select! {
        sent = out.send(Ok(SubscribeResponse {
            event: Some(sequenced),
        })) => sent.map_err(|Gone| SequencerError::Internal("client went away".into()))?,
        _ = ctx.shutdown.cancelled() => {
            return Err(SequencerError::InstanceOffline("sequencer is shutting down; resume elsewhere".into()));
        }
    }
    metrics::counter!(m::EVENTS_DELIVERED).increment(1);
    Ok(())
}

/// Builds the member's view: its own envelopes, the shared signed content, and
/// the message id only in the sender's receipt.
pub fn to_member_event(
    event: &GlobalEvent,
    member: &MemberRow,
    counter: i64,
    prev_ts: Timestamp,
    fingerprint: &str,
) -> SequencedEvent {
    let envelopes = event
        .envelopes
        .iter()
        .enumerate()
        .filter(|(_, e)| e.broadcast || e.recipients.iter().any(|r| r == &member.member))
        .map(|(i, e)| DeliveredEnvelope {
            index: i as u32,
            envelope: Some(e.clone()),
        })
        .collect();
    SequencedEvent {
        counter,
        timestamp_micros: event.ts.as_micros(),
        previous_timestamp_micros: prev_ts.as_micros(),
        content: event.content.clone(),
        signature: Some(ProtoSignature {
            signature: event.auth.signature.clone(),
            signer_fingerprint: fingerprint.to_string(),
            purpose: event.auth.purpose as i32,
        }),
        batch_proof: event.auth.batch_proof.clone(),
        envelopes,
        message_id: if event.sender == member.id {
            event.message_id.clone()
        } else {
            String::new()
        },
        trace_context: event.trace_context.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    fn event(bytes: usize) -> Item {
        Ok(SubscribeResponse {
            event: Some(SequencedEvent {
                content: vec![7; bytes],
                ..Default::default()
            }),
        })
    }

    /// Every subscription's channel allocates its first 32 slots when it is created, idle
    /// or not: a queued item must stay a pointer and a size, not the response itself (216
    /// bytes per slot before, 7 KiB per subscription).
    #[test]
    fn a_queued_item_is_a_pointer_and_a_size() {
        assert!(
            std::mem::size_of::<Queued>() <= 24,
            "{} bytes",
            std::mem::size_of::<Queued>()
        );
    }

    /// Issue 11 item 3 (read side): a subscription's buffer towards its client is bounded
    /// in bytes, not only in events; an event over the whole budget still goes, alone.
    #[tokio::test]
    async fn outbox_is_bounded_in_bytes_item_3() {
        let (out, mut stream) = outbox(100, 1000);
        out.send(event(600)).await.expect("fits");
        // A second 600-byte event does not fit until the first is taken.
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(100), out.send(event(600))).await;
        assert!(blocked.is_err(), "the second event must wait for room");
        assert!(stream.next().await.is_some());
        out.send(event(600))
            .await
            .expect("room after the first was taken");
        assert!(stream.next().await.is_some());
        // Larger than the budget: waits for an empty buffer, then goes.
        out.send(event(5000)).await.expect("alone");
        assert!(stream.next().await.is_some());
        // Statuses cost nothing.
        out.send(event(900)).await.expect("fits");
        out.send(Err(Status::internal("x"))).await.expect("status");
        // A sender waiting for room gives up when the client's stream goes.
        let waiting = tokio::spawn(async move { out.send(event(900)).await });
        tokio::task::yield_now().await;
        drop(stream);
        assert!(waiting.await.expect("task").is_err());
    }

    fn member(id: i32) -> MemberRow {
        MemberRow {
            id,
            member: format!("PAR::m{id}::1220aa"),
            public_key: None,
            enabled: true,
            registered_ts: Timestamp::EPOCH,
            acknowledged_ts: None,
        }
    }

    /// Issue 11 item 2: the per-member cap counts open subscriptions and frees a slot
    /// when its holder is dropped.
    #[test]
    fn member_slots_cap_per_member_item_2() {
        let slots = MemberSlots::new(2);
        let (a, b) = (member(1), member(2));
        let a1 = slots.acquire(&a).expect("first");
        let _a2 = slots.acquire(&a).expect("second");
        let err = slots.acquire(&a).err().expect("third refused");
        assert_eq!(err.code(), "SEQ_TOO_MANY_SUBSCRIPTIONS");
        assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted);
        let _b1 = slots.acquire(&b).expect("other member unaffected");
        drop(a1);
        assert_eq!(slots.open(1), 1);
        let _a3 = slots.acquire(&a).expect("slot freed");
    }
}
