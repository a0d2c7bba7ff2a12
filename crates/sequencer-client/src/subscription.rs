//! The live subscription of a [`DomainClient`]: one stream at a time, resumed on another
//! endpoint after a failure, every event verified before it is handed over.
//!
//! - **Validation.** Each event's sequencer signature and envelope hashes
//!   ([`crate::verify_event`]), its domain id, counter continuity (the first event must have
//!   the requested counter, then +1 each), strictly increasing timestamps and the
//!   `previous_timestamp` link ([`crate::StreamValidator`]). A failure ends the subscription
//!   with [`ClientError::InvalidEvent`]: events are never skipped. (The first event of
//!   [`DomainClient::subscribe`] from a counter above 0 has nothing to link to; a consumer
//!   that kept its last event links it with [`DomainClient::subscribe_after`].)
//! - **Resumption with fork detection.** After a failure, the stream is re-requested from
//!   the counter of the last event handed to the consumer (not +1), on the next healthy
//!   endpoint. The first event of the new stream must be identical to that event: every
//!   field, i.e. the same counter, timestamp, previous timestamp, signed content bytes,
//!   signature bytes, delivered envelopes and message id (instances serve byte-identical
//!   events). Otherwise the subscription ends with [`ClientError::ForkDetected`]. The
//!   re-delivered event is dropped, so the consumer sees each counter exactly once. If the
//!   sequencer has pruned that event meanwhile (`SEQ_EVENTS_PRUNED`, after the member
//!   acknowledged it), the stream is requested from the next counter instead and only the
//!   `previous_timestamp` link to the processed event guards against a fork.
//! - **Liveness.** A stream error, or the sequencer ending the stream, resumes elsewhere
//!   after a backoff (reset by each event). An endpoint that accepts connections but does
//!   not answer (a paused process) sends nothing: when the endpoint's health check fails and
//!   the stream has been silent for [`ClientOptions::subscription_idle`], the stream is
//!   dropped and resumed elsewhere. A healthy but idle stream is left alone.
//!
//! [`ClientOptions::subscription_idle`]: crate::ClientOptions::subscription_idle

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use domain_proto::sequencer::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::backoff::Backoff;
use crate::domain_client::{DomainClient, Inner, authed, describe_status};
use crate::health::DomainInfo;
use crate::retry::{RetryClass, classify_status, error_code};
use crate::{BatchRoots, ClientError, StreamValidator, metrics, verify_event_with};

/// One verified event with the endpoint that delivered it.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    pub event: pb::SequencedEvent,
    /// The signed content, decoded and verified.
    pub content: pb::SignedEventContent,
    pub endpoint: String,
}

impl VerifiedEvent {
    /// The sender's trace context the sequencer delivered with the event, if it carried a valid
    /// one. Advisory only (not covered by the signature): use it to parent spans, nothing else.
    pub fn trace_context(&self) -> Option<domain_trace::TraceContext> {
        event_trace_context(&self.event)
    }
}

/// The trace context delivered with `event`, if valid.
pub fn event_trace_context(event: &pb::SequencedEvent) -> Option<domain_trace::TraceContext> {
    if event.trace_context.is_empty() {
        return None;
    }
    domain_trace::TraceContext::parse_traceparent(&event.trace_context).ok()
}

/// Where a subscription starts.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    /// Deliver from this counter.
    Counter(i64),
    /// The consumer processed this event: check it is re-delivered, then deliver the next.
    After(pb::SequencedEvent),
}

/// The live event stream of a [`DomainClient`] (also a [`futures::Stream`]). Yields each
/// counter exactly once, in order; ends after an `Err` item (a definitive failure), when
/// [`Self::close`] is called, or when the client opens another subscription. Dropping it
/// stops the subscription.
pub struct Subscription {
    rx: mpsc::Receiver<Result<VerifiedEvent, ClientError>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn spawn(client: DomainClient, start: Start, cancel: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(client.inner.options.subscription_buffer.max(1));
        tokio::spawn(run(client, start, tx, cancel.clone()));
        Self { rx, cancel }
    }

    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<VerifiedEvent, ClientError>> {
        self.rx.recv().await
    }

    /// Stops the subscription.
    pub fn close(&mut self) {
        self.cancel.cancel();
        self.rx.close();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl futures::Stream for Subscription {
    type Item = Result<VerifiedEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Checks that an event re-delivered after a resubscription is identical to the one
/// already processed at that counter.
pub fn check_redelivered(
    processed: &pb::SequencedEvent,
    redelivered: &pb::SequencedEvent,
    endpoint: &str,
) -> Result<(), ClientError> {
    if processed == redelivered {
        return Ok(());
    }
    let mut differences = Vec::new();
    if processed.counter != redelivered.counter {
        differences.push(format!(
            "counter {} vs {}",
            processed.counter, redelivered.counter
        ));
    }
    if processed.timestamp_micros != redelivered.timestamp_micros {
        differences.push(format!(
            "timestamp {} vs {}",
            processed.timestamp_micros, redelivered.timestamp_micros
        ));
    }
    if processed.previous_timestamp_micros != redelivered.previous_timestamp_micros {
        differences.push(format!(
            "previous timestamp {} vs {}",
            processed.previous_timestamp_micros, redelivered.previous_timestamp_micros
        ));
    }
    if processed.content != redelivered.content {
        differences.push("signed content".into());
    }
    if processed.signature != redelivered.signature {
        differences.push("signature".into());
    }
    if processed.envelopes != redelivered.envelopes {
        differences.push("delivered envelopes".into());
    }
    if processed.message_id != redelivered.message_id {
        differences.push("message id".into());
    }
    Err(ClientError::ForkDetected {
        counter: processed.counter,
        endpoint: endpoint.to_string(),
        details: format!(
            "the re-delivered event differs from the processed one in: {}",
            differences.join(", ")
        ),
    })
}

/// What the subscription has handed over so far.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The last event handed to the consumer.
    last: Option<pb::SequencedEvent>,
    /// The counter to deliver next.
    next_counter: i64,
    validator: StreamValidator,
    /// The last processed event is no longer served (pruned): resume after it instead.
    replay_unavailable: bool,
    /// Batch roots whose sequencer signature this stream checked.
    roots: BatchRoots,
}

impl Cursor {
    pub(crate) fn new(start: Start) -> Self {
        match start {
            Start::Counter(c) => Self {
                last: None,
                next_counter: c,
                validator: StreamValidator::default(),
                replay_unavailable: false,
                roots: BatchRoots::default(),
            },
            Start::After(event) => Self {
                next_counter: event.counter + 1,
                validator: StreamValidator::starting_after(event.counter, event.timestamp_micros),
                last: Some(event),
                replay_unavailable: false,
                roots: BatchRoots::default(),
            },
        }
    }

    /// The counter to request, and whether the first event is a re-delivery to compare.
    pub(crate) fn request(&self) -> (i64, bool) {
        match &self.last {
            Some(last) if !self.replay_unavailable => (last.counter, true),
            _ => (self.next_counter, false),
        }
    }

    /// Verifies a new event and records it as processed.
    pub(crate) fn accept(
        &mut self,
        event: &pb::SequencedEvent,
        info: &DomainInfo,
    ) -> Result<pb::SignedEventContent, ClientError> {
        let content = verify_event_with(
            &info.sequencer_key,
            &info.domain_id,
            event,
            Some(&mut self.roots),
        )?;
        if content.domain_id != info.domain_id {
            return Err(ClientError::InvalidEvent(format!(
                "event {} is for domain {}, expected {}",
                event.counter, content.domain_id, info.domain_id
            )));
        }
        if event.counter != self.next_counter {
            return Err(ClientError::InvalidEvent(format!(
                "counter gap: expected {}, got {}",
                self.next_counter, event.counter
            )));
        }
        self.validator.check(event)?;
        self.next_counter = event.counter + 1;
        self.last = Some(event.clone());
        self.replay_unavailable = false;
        Ok(content)
    }
}

/// Runs the subscription until it is cancelled, its consumer goes away, or it fails
/// definitively (the error is then the last item).
async fn run(
    client: DomainClient,
    start: Start,
    tx: mpsc::Sender<Result<VerifiedEvent, ClientError>>,
    cancel: CancellationToken,
) {
    let inner = client.inner.clone();
    let result = run_inner(&inner, start, &tx, &cancel).await;
    set_endpoint(&inner, None);
    if let Err(e) = result {
        tracing::error!(alias = %inner.alias, error = %e, "subscription failed");
        let _ = tx.send(Err(e)).await;
    }
    drop(client);
}

fn set_endpoint(inner: &Inner, url: Option<&str>) {
    *inner
        .subscription_endpoint
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = url.map(str::to_string);
}

/// How a stream ended.
enum StreamEnd {
    /// Cancelled or the consumer is gone.
    Stop,
    /// A failure to handle (retry or give up).
    Failed(Status),
}

async fn run_inner(
    inner: &Inner,
    start: Start,
    tx: &mpsc::Sender<Result<VerifiedEvent, ClientError>>,
    cancel: &CancellationToken,
) -> Result<(), ClientError> {
    let mut cursor = Cursor::new(start);
    let mut backoff = Backoff::new(inner.options.backoff);
    let mut last_failed: Option<usize> = None;
    let mut opened_before = false;
    let mut reauthenticated = false;
    let mut failing_since: Option<Instant> = None;
    let watchdog_tick = (inner.options.health_interval / 2).max(Duration::from_millis(50));
    let member = inner.member.id.to_string();
    loop {
        if cancel.is_cancelled() || tx.is_closed() {
            return Ok(());
        }
        let idx = inner.pick(last_failed)?;
        let ep = inner.endpoints[idx].clone();
        let token = inner.token().await?;
        let generation = token.generation;
        let (from_counter, mut expect_replay) = cursor.request();
        let request = authed(
            pb::SubscribeRequest {
                member: member.clone(),
                from_counter,
            },
            &token,
        )?;
        let timeout = inner.options.call_timeout;
        let mut api = ep.client();
        let opened = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(timeout, api.subscribe(request)) => match r {
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "subscribe: no answer from {} within {timeout:?}", ep.url
                ))),
            },
        };
        let end = match opened {
            Err(status) => StreamEnd::Failed(status),
            Ok(mut stream) => {
                if opened_before {
                    inner
                        .stats
                        .resubscriptions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::resubscription(&inner.alias);
                    tracing::info!(alias = %inner.alias, endpoint = %ep.url, from_counter, "resubscribed");
                }
                opened_before = true;
                set_endpoint(inner, Some(&ep.url));
                let mut last_activity = Instant::now();
                let mut ticker = tokio::time::interval(watchdog_tick);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let end = loop {
                    let message = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break StreamEnd::Stop,
                        _ = tx.closed() => break StreamEnd::Stop,
                        m = stream.message() => m,
                        _ = ticker.tick() => {
                            let idle = last_activity.elapsed();
                            if !ep.is_healthy() && idle >= inner.options.subscription_idle {
                                break StreamEnd::Failed(Status::unavailable(format!(
                                    "{} is unhealthy and the stream was silent for {idle:?}",
                                    ep.url
                                )));
                            }
                            continue;
                        }
                    };
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            break StreamEnd::Failed(Status::unavailable(
                                "the sequencer ended the stream",
                            ));
                        }
                        Err(status) => break StreamEnd::Failed(status),
                    };
                    last_activity = Instant::now();
                    let event = response.event.ok_or_else(|| {
                        ClientError::InvalidEvent(format!("{}: response without event", ep.url))
                    })?;
                    // A working stream: the next failure starts a fresh backoff.
                    backoff.reset();
                    last_failed = None;
                    reauthenticated = false;
                    failing_since = None;
                    if expect_replay {
                        expect_replay = false;
                        if let Some(processed) = &cursor.last {
                            check_redelivered(processed, &event, &ep.url)?;
                            continue;
                        }
                    }
                    let content = cursor.accept(&event, &inner.info).map_err(|e| match e {
                        ClientError::InvalidEvent(m) => {
                            ClientError::InvalidEvent(format!("{m} (from {})", ep.url))
                        }
                        other => other,
                    })?;
                    let item = VerifiedEvent {
                        event,
                        content,
                        endpoint: ep.url.clone(),
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => break StreamEnd::Stop,
                        sent = tx.send(Ok(item)) => if sent.is_err() { break StreamEnd::Stop },
                    }
                    last_activity = Instant::now();
                };
                set_endpoint(inner, None);
                end
            }
        };
        let status = match end {
            StreamEnd::Stop => return Ok(()),
            StreamEnd::Failed(status) => status,
        };
        if error_code(&status) == Some("SEQ_COUNTER_AHEAD") && expect_replay {
            // The counter of the processed event is beyond the member's history on the
            // sequencer: the event is gone (the database lost it). The histories differ.
            return Err(ClientError::ForkDetected {
                counter: from_counter,
                endpoint: ep.url.clone(),
                details: format!(
                    "the sequencer no longer has the processed event: {}",
                    status.message()
                ),
            });
        }
        if error_code(&status) == Some("SEQ_EVENTS_PRUNED") && expect_replay {
            // The processed event was pruned: resume after it (linkage check only).
            tracing::warn!(alias = %inner.alias, endpoint = %ep.url, counter = from_counter, "processed event pruned; resuming after it without re-delivery check");
            cursor.replay_unavailable = true;
            continue;
        }
        match classify_status(&status) {
            RetryClass::Definitive => return Err(status.into()),
            RetryClass::Reauthenticate if !reauthenticated => {
                reauthenticated = true;
                let renewed = inner
                    .reauthenticate(generation, Instant::now() + inner.options.connect_timeout)
                    .await;
                match renewed {
                    Ok(()) => continue,
                    // No endpoint could authenticate for now: keep trying like any outage.
                    Err(e) if matches!(crate::retry::classify(&e), RetryClass::Retry { .. }) => {
                        tracing::warn!(alias = %inner.alias, error = %e, "re-authentication failed; retrying");
                        reauthenticated = false;
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            RetryClass::Reauthenticate => return Err(status.into()),
            RetryClass::Retry { endpoint_down } => {
                let description = describe_status(&status);
                if endpoint_down {
                    ep.mark_down(&format!("subscription: {description}"));
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(alias = %inner.alias, endpoint = %ep.url, error = %description, failing_for = ?since.elapsed(), "subscription keeps failing");
                } else {
                    tracing::info!(alias = %inner.alias, endpoint = %ep.url, error = %description, "subscription interrupted; resuming");
                }
                last_failed = Some(idx);
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_identity::{SignaturePurpose, SigningKeyPair};
    use prost::Message as _;

    const DOMAIN: &str = "testdomain::1220aa";

    fn event(key: &SigningKeyPair, counter: i64, ts: i64, prev: i64) -> pb::SequencedEvent {
        let content = pb::SignedEventContent {
            domain_id: DOMAIN.into(),
            timestamp_micros: ts,
            sender: "PAR::x::1220bb".into(),
            message_id_hash: vec![],
            envelope_hashes: vec![],
            time_proof: true,
        }
        .encode_to_vec();
        let sig = key
            .sign_with_domain_str(SignaturePurpose::SequencedEvent, DOMAIN, &content)
            .expect("sign");
        pb::SequencedEvent {
            counter,
            timestamp_micros: ts,
            previous_timestamp_micros: prev,
            content,
            signature: Some(crate::to_proto_signature(
                &sig,
                SignaturePurpose::SequencedEvent,
            )),
            envelopes: vec![],
            message_id: String::new(),
            trace_context: String::new(),
            batch_proof: None,
        }
    }

    fn info(key: &SigningKeyPair) -> DomainInfo {
        DomainInfo {
            domain_id: DOMAIN.into(),
            sequencer_id: "SEQ::s::1220cc".into(),
            sequencer_key: key.public_key().clone(),
            protocol_version: "1".into(),
            max_request_size: 0,
            namespace_key: None,
            registered: false,
        }
    }

    #[test]
    fn identical_redelivery_passes() {
        let key = SigningKeyPair::generate();
        let e = event(&key, 5, 100, 90);
        check_redelivered(&e, &e.clone(), "https://a").expect("identical");
    }

    #[test]
    fn any_difference_is_a_fork() {
        let key = SigningKeyPair::generate();
        let e = event(&key, 5, 100, 90);
        let other_key = SigningKeyPair::generate();
        let mut variants = vec![
            // Same counter, another timestamp (a different history), validly signed.
            (event(&key, 5, 101, 90), "timestamp"),
            (event(&key, 5, 100, 91), "previous timestamp"),
            (event(&key, 6, 100, 90), "counter"),
            // Same fields, signed by another key.
            (event(&other_key, 5, 100, 90), "signature"),
        ];
        let mut content = e.clone();
        content.content.push(0);
        variants.push((content, "signed content"));
        let mut msg = e.clone();
        msg.message_id = "m".into();
        variants.push((msg, "message id"));
        let mut env = e.clone();
        env.envelopes.push(pb::DeliveredEnvelope {
            index: 0,
            envelope: None,
        });
        variants.push((env, "delivered envelopes"));
        for (v, what) in variants {
            match check_redelivered(&e, &v, "https://b:1") {
                Err(ClientError::ForkDetected {
                    counter,
                    endpoint,
                    details,
                }) => {
                    assert_eq!(counter, 5);
                    assert_eq!(endpoint, "https://b:1");
                    assert!(details.contains(what), "{what}: {details}");
                }
                other => panic!("{what}: expected a fork, got {other:?}"),
            }
        }
    }

    #[test]
    fn cursor_resumes_from_last_processed_counter() {
        let key = SigningKeyPair::generate();
        let info = info(&key);
        let mut c = Cursor::new(Start::Counter(0));
        assert_eq!(c.request(), (0, false));
        c.accept(&event(&key, 0, 10, 0), &info).expect("first");
        assert_eq!(c.request(), (0, true), "re-request the processed event");
        c.accept(&event(&key, 1, 20, 10), &info).expect("second");
        assert_eq!(c.request(), (1, true));
        // Pruned: resume after it.
        c.replay_unavailable = true;
        assert_eq!(c.request(), (2, false));
        c.accept(&event(&key, 2, 30, 20), &info).expect("third");
        assert_eq!(c.request(), (2, true));
    }

    #[test]
    fn cursor_rejects_gaps_bad_links_and_bad_signatures() {
        let key = SigningKeyPair::generate();
        let info = info(&key);
        let mut c = Cursor::new(Start::Counter(3));
        assert!(
            c.accept(&event(&key, 4, 10, 5), &info).is_err(),
            "must start at 3"
        );
        c.accept(&event(&key, 3, 10, 5), &info).expect("first");
        assert!(c.accept(&event(&key, 5, 20, 10), &info).is_err(), "gap");
        assert!(c.accept(&event(&key, 4, 10, 10), &info).is_err(), "same ts");
        assert!(c.accept(&event(&key, 4, 20, 9), &info).is_err(), "bad link");
        let other = SigningKeyPair::generate();
        assert!(
            c.accept(&event(&other, 4, 20, 10), &info).is_err(),
            "foreign signature"
        );
        c.accept(&event(&key, 4, 20, 10), &info)
            .expect("valid next");

        let mut after = Cursor::new(Start::After(event(&key, 4, 20, 10)));
        assert_eq!(after.request(), (4, true));
        assert!(after.accept(&event(&key, 5, 30, 19), &info).is_err());
        after
            .accept(&event(&key, 5, 30, 20), &info)
            .expect("linked to the stored event");
    }
}
