//! The active replica's work, as one *session* per lease term: load the
//! persisted state, subscribe from the processed counter + 1, process events
//! in batches (each batch one fenced transaction), send decided verdicts, and
//! request time proofs while requests are pending.
//!
//! A session ends when its token is cancelled (lease lost, shutdown) or on the
//! first persistence error; the in-memory state is then dropped and the next
//! session starts again from the database, so memory never runs ahead of what
//! a successor would see.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use domain_backoff::{Backoff, BackoffConfig};
use domain_lease::Fence;
use domain_proto::sequencer::v1 as pb;
use domain_runtime::ops::Readiness;
use domain_runtime::shutdown::Ticks;
use domain_runtime::telemetry::TraceContext;
use domain_sequencer_client::{ClientError, StreamValidator};
use domain_time::Timestamp;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::describe;
use crate::metrics as m;
use crate::protocol::{Event, Outcome, Processor, verdict_envelope_content, verdict_message_id};
use crate::store::{self, OutVerdict, SendState, StoreError};
use crate::{Context, now_micros};

/// Pauses between failed attempts: 50 ms doubling to 2 s (with jitter).
const BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(50), Duration::from_secs(2));
/// Events buffered between the subscription reader and the processor.
const EVENT_BUFFER: usize = 4096;
/// How often decided requests past `request-retention` are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often acknowledged verdict sends are recorded.
const MARK_INTERVAL: Duration = Duration::from_millis(50);

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease lost")]
    LeaseLost,
    #[error("verdict sender failed: {0}")]
    Sender(String),
}

impl SessionError {
    pub fn label(&self) -> &'static str {
        match self {
            SessionError::Store(e) => e.label(),
            SessionError::LeaseLost => "lease_lost",
            SessionError::Sender(_) => "fenced",
        }
    }
}

/// A verdict to send, with when it was committed.
/// A verdict to send, when it was committed, and the trace context of its request's event (so
/// the verdict joins the submitter's trace; none for verdicts resent after a restart).
type Outgoing = (OutVerdict, Instant, Option<TraceContext>);

/// Runs one session until `cancel` fires or an error ends it.
pub async fn run(
    ctx: Arc<Context>,
    fence: Fence,
    cancel: CancellationToken,
    readiness: Readiness,
    acquired: Instant,
) -> Result<(), SessionError> {
    let mut client = ctx.pool.get().await.map_err(StoreError::from)?;
    let mediator = ctx.settings.mediator_id.to_string();
    let domain = ctx.settings.domain_id.to_string();
    let loaded = store::load(&mut client, &fence, &mediator, &domain).await?;
    let stmts = store::Statements::prepare(&client).await?;
    let unsent = loaded.unsent;
    let mut processor = Processor::restore(ctx.settings.clone(), loaded.restored);
    publish(&ctx, &processor);
    ctx.shared.session_running.store(true, Ordering::SeqCst);
    let _running = scopeguard(&ctx);
    tracing::info!(
        epoch = fence.epoch,
        last_counter = processor.last_counter(),
        pending = processor.pending_count(),
        unsent_verdicts = unsent.len(),
        topology_transactions = processor.topology().len(),
        "state loaded; resuming from the processed counter"
    );

    // Child tasks die with this session: cancelled on return, aborted on drop.
    let tasks_cancel = cancel.child_token();
    let _cancel_on_exit = tasks_cancel.clone().drop_guard();
    let mut tasks = JoinSet::new();
    let (event_tx, mut event_rx) = mpsc::channel::<(Event, Option<TraceContext>)>(EVENT_BUFFER);
    let (verdict_tx, verdict_rx) = mpsc::unbounded_channel::<Outgoing>();
    let (subscribed_tx, mut subscribed_rx) = watch::channel(false);
    let (fail_tx, mut fail_rx) = mpsc::channel::<String>(1);
    let validator = if processor.last_counter() >= 0 {
        StreamValidator::starting_after(processor.last_counter(), processor.last_ts())
    } else {
        StreamValidator::default()
    };
    tasks.spawn(reader(
        ctx.clone(),
        processor.last_counter() + 1,
        validator,
        event_tx,
        subscribed_tx,
        tasks_cancel.clone(),
    ));
    tasks.spawn(sender(
        ctx.clone(),
        fence.clone(),
        unsent,
        verdict_rx,
        fail_tx.clone(),
        tasks_cancel.clone(),
    ));
    tasks.spawn(time_proofs(ctx.clone(), tasks_cancel.clone()));
    tasks.spawn(acknowledger(ctx.clone(), tasks_cancel.clone()));
    tasks.spawn(pruner(
        ctx.clone(),
        fence.clone(),
        fail_tx,
        tasks_cancel.clone(),
    ));

    let mut activated = false;
    // Trace contexts of pending requests, by request id; bounded by the pending requests
    // (an entry goes with the request's verdict), and lost on restart (verdicts then start
    // their own trace).
    let mut request_traces: std::collections::HashMap<i64, TraceContext> =
        std::collections::HashMap::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            reason = fail_rx.recv() => {
                return Err(SessionError::Sender(reason.unwrap_or_else(|| "stopped".into())));
            }
            changed = subscribed_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let subscribed = *subscribed_rx.borrow_and_update();
                if subscribed && !activated {
                    activated = true;
                    let took = acquired.elapsed();
                    metrics::histogram!(m::ACTIVATION_SECONDS).record(took.as_secs_f64());
                    tracing::info!(
                        epoch = fence.epoch,
                        took_ms = took.as_millis() as u64,
                        "active: subscribed and serving"
                    );
                }
                readiness.set_ready(subscribed);
                metrics::gauge!(m::ACTIVE).set(if subscribed { 1.0 } else { 0.0 });
                continue;
            }
            event = event_rx.recv() => match event {
                Some(e) => e,
                None => return Ok(()),
            },
        };
        let mut batch = vec![first];
        while batch.len() < ctx.max_batch_events {
            match event_rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        // A cheap local check first; the fence check inside the transaction is
        // what actually guarantees that a stale replica writes nothing.
        if ctx.lease.fence().as_ref() != Some(&fence) {
            return Err(SessionError::LeaseLost);
        }
        let (batch, traces): (Vec<Event>, Vec<Option<TraceContext>>) = batch.into_iter().unzip();
        // Known: events only come through a connected link, which has the key.
        if let Some(key) = ctx.link.namespace_key() {
            processor.set_namespace_key(key.clone());
        }
        // Each event is processed inside a span continuing the sender's trace, so the
        // mediator's handling of a request or response shows up in the submitter's trace.
        let mut contexts: Vec<Option<TraceContext>> = Vec::with_capacity(batch.len());
        let changes = processor.process_batch_in(&batch, now_micros(), |i| {
            let span = tracing::info_span!(
                "mediator_event",
                counter = batch[i].counter,
                ts = batch[i].ts,
                sender = %batch[i].sender,
            );
            let ctx =
                traces[i].map(|parent| domain_runtime::telemetry::remote_span(&span, Some(parent)));
            contexts.push(ctx);
            span
        });
        for r in &changes.new_requests {
            // A request's id is its event's timestamp.
            if let Some(Some(ctx)) = batch
                .iter()
                .zip(&contexts)
                .find(|(e, _)| e.ts == r.request_id)
                .map(|(_, c)| c)
            {
                request_traces.insert(r.request_id, *ctx);
            }
        }
        let started = Instant::now();
        store::persist(&mut client, &stmts, &fence, &changes).await?;
        metrics::histogram!(m::PERSIST_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        metrics::counter!(m::EVENTS).increment(changes.events);
        let committed = Instant::now();
        for r in &changes.new_requests {
            let rejected_at_once = changes.decisions.iter().any(|d| {
                d.request_id == r.request_id
                    && matches!(&d.outcome, Outcome::Rejected { participant, .. } if participant == processor.mediator_id())
            });
            let result = if rejected_at_once {
                "rejected"
            } else {
                "opened"
            };
            metrics::counter!(m::REQUESTS, "result" => result).increment(1);
        }
        for (_, r) in &changes.responses {
            metrics::counter!(m::RESPONSES, "decision" => r.decision.as_str()).increment(1);
        }
        for reason in &changes.ignored {
            metrics::counter!(m::RESPONSES_IGNORED, "reason" => reason.as_str()).increment(1);
        }
        for reason in &changes.envelopes_ignored {
            metrics::counter!(m::ENVELOPES_IGNORED, "reason" => *reason).increment(1);
        }
        for d in &changes.decisions {
            let outcome = d.outcome.label();
            metrics::counter!(m::VERDICTS, "outcome" => outcome).increment(1);
            metrics::histogram!(m::DECISION_LATENCY, "outcome" => outcome)
                .record((d.decided_ts - d.request_id) as f64 / 1e6);
            tracing::debug!(request_id = d.request_id, outcome, "verdict decided");
            let out = OutVerdict {
                request_id: d.request_id,
                signed_verdict: d.signed_verdict.clone(),
                recipients: d.recipients.clone(),
                max_sequencing_ts: d.max_sequencing_ts,
            };
            let trace = request_traces.remove(&d.request_id);
            // The sender only stops with the session.
            let _ = verdict_tx.send((out, committed, trace));
        }
        publish(&ctx, &processor);
    }
}

fn publish(ctx: &Context, processor: &Processor) {
    let pending = processor.pending_count() as u64;
    ctx.shared.pending.store(pending, Ordering::SeqCst);
    ctx.shared
        .last_counter
        .store(processor.last_counter(), Ordering::SeqCst);
    ctx.shared
        .last_ts
        .store(processor.last_ts(), Ordering::SeqCst);
    metrics::gauge!(m::PENDING).set(pending as f64);
    metrics::gauge!(m::LAST_COUNTER).set(processor.last_counter() as f64);
    metrics::gauge!(m::TOPOLOGY_TRANSACTIONS).set(processor.topology().len() as f64);
}

/// Clears `session_running` when the session ends, however it ends.
struct RunningGuard(Arc<crate::Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.session_running.store(false, Ordering::SeqCst);
    }
}

fn scopeguard(ctx: &Context) -> RunningGuard {
    RunningGuard(ctx.shared.clone())
}

async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Subscribes from `next` through the domain client (which fails over between endpoints
/// and verifies every event) and forwards events in counter order. A subscription that
/// ends with a definitive error (invalid event, fork, refused) is opened again from the
/// next unprocessed counter after a backoff.
async fn reader(
    ctx: Arc<Context>,
    mut next: i64,
    mut validator: StreamValidator,
    tx: mpsc::Sender<(Event, Option<TraceContext>)>,
    subscribed: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF);
    let mut reason = "activation";
    // How often readiness follows whether the client's stream is open on some endpoint.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let client = tokio::select! {
            _ = cancel.cancelled() => return,
            c = ctx.link.get() => c,
        };
        let client = match client {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "cannot reach any sequencer; retrying");
                if !pause(&cancel, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        let mut subscription = match client.subscribe(next) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(from_counter = next, error = %describe(&error), "cannot subscribe");
                if !pause(&cancel, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        metrics::counter!(m::SUBSCRIPTIONS, "reason" => reason).increment(1);
        tracing::info!(from_counter = next, "subscribing");
        let mut on_endpoint: Option<String> = None;
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => {
                    clear_endpoint_gauge(&mut on_endpoint);
                    return;
                }
                _ = tick.tick() => {
                    let current = client.current_subscription_endpoint();
                    if current != on_endpoint {
                        for (url, value) in [(&on_endpoint, 0.0), (&current, 1.0)] {
                            if let Some(url) = url {
                                metrics::gauge!(m::SUBSCRIPTION_ENDPOINT, "endpoint" => url.clone()).set(value);
                            }
                        }
                        on_endpoint = current;
                    }
                    let open = on_endpoint.is_some();
                    subscribed.send_if_modified(|s| std::mem::replace(s, open) != open);
                    continue;
                }
                item = subscription.next() => item,
            };
            match item {
                Some(Ok(verified)) => {
                    // The client checked continuity from `next`; the timestamp link to
                    // the last event processed before this subscription is ours to check.
                    if let Err(error) = validator.check(&verified.event) {
                        tracing::error!(endpoint = %verified.endpoint, counter = verified.event.counter, %error, "event stream is not continuous; subscribing again");
                        reason = "invalid_event";
                        break;
                    }
                    subscribed.send_if_modified(|s| !std::mem::replace(s, true));
                    next = verified.event.counter + 1;
                    backoff.reset();
                    let trace = verified.trace_context();
                    let event = Event::from_verified(verified.event, &verified.content);
                    if tx.send((event, trace)).await.is_err() {
                        clear_endpoint_gauge(&mut on_endpoint);
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::error!(from_counter = next, error = %describe(&error), "subscription failed; subscribing again");
                    reason = "subscription_failed";
                    break;
                }
                None => {
                    tracing::warn!(from_counter = next, "subscription ended; subscribing again");
                    reason = "stream_ended";
                    break;
                }
            }
        }
        subscription.close();
        subscribed.send_replace(false);
        clear_endpoint_gauge(&mut on_endpoint);
        if !pause(&cancel, backoff.next_delay()).await {
            return;
        }
    }
}

fn clear_endpoint_gauge(on_endpoint: &mut Option<String>) {
    if let Some(url) = on_endpoint.take() {
        metrics::gauge!(m::SUBSCRIPTION_ENDPOINT, "endpoint" => url).set(0.0);
    }
}

/// Sends every decided verdict (those left unsent by a predecessor first) and
/// records the acknowledged ones; a fenced record ends the session.
async fn sender(
    ctx: Arc<Context>,
    fence: Fence,
    unsent: Vec<OutVerdict>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    fail: mpsc::Sender<String>,
    cancel: CancellationToken,
) {
    if !unsent.is_empty() {
        tracing::info!(
            count = unsent.len(),
            "resending verdicts decided but not acknowledged before"
        );
    }
    let now = Instant::now();
    let mut queue: VecDeque<Outgoing> = unsent.into_iter().map(|v| (v, now, None)).collect();
    let mut in_flight = FuturesUnordered::new();
    let mut marks: Vec<(i64, SendState)> = Vec::new();
    let mut client = None;
    let mut tick = tokio::time::interval(MARK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while in_flight.len() < ctx.max_inflight_verdicts {
            let Some(item) = queue.pop_front() else { break };
            in_flight.push(send_verdict(ctx.clone(), item));
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            item = rx.recv() => match item {
                Some(item) => queue.push_back(item),
                None => return,
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => marks.push(done),
            _ = tick.tick(), if !marks.is_empty() => {
                if client.is_none() {
                    match ctx.pool.get().await {
                        Ok(c) => client = Some(c),
                        Err(error) => {
                            tracing::warn!(%error, "cannot record verdict sends");
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                match store::mark_verdicts(c, &fence, &marks).await {
                    Ok(()) => marks.clear(),
                    Err(error) if error.is_fenced() => {
                        let _ = fail.send(error.to_string()).await;
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot record verdict sends; retrying");
                        client = None;
                    }
                }
            }
        }
    }
}

fn error_code(e: &ClientError) -> Option<&str> {
    match e {
        ClientError::Status(s) => domain_proto::error::error_code(s),
        _ => None,
    }
}

/// Sends one verdict until the sequencer acknowledges it (or refuses it for
/// good), moving between endpoints on connection failures.
async fn send_verdict(
    ctx: Arc<Context>,
    (verdict, committed, trace): Outgoing,
) -> (i64, SendState) {
    let span = tracing::info_span!("mediator_verdict_send", request_id = verdict.request_id);
    // The submission carries the current trace context on to the verdict's recipients.
    domain_runtime::telemetry::in_remote_span(
        span,
        trace,
        send_verdict_traced(ctx, verdict, committed),
    )
    .await
}

async fn send_verdict_traced(
    ctx: Arc<Context>,
    verdict: OutVerdict,
    committed: Instant,
) -> (i64, SendState) {
    let request_id = verdict.request_id;
    let content = match verdict_envelope_content(&verdict.signed_verdict) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(request_id, %error, "stored verdict is undecodable; not sending it");
            metrics::counter!(m::VERDICT_SENDS, "result" => "undeliverable").increment(1);
            return (request_id, SendState::Undeliverable);
        }
    };
    let mut recipients = verdict.recipients.clone();
    let mut backoff = Backoff::new(BACKOFF);
    loop {
        let client = match ctx.link.get().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let submission = pb::SubmissionRequest {
            sender: ctx.settings.mediator_id.to_string(),
            message_id: verdict_message_id(request_id),
            envelopes: vec![pb::Envelope {
                content: content.clone().into(),
                recipients: recipients.clone(),
                broadcast: false,
            }],
            max_sequencing_time_micros: verdict.max_sequencing_ts.as_micros(),
            time_proof: false,
        };
        // The client retries these bytes on other endpoints until the max sequencing
        // time; what comes back is a definitive answer or the last failure after it.
        let result = client
            .sign_submission(&submission)
            .map(|request| client.send_signed(request));
        let error = match result {
            Ok(send) => match send.await {
                Ok(receipt) => {
                    let response = receipt.response;
                    let result = if response.deduplicated {
                        "deduplicated"
                    } else {
                        "sequenced"
                    };
                    metrics::counter!(m::VERDICT_SENDS, "result" => result).increment(1);
                    metrics::histogram!(m::VERDICT_SEND_SECONDS)
                        .record(committed.elapsed().as_secs_f64());
                    tracing::debug!(
                        request_id,
                        sequencing_ts = response.sequencing_timestamp_micros,
                        endpoint = %receipt.endpoint,
                        attempts = receipt.attempts,
                        result,
                        "verdict sent"
                    );
                    return (request_id, SendState::Sent);
                }
                Err(error) => error,
            },
            Err(error) => error,
        };
        match error_code(&error) {
            Some("SEQ_MAX_SEQUENCING_TIME_EXCEEDED") => {
                tracing::error!(request_id, max_sequencing_ts = verdict.max_sequencing_ts.as_micros(), error = %describe(&error), "verdict expired before the sequencer acknowledged it; participants will time out");
                metrics::counter!(m::VERDICT_SENDS, "result" => "expired").increment(1);
                return (request_id, SendState::Expired);
            }
            Some("SEQ_RECIPIENT_UNKNOWN" | "SEQ_RECIPIENT_DISABLED") => {
                // A recipient left the domain since the request: send to the others.
                let gone = recipients
                    .iter()
                    .position(|r| matches!(&error, ClientError::Status(s) if s.message().contains(r.as_str())));
                match gone {
                    Some(i) if recipients.len() > 1 => {
                        let removed = recipients.remove(i);
                        tracing::warn!(request_id, recipient = %removed, error = %describe(&error), "verdict recipient left the domain; sending to the others");
                        continue;
                    }
                    _ => {
                        tracing::error!(request_id, error = %describe(&error), "verdict has no deliverable recipient");
                        metrics::counter!(m::VERDICT_SENDS, "result" => "undeliverable")
                            .increment(1);
                        return (request_id, SendState::Undeliverable);
                    }
                }
            }
            Some(
                "SEQ_REQUEST_TOO_LARGE"
                | "SEQ_MALFORMED_REQUEST"
                | "SEQ_EMPTY_SUBMISSION"
                | "SEQ_SUBMISSION_SIGNATURE_INVALID"
                | "SEQ_MEMBER_MISMATCH",
            ) => {
                tracing::error!(request_id, error = %describe(&error), "sequencer refused the verdict for good");
                metrics::counter!(m::VERDICT_SENDS, "result" => "undeliverable").increment(1);
                return (request_id, SendState::Undeliverable);
            }
            _ => {
                tracing::warn!(request_id, error = %describe(&error), "verdict send failed; retrying");
                metrics::counter!(m::VERDICT_SENDS, "result" => "retried").increment(1);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Deletes decided requests older than `request-retention` (sequencer time of the last
/// processed event), in chunks, once a minute. A fenced delete ends the session.
async fn pruner(
    ctx: Arc<Context>,
    fence: Fence,
    fail: mpsc::Sender<String>,
    cancel: CancellationToken,
) {
    const CHUNK: i64 = 5_000;
    let retention = ctx.request_retention;
    let mut ticks = Ticks::new(PRUNE_INTERVAL, &cancel);
    while ticks.next().await {
        let last_ts = Timestamp::from_micros(ctx.shared.last_ts.load(Ordering::SeqCst));
        // Nothing is old enough before sequencer time passes the retention.
        let Some(before) = last_ts
            .duration_since(Timestamp::EPOCH)
            .filter(|age| *age > retention)
            .map(|_| last_ts - retention)
        else {
            continue;
        };
        let mut client = match ctx.pool.get().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "cannot prune decided requests");
                continue;
            }
        };
        loop {
            match store::prune(&mut client, &fence, before, CHUNK).await {
                Ok(n) => {
                    metrics::counter!(m::REQUESTS_PRUNED).increment(n);
                    if n > 0 {
                        tracing::info!(
                            deleted = n,
                            before_ts = before.as_micros(),
                            "pruned decided requests"
                        );
                    }
                    if n < CHUNK as u64 {
                        break;
                    }
                }
                Err(error) if error.is_fenced() => {
                    let _ = fail.send(error.to_string()).await;
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning decided requests failed");
                    break;
                }
            }
        }
    }
}

/// Acknowledges to the sequencer, every `acknowledge-interval`, the timestamp of the last
/// event whose effects are persisted. `shared.last_ts` is only published after the fenced
/// commit of a batch (and, at session start, from the loaded state), and this task lives
/// only as long as the active session, so a passive replica never acknowledges and a new
/// active starts from what its database holds.
async fn acknowledger(ctx: Arc<Context>, cancel: CancellationToken) {
    let mut ticks = Ticks::new(ctx.acknowledge_interval, &cancel);
    let mut acknowledged = 0i64;
    let mut first = true;
    while ticks.next().await {
        let persisted = ctx.shared.last_ts.load(Ordering::SeqCst);
        if persisted <= acknowledged {
            continue;
        }
        let Ok(client) = ctx.link.get().await else {
            metrics::counter!(m::ACKNOWLEDGEMENTS, "result" => "failed").increment(1);
            continue;
        };
        match client.acknowledge(persisted).await {
            Ok(()) => {
                acknowledged = persisted;
                metrics::counter!(m::ACKNOWLEDGEMENTS, "result" => "accepted").increment(1);
                metrics::gauge!(m::ACKNOWLEDGED_TIMESTAMP).set(persisted as f64 / 1e6);
                if first {
                    // Logged at info so an operator (and the failover test) can compare the
                    // new active's first acknowledgement with its database.
                    tracing::info!(
                        acknowledged_ts = persisted,
                        "first acknowledgement of this session"
                    );
                    first = false;
                } else {
                    tracing::debug!(acknowledged_ts = persisted, "acknowledged persisted state");
                }
            }
            Err(error) => {
                metrics::counter!(m::ACKNOWLEDGEMENTS, "result" => "failed").increment(1);
                tracing::warn!(acknowledged_ts = persisted, error = %describe(&error), "acknowledgement failed; retried at the next interval");
            }
        }
    }
}

/// Requests a time proof every `time-proof-interval` while requests are
/// pending, so deadlines expire on an idle domain.
async fn time_proofs(ctx: Arc<Context>, cancel: CancellationToken) {
    let mut ticks = Ticks::new(ctx.time_proof_interval, &cancel);
    while ticks.next().await {
        if ctx.shared.pending.load(Ordering::SeqCst) == 0 {
            continue;
        }
        let Ok(client) = ctx.link.get().await else {
            metrics::counter!(m::TIME_PROOFS, "result" => "failed").increment(1);
            continue;
        };
        match tokio::time::timeout(ctx.sequencer_timeout, client.send_time_proof()).await {
            Ok(Ok(_)) => metrics::counter!(m::TIME_PROOFS, "result" => "sent").increment(1),
            Ok(Err(error)) => {
                metrics::counter!(m::TIME_PROOFS, "result" => "failed").increment(1);
                tracing::debug!(error = %describe(&error), "time proof failed");
            }
            Err(_) => {
                metrics::counter!(m::TIME_PROOFS, "result" => "failed").increment(1);
                tracing::debug!("time proof timed out");
            }
        }
    }
}
