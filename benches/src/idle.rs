//! Idle subscribers (`--idle-subscribers`): members that subscribe on one instance and
//! receive nothing, to measure what an open but idle subscription costs the sequencer
//! (RSS per subscriber) and whether its database reads grow with the subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::admin::v1 as admin_pb;
use domain_proto::sequencer::v1::SubscribeResponse;
use domain_sequencer_client::retry::{self, RetryClass};
use domain_sequencer_client::{ClientError, MemberIdentity, SequencerConnection};
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::task::JoinHandle;

use crate::load::Stats;

/// Registrations in flight at once over the one admin connection: each is a database
/// write on instance 0, so a few overlap the round trips without queueing many.
const REGISTER_CONCURRENCY: usize = 16;
/// Domain info + authenticate + subscribe sequences in flight at once (each is 4 RPCs and
/// a signature on each side). The sequencer sheds what it cannot take at once
/// (`SEQ_OVERLOADED`); those are retried, this keeps the retries few.
const SUBSCRIBE_CONCURRENCY: usize = 8;
/// First and last pause between attempts after a busy answer.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bound on one member's authenticate + subscribe, so a stuck stream fails the run
/// instead of hanging it.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sequencer processes are left alone before their RSS is read, so that
/// buffers allocated while answering the last subscriptions are in place.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What the idle subscribers cost, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IdleResult {
    pub per_instance: usize,
    pub total: usize,
    /// Idle subscriptions per TLS connection (HTTP/2 streams); 1 = a connection each.
    pub streams_per_connection: usize,
    /// TLS connections the idle subscribers use, over all instances.
    pub connections: usize,
    /// Wall time to register every idle member through the admin API.
    pub register_seconds: f64,
    /// Wall time to connect, authenticate and subscribe every idle member.
    pub subscribe_seconds: f64,
    /// Attempts the sequencer refused as busy (`SEQ_OVERLOADED`) and that were retried.
    pub busy_retries: u64,
    /// RSS of each instance before the idle subscribers connected (after the senders and
    /// verifying subscribers had, and [`SETTLE`]), and after all were subscribed (+ [`SETTLE`]).
    pub rss_before_bytes: Vec<u64>,
    pub rss_after_bytes: Vec<u64>,
    /// (Σ after − Σ before) ÷ total idle subscribers.
    pub rss_per_idle_subscriber_bytes: f64,
}

impl IdleResult {
    /// The RSS growth per idle subscriber, from the per-instance readings.
    pub fn per_subscriber(before: &[u64], after: &[u64], total: usize) -> f64 {
        let before: u64 = before.iter().sum();
        let after: u64 = after.iter().sum();
        if total == 0 {
            return 0.0;
        }
        (after as f64 - before as f64) / total as f64
    }
}

/// Registers `n` participants named `{prefix}-{i}` through instance 0's admin API, over
/// one connection with [`REGISTER_CONCURRENCY`] requests in flight (a fresh admin
/// connection per member, as [`SequencerCluster::add_member`] does, is slow for 1,000s).
pub async fn register(
    cluster: &SequencerCluster,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(MemberId, Arc<SigningKeyPair>)>> {
    let admin = cluster.admin(0).await.context("admin connection")?;
    futures::stream::iter(0..n)
        .map(|i| {
            let mut admin = admin.clone();
            async move {
                let key = SigningKeyPair::generate();
                let id = MemberId::new(
                    MemberRole::Participant,
                    UniqueId::new(format!("{prefix}-{i}"), *key.fingerprint())?,
                );
                admin
                    .register_member(admin_pb::RegisterMemberRequest {
                        member: id.to_string(),
                        public_key: None,
                    })
                    .await
                    .with_context(|| format!("registering {id}"))?;
                anyhow::Ok((id, Arc::new(key)))
            }
        })
        .buffered(REGISTER_CONCURRENCY)
        .try_collect()
        .await
}

/// Connects, authenticates and subscribes `members` (chunks of `per_instance`: chunk *i*
/// on instance *i*), `streams_per_connection` of them sharing one TLS connection, and
/// spawns one task per stream that fails the run (through `stats`) if anything arrives
/// or the stream ends. Returns the tasks, the number of connections and of busy retries.
pub async fn subscribe(
    cluster: &SequencerCluster,
    members: &[(MemberId, Arc<SigningKeyPair>)],
    per_instance: usize,
    streams_per_connection: usize,
    stats: &Arc<Stats>,
) -> anyhow::Result<(Vec<JoinHandle<()>>, usize, u64)> {
    let tls = cluster.client_tls();
    let busy_retries = Arc::new(AtomicU64::new(0));
    // (instance, connection's channel, member) for every idle member.
    let mut jobs = Vec::with_capacity(members.len());
    let mut connections = 0;
    for (instance, on_instance) in members.chunks(per_instance.max(1)).enumerate() {
        let node = cluster
            .nodes
            .get(instance)
            .with_context(|| format!("no instance {instance}"))?;
        let endpoint = node.public_endpoint();
        for group in on_instance.chunks(streams_per_connection) {
            let channel = domain_sequencer_client::connect_channel(
                &endpoint,
                Some(tls.clone()),
                Duration::from_secs(5),
            )
            .await
            .with_context(|| format!("idle subscribers' connection to {endpoint}"))?;
            connections += 1;
            for m in group {
                jobs.push((instance, channel.clone(), m.clone()));
            }
        }
    }
    let outcomes: Vec<anyhow::Result<JoinHandle<()>>> = futures::stream::iter(jobs)
        .map(|(instance, channel, (id, key))| {
            let stats = stats.clone();
            let busy_retries = busy_retries.clone();
            async move {
                let member = MemberIdentity { id, key };
                let what = format!("idle subscriber {} on instance {instance}", member.id);
                let stream = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
                    let mut pause = RETRY_FIRST;
                    loop {
                        match open(channel.clone(), member.clone()).await {
                            Err(e)
                                if retry::classify(&e)
                                    == (RetryClass::Retry {
                                        endpoint_down: false,
                                    }) =>
                            {
                                busy_retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(RETRY_MAX);
                            }
                            other => break other,
                        }
                    }
                })
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{what}: not subscribed within {SUBSCRIBE_TIMEOUT:?}")
                })?
                .with_context(|| what.clone())?;
                anyhow::Ok(tokio::spawn(watch(what, stream, stats)))
            }
        })
        .buffer_unordered(SUBSCRIBE_CONCURRENCY)
        .collect()
        .await;
    // Every attempt is awaited (each is bounded), so that on a failure the streams already
    // open are closed here rather than left to report their end as the run's failure.
    let mut tasks = Vec::with_capacity(outcomes.len());
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(t) => tasks.push(t),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        for t in tasks {
            t.abort();
        }
        return Err(e);
    }
    Ok((tasks, connections, busy_retries.load(Ordering::Relaxed)))
}

/// One attempt: domain info, authentication and the subscription from counter 0, over
/// the shared `channel`.
async fn open(
    channel: tonic::transport::Channel,
    member: MemberIdentity,
) -> Result<tonic::Streaming<SubscribeResponse>, ClientError> {
    let conn = SequencerConnection::new(channel, member).await?;
    conn.authenticate().await?;
    conn.subscribe(0).await
}

/// Holds an idle subscription open for the run. Nothing is addressed to an idle member,
/// so any event, or the end of the stream, is a failure of the run.
async fn watch(what: String, mut stream: tonic::Streaming<SubscribeResponse>, stats: Arc<Stats>) {
    let failure = match stream.message().await {
        Ok(Some(m)) => format!(
            "{what} received an event (counter {}) though nothing is addressed to it",
            m.event.map_or(-1, |e| e.counter)
        ),
        Ok(None) => format!("{what}: the sequencer ended the stream"),
        Err(status) => format!(
            "{what}: stream failed: {:?}: {}",
            status.code(),
            status.message()
        ),
    };
    stats.fail(failure);
}

/// RSS of every process in `pids`, in bytes; fails if one cannot be read (a process
/// that is gone would make the difference meaningless).
pub fn rss_of(pids: &[u32]) -> anyhow::Result<Vec<u64>> {
    pids.iter()
        .map(|pid| {
            crate::sysstat::rss_bytes(*pid)
                .with_context(|| format!("cannot read VmRSS of sequencer process {pid}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_growth_is_shared_over_all_idle_subscribers() {
        let per = IdleResult::per_subscriber(&[100, 200], &[100 + 4000, 200 + 6000], 500);
        assert_eq!(per, 20.0);
        assert_eq!(IdleResult::per_subscriber(&[5], &[3], 2), -1.0);
        assert_eq!(IdleResult::per_subscriber(&[5], &[9], 0), 0.0);
    }
}
