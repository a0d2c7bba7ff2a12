//! Endpoint health: one channel per sequencer endpoint, a `grpc.health.v1` check loop per
//! endpoint, and round-robin selection over the healthy ones.
//!
//! An endpoint is *healthy* once it has shown the domain's identity (same domain id and
//! sequencer key as the others: a mis-configured URL pointing at another domain is never
//! used) and its health check for service `""` reports `SERVING`. It turns unhealthy when a
//! check fails, reports anything else, or does not answer within the check timeout, and
//! also at once when a call through it fails with a transport error or `UNAVAILABLE`; the
//! next passing check makes it healthy again.
//!
//! A connection that keeps timing out (a black-holed peer) is replaced by a fresh lazy
//! channel after three timed-out checks, so recovery does not wait for HTTP/2 keep-alive.
//!
//! Each passing check also measures the endpoint's round trip (a moving average). A healthy
//! endpoint whose round trip is far above the best one's ([`is_slow`]: more than twice the
//! best plus 100 ms, e.g. a replica behind a cross-region link) is used only when no other
//! healthy endpoint is left ([`pick_preferring`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use std::time::Instant;

use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{ClientError, metrics};

/// Largest message accepted from or sent to a sequencer.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// Timed-out health checks in a row after which the channel is replaced.
const RECONNECT_AFTER_TIMEOUTS: u32 = 3;

pub use crate::trust::DomainInfo;

/// Fetches and checks `GetDomainInfo` over `channel` ([`DomainInfo::from_proto`]), bounded
/// by `timeout`.
pub(crate) async fn fetch_domain_info(
    channel: Channel,
    timeout: Duration,
) -> Result<DomainInfo, ClientError> {
    let mut client =
        SequencerServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE);
    let info = tokio::time::timeout(timeout, client.get_domain_info(pb::GetDomainInfoRequest {}))
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded(format!("GetDomainInfo: no answer within {timeout:?}"))
        })??
        .into_inner();
    DomainInfo::from_proto(info).map_err(ClientError::DomainInfo)
}

/// Mutable bookkeeping of one endpoint.
#[derive(Debug, Default)]
struct EndpointStatus {
    /// Showed the expected domain identity.
    validated: bool,
    /// Showed another domain's identity: never used.
    rejected: Option<String>,
    /// Why it was last marked unhealthy.
    last_problem: Option<String>,
}

/// One sequencer endpoint: its (replaceable) channel and health.
pub(crate) struct EndpointHandle {
    pub(crate) url: String,
    alias: String,
    endpoint: Endpoint,
    channel: RwLock<Channel>,
    healthy: watch::Sender<bool>,
    status: Mutex<EndpointStatus>,
    timeouts_in_a_row: AtomicU32,
    /// Moving average of the passing health checks' round trips, microseconds (0: none yet).
    rtt_micros: AtomicU64,
}

impl std::fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("url", &self.url)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl EndpointHandle {
    /// Prepares a lazy channel to `url` (nothing is connected yet).
    pub(crate) fn new(
        alias: &str,
        url: &str,
        tls: Option<ClientTlsConfig>,
        connect_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let invalid = |reason: String| ClientError::Endpoint {
            endpoint: url.to_string(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        match tls {
            Some(tls) => {
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| invalid(crate::domain_client::error_chain(&e)))?;
            }
            None if url.starts_with("https://") => {
                return Err(invalid("https endpoint without TLS settings".into()));
            }
            None => {}
        }
        let channel = endpoint.connect_lazy();
        let (healthy, _) = watch::channel(false);
        let handle = Self {
            url: url.to_string(),
            alias: alias.to_string(),
            endpoint,
            channel: RwLock::new(channel),
            healthy,
            status: Mutex::new(EndpointStatus::default()),
            timeouts_in_a_row: AtomicU32::new(0),
            rtt_micros: AtomicU64::new(0),
        };
        metrics::endpoint_healthy(&handle.alias, &handle.url, false);
        Ok(handle)
    }

    /// The current channel (cheap clone).
    pub(crate) fn channel(&self) -> Channel {
        self.channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A sequencer API client over the current channel.
    pub(crate) fn client(&self) -> SequencerServiceClient<Channel> {
        SequencerServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Replaces the channel with a fresh lazy one (the next call connects anew).
    fn reconnect(&self) {
        let fresh = self.endpoint.connect_lazy();
        *self.channel.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    pub(crate) fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    /// The measured health-check round trip (moving average), once a check passed.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn record_rtt(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.rtt_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(3) / 4)
                .saturating_add(sample / 4)
                .max(1)
        };
        self.rtt_micros.store(new, Ordering::Relaxed);
    }

    /// Watches the health flag (e.g. to abandon a call when the endpoint turns unhealthy).
    pub(crate) fn watch_health(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Not rejected for showing another domain's identity.
    pub(crate) fn is_usable(&self) -> bool {
        self.lock_status().rejected.is_none()
    }

    pub(crate) fn is_validated(&self) -> bool {
        self.lock_status().validated
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, EndpointStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the endpoint was last marked unhealthy, or rejected.
    pub(crate) fn problem(&self) -> Option<String> {
        let s = self.lock_status();
        s.rejected.clone().or_else(|| s.last_problem.clone())
    }

    /// Compares the identity the endpoint showed with the domain's; a mismatch rejects it
    /// for good.
    pub(crate) fn validate(&self, expected: &DomainInfo, shown: &DomainInfo) -> bool {
        let mut s = self.lock_status();
        if shown.domain_id == expected.domain_id && shown.sequencer_key == expected.sequencer_key {
            s.validated = true;
            true
        } else {
            let reason = format!(
                "{} serves domain {} with sequencer key {}, expected domain {} with key {}",
                self.url,
                shown.domain_id,
                shown.sequencer_key.fingerprint(),
                expected.domain_id,
                expected.sequencer_key.fingerprint()
            );
            tracing::error!(alias = %self.alias, endpoint = %self.url, "{reason}; endpoint will not be used");
            s.rejected = Some(reason);
            drop(s);
            self.set_healthy(false, None);
            false
        }
    }

    /// Refuses the endpoint for good (it broke a pin of the connection).
    pub(crate) fn refuse(&self, reason: &str) {
        let mut s = self.lock_status();
        s.rejected = Some(format!("{} {reason}", self.url));
        drop(s);
        self.set_healthy(false, None);
    }

    /// Marks the endpoint unhealthy at once (a call through it failed); the health loop
    /// restores it after a passing check.
    pub(crate) fn mark_down(&self, reason: &str) {
        self.set_healthy(false, Some(reason));
    }

    fn set_healthy(&self, healthy: bool, reason: Option<&str>) {
        let healthy = healthy && self.is_usable();
        if let Some(r) = reason {
            self.lock_status().last_problem = Some(r.to_string());
        }
        let changed = self.healthy.send_if_modified(|h| {
            let changed = *h != healthy;
            *h = healthy;
            changed
        });
        if changed {
            metrics::endpoint_healthy(&self.alias, &self.url, healthy);
            if healthy {
                tracing::info!(alias = %self.alias, endpoint = %self.url, "sequencer endpoint healthy");
            } else {
                tracing::warn!(
                    alias = %self.alias,
                    endpoint = %self.url,
                    reason = reason.unwrap_or("unknown"),
                    "sequencer endpoint unhealthy"
                );
            }
        }
    }

    /// One health check of service `""` (and, on the first success, the identity check).
    /// Returns whether the endpoint is healthy afterwards.
    pub(crate) async fn check_once(&self, expected: &DomainInfo, timeout: Duration) -> bool {
        if !self.is_usable() {
            return false;
        }
        let channel = self.channel();
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let sent = Instant::now();
        let outcome =
            tokio::time::timeout(timeout, HealthClient::new(channel.clone()).check(request)).await;
        let problem = match outcome {
            Ok(Ok(resp)) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                self.record_rtt(sent.elapsed());
                match resp.into_inner().status() {
                    ServingStatus::Serving => None,
                    other => Some(format!("health check: {}", other.as_str_name())),
                }
            }
            Ok(Err(status)) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                Some(format!(
                    "health check failed: {}",
                    crate::domain_client::describe_status(&status)
                ))
            }
            Err(_) => {
                let n = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= RECONNECT_AFTER_TIMEOUTS {
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    self.reconnect();
                }
                Some(format!("health check: no answer within {timeout:?}"))
            }
        };
        if problem.is_none() && !self.is_validated() {
            match fetch_domain_info(channel, timeout).await {
                Ok(shown) => {
                    if !self.validate(expected, &shown) {
                        return false;
                    }
                }
                Err(e) => {
                    self.set_healthy(false, Some(&format!("domain info: {e}")));
                    return false;
                }
            }
        }
        match problem {
            None => {
                self.set_healthy(true, None);
                true
            }
            Some(p) => {
                self.set_healthy(false, Some(&p));
                false
            }
        }
    }
}

/// Checks `endpoint` every `interval` until `stop`.
pub(crate) async fn health_loop(
    endpoint: Arc<EndpointHandle>,
    expected: Arc<DomainInfo>,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = endpoint.check_once(&expected, timeout) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Picks the endpoint for the next attempt, round-robin from `cursor`:
///
/// - among the healthy endpoints, the first at or after `cursor` that is not `avoid` (the one
///   that just failed); `avoid` itself only when it is the only healthy one;
/// - with no healthy endpoint, the same over every usable (not rejected) endpoint, so that a
///   client whose health checks are all failing still tries (at the backoff pace);
/// - `None` when no endpoint is usable at all.
pub fn pick_endpoint(
    healthy: &[bool],
    usable: &[bool],
    cursor: usize,
    avoid: Option<usize>,
) -> Option<usize> {
    let n = healthy.len();
    if n == 0 {
        return None;
    }
    let choose = |ok: &dyn Fn(usize) -> bool| -> Option<usize> {
        let mut fallback = None;
        for k in 0..n {
            let i = (cursor + k) % n;
            if !ok(i) {
                continue;
            }
            if Some(i) != avoid {
                return Some(i);
            }
            fallback = Some(i);
        }
        fallback
    };
    choose(&|i| healthy[i] && usable.get(i).copied().unwrap_or(false))
        .or_else(|| choose(&|i| usable.get(i).copied().unwrap_or(false)))
}

/// Whether a round trip of `rtt` is far above the `best` one: more than twice it plus
/// 100 ms (so ordinary jitter on a LAN never splits the endpoints).
pub fn is_slow(rtt: Option<Duration>, best: Option<Duration>) -> bool {
    match (rtt, best) {
        (Some(rtt), Some(best)) => rtt > best * 2 + Duration::from_millis(100),
        _ => false,
    }
}

/// [`pick_endpoint`] preferring the endpoints that are not slow (`slow[i]`): a healthy,
/// not slow endpoint other than `avoid` first; otherwise the same choice as
/// [`pick_endpoint`] over all of them.
pub fn pick_preferring(
    healthy: &[bool],
    slow: &[bool],
    usable: &[bool],
    cursor: usize,
    avoid: Option<usize>,
) -> Option<usize> {
    let fast: Vec<bool> = healthy
        .iter()
        .enumerate()
        .map(|(i, h)| *h && !slow.get(i).copied().unwrap_or(false))
        .collect();
    if fast.iter().any(|f| *f) {
        let only_fast_usable: Vec<bool> = fast.iter().zip(usable).map(|(f, u)| *f && *u).collect();
        if let Some(i) = pick_endpoint(&fast, &only_fast_usable, cursor, avoid)
            && Some(i) != avoid
        {
            return Some(i);
        }
    }
    pick_endpoint(healthy, usable, cursor, avoid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_endpoints_are_used_only_when_nothing_else_is_left() {
        let ms = Duration::from_millis;
        assert!(
            !is_slow(Some(ms(30)), Some(ms(2))),
            "LAN jitter is not slow"
        );
        assert!(is_slow(Some(ms(450)), Some(ms(5))));
        assert!(!is_slow(None, Some(ms(5))));
        let healthy = [true, true, true];
        let slow = [false, true, false];
        let usable = [true; 3];
        let picks: Vec<_> = (0..6)
            .map(|c| pick_preferring(&healthy, &slow, &usable, c, None))
            .collect();
        assert!(picks.iter().all(|p| *p != Some(1)), "{picks:?}");
        // The fast ones down (or just failed): the slow one is still used.
        assert_eq!(
            pick_preferring(&[false, true, false], &slow, &usable, 0, None),
            Some(1)
        );
        assert_eq!(
            pick_preferring(&[true, true, false], &slow, &usable, 0, Some(0)),
            Some(1)
        );
    }

    /// `pick_endpoint` for cursors 0..6, every endpoint usable.
    fn six_picks(healthy: &[bool; 3]) -> Vec<Option<usize>> {
        (0..6)
            .map(|c| pick_endpoint(healthy, &[true; 3], c, None))
            .collect()
    }

    #[test]
    fn round_robin_over_healthy() {
        assert_eq!(
            six_picks(&[true, true, true]),
            vec![Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
    }

    #[test]
    fn skips_unhealthy() {
        let picks = six_picks(&[true, false, true]);
        assert_eq!(
            picks,
            vec![Some(0), Some(2), Some(2), Some(0), Some(2), Some(2)]
        );
        assert!(picks.iter().all(|p| *p != Some(1)));
    }

    #[test]
    fn avoids_the_endpoint_that_just_failed() {
        let usable = [true; 3];
        // 0 failed; cursor points at it: move on to the next healthy one.
        assert_eq!(
            pick_endpoint(&[true, true, true], &usable, 0, Some(0)),
            Some(1)
        );
        assert_eq!(
            pick_endpoint(&[true, false, true], &usable, 0, Some(0)),
            Some(2)
        );
        // It is the only healthy one: use it anyway.
        assert_eq!(
            pick_endpoint(&[true, false, false], &usable, 1, Some(0)),
            Some(0)
        );
    }

    #[test]
    fn without_healthy_endpoints_tries_usable_ones() {
        let usable = [true, false, true];
        assert_eq!(
            pick_endpoint(&[false, false, false], &usable, 0, None),
            Some(0)
        );
        assert_eq!(
            pick_endpoint(&[false, false, false], &usable, 1, None),
            Some(2)
        );
        assert_eq!(
            pick_endpoint(&[false, false, false], &usable, 0, Some(0)),
            Some(2)
        );
        // A rejected endpoint is never picked, even if flagged healthy.
        assert_eq!(
            pick_endpoint(&[false, true, false], &usable, 1, None),
            Some(2)
        );
        assert_eq!(pick_endpoint(&[false], &[false], 0, None), None);
        assert_eq!(pick_endpoint(&[], &[], 0, None), None);
    }
}
