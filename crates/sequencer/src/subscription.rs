//! One member's subscription: catch up from the database starting at the
//! nearest counter checkpoint, then follow the shared reader's live feed.
//! Counters are derived, never stored per event: the member's n-th event (in
//! timestamp order, behind the safe watermark) has counter n on every instance.

use std::sync::Arc;

use domain_proto::v1::{
    DeliveredEnvelope, SequencedEvent, Signature as ProtoSignature, SignaturePurpose,
    SubscribeResponse,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::SequencerError;
use crate::metrics as m;
use crate::reader::{GlobalEvent, SharedReader};
use crate::store::{self, MemberRow};

pub struct SubscriptionContext {
    pub pool: deadpool_postgres::Pool,
    pub reader: Arc<SharedReader>,
    pub sequencer_fingerprint: String,
    pub revoked: broadcast::Receiver<String>,
    pub shutdown: CancellationToken,
    pub page: i64,
}

struct Cursor {
    /// Counter of the last event counted (delivered or skipped); -1 before the first.
    counter: i64,
    /// Timestamp of that event (0 before the first).
    prev_ts: i64,
    /// Everything at or below this timestamp has been processed.
    position: i64,
}

/// Streams the member's events from `from_counter` into `out` until the client
/// leaves, the member is disabled, the subscriber falls behind, or shutdown.
pub async fn run(
    mut ctx: SubscriptionContext,
    member: Arc<MemberRow>,
    from_counter: i64,
    out: mpsc::Sender<Result<SubscribeResponse, Status>>,
) {
    metrics::gauge!(m::ACTIVE_SUBSCRIPTIONS).increment(1.0);
    let result = stream(&mut ctx, &member, from_counter, &out).await;
    metrics::gauge!(m::ACTIVE_SUBSCRIPTIONS).decrement(1.0);
    if let Err(e) = result {
        tracing::info!(member = %member.member, error = %e, "subscription ended");
        let _ = out.send(Err(e.into_status())).await;
    }
}

async fn stream(
    ctx: &mut SubscriptionContext,
    member: &MemberRow,
    from_counter: i64,
    out: &mpsc::Sender<Result<SubscribeResponse, Status>>,
) -> Result<(), SequencerError> {
    // Subscribe to the live feed first so nothing published during catch-up is missed.
    let (live_from, mut live) = ctx.reader.subscribe().await;
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
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        metrics::counter!(m::SUBSCRIBERS_CUT).increment(1);
                        return Err(SequencerError::SubscriberTooSlow { resume_from: cursor.counter + 1 });
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(SequencerError::InstanceOffline("reader stopped".into()));
                    }
                };
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

async fn catch_up(
    ctx: &mut SubscriptionContext,
    member: &MemberRow,
    from_counter: i64,
    up_to: i64,
    out: &mpsc::Sender<Result<SubscribeResponse, Status>>,
) -> Result<Cursor, SequencerError> {
    let mut conn = ctx
        .pool
        .get()
        .await
        .map_err(|e| SequencerError::Database(e.to_string()))?;
    // One snapshot for the whole catch-up: a prune running concurrently must not
    // delete rows between the bound check and the counting, or counters would shift.
    // Everything up to `up_to` was committed before the reader published it, so the
    // snapshot sees all of it.
    let client = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(|e| SequencerError::Database(e.to_string()))?;
    let lower = store::lower_bound(&*client).await?;
    if lower > member.registered_ts {
        // Events at or below the pruning bound are gone: the member's last checkpoint
        // at or below the bound tells which counters they had.
        let row = client
            .query_opt(
                "SELECT counter FROM seq_checkpoints WHERE member_id = $1 AND ts <= $2 ORDER BY counter DESC LIMIT 1",
                &[&member.id, &lower],
            )
            .await
            .map_err(|e| SequencerError::Database(e.to_string()))?;
        let pruned_through: i64 = row.map_or(-1, |r| r.get(0));
        if from_counter <= pruned_through {
            return Err(SequencerError::EventsPruned {
                counter: from_counter,
                oldest: pruned_through + 1,
            });
        }
    }
    let (cp_counter, cp_ts) = store::checkpoint_below(&*client, member.id, from_counter)
        .await?
        .unwrap_or((-1, member.registered_ts));
    let mut cursor = Cursor {
        counter: cp_counter,
        prev_ts: if cp_counter >= 0 { cp_ts } else { 0 },
        position: cp_ts,
    };
    // Skip phase: count timestamps only, from the checkpoint to the requested counter.
    while cursor.counter + 1 < from_counter {
        let tss = store::member_timestamps(
            &*client,
            member.id,
            member.registered_ts,
            cursor.position,
            up_to,
            10_000,
            lower,
        )
        .await?;
        if tss.is_empty() {
            break;
        }
        for ts in tss {
            if cursor.counter + 1 >= from_counter {
                break;
            }
            cursor.counter += 1;
            cursor.prev_ts = ts;
            cursor.position = ts;
        }
    }
    // Delivery phase: full events in pages up to where the live feed starts.
    loop {
        let events = store::member_events(
            &*client,
            member.id,
            member.registered_ts,
            cursor.position,
            up_to,
            ctx.page,
            lower,
        )
        .await?;
        let n = events.len() as i64;
        // A member disabled during its catch-up does not get the rest of its backlog.
        check_revoked(ctx, member).await?;
        for e in events {
            let event = GlobalEvent::from_stored(e);
            deliver(ctx, member, &event, &mut cursor, from_counter, out).await?;
        }
        if n < ctx.page {
            break;
        }
    }
    client
        .commit()
        .await
        .map_err(|e| SequencerError::Database(e.to_string()))?;
    cursor.position = cursor.position.max(up_to);
    Ok(cursor)
}

async fn deliver(
    ctx: &SubscriptionContext,
    member: &MemberRow,
    event: &GlobalEvent,
    cursor: &mut Cursor,
    from_counter: i64,
    out: &mpsc::Sender<Result<SubscribeResponse, Status>>,
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
    // shared feed overtakes us and the subscription is cut as too slow.
    out.send(Ok(SubscribeResponse {
        event: Some(sequenced),
    }))
    .await
    .map_err(|_| SequencerError::Internal("client went away".into()))?;
    metrics::counter!(m::EVENTS_DELIVERED).increment(1);
    Ok(())
}

/// Builds the member's view: its own envelopes, the shared signed content, and
/// the message id only in the sender's receipt.
pub fn to_member_event(
    event: &GlobalEvent,
    member: &MemberRow,
    counter: i64,
    prev_ts: i64,
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
        timestamp_micros: event.ts,
        previous_timestamp_micros: prev_ts,
        content: event.content.clone(),
        signature: Some(ProtoSignature {
            signature: event.signature.clone(),
            signer_fingerprint: fingerprint.to_string(),
            purpose: SignaturePurpose::SequencedEvent as i32,
        }),
        envelopes,
        message_id: if event.sender == member.id {
            event.message_id.clone()
        } else {
            String::new()
        },
        trace_context: event.trace_context.clone().unwrap_or_default(),
    }
}
