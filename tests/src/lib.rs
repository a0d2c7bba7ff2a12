//! Shared helpers of the end-to-end tests (tests/tests/*.rs): connecting
//! members to a [`domain_localnet::sequencers::SequencerCluster`].

pub mod checks;
pub mod flt_participant;
pub mod flt_util;
pub mod history;
pub mod mediator;
pub mod participant;
pub mod proxy;
pub mod seq_auth;
pub mod seq_cluster;
pub mod seq_db;
pub mod seq_member;
pub mod seq_rpc;
pub mod streams;
pub mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use domain_identity::{MemberId, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::{
    ClientOptions, ClientTlsFiles, DomainClient, DomainPins, DomainTls, MemberIdentity,
    SequencerConnection,
};

/// Connects and authenticates `member` to instance `i` of the cluster.
pub async fn connect(
    cluster: &SequencerCluster,
    i: usize,
    member: &(MemberId, Arc<SigningKeyPair>),
) -> anyhow::Result<SequencerConnection> {
    cluster.connect(i, member).await
}

/// A one-envelope payload addressed to `recipients`.
pub fn envelope(
    content: impl Into<Vec<u8>>,
    recipients: &[&MemberId],
) -> domain_proto::sequencer::v1::Envelope {
    domain_proto::sequencer::v1::Envelope {
        content: content.into().into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        broadcast: false,
    }
}

/// Microseconds since the epoch, for max sequencing times.
pub use domain_time::now_micros;

/// Fetches `/metrics` from an ops URL and summarises the figures that tell whether the
/// cluster was healthy under the load (batch sizes, commit times, peers marked offline).
pub async fn metrics_summary(ops_url: &str) -> String {
    let text = match http_get(ops_url, "/metrics").await {
        Ok(t) => t,
        Err(e) => return format!("metrics unavailable: {e:#}"),
    };
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    };
    let batches = value("sequencer_batch_size_count");
    let events = value("sequencer_batch_size_sum");
    let commit = value("sequencer_commit_seconds_sum");
    format!(
        "{batches} batches, {:.1} events/batch, {:.1} ms/commit, marked peers offline {}, checkpoints {}",
        if batches > 0.0 { events / batches } else { 0.0 },
        if batches > 0.0 {
            commit * 1000.0 / batches
        } else {
            0.0
        },
        value("sequencer_instances_marked_offline_total"),
        value("sequencer_checkpoints_written_total"),
    )
}

/// A plain HTTP/1.1 GET of `base` + `path` (the ops port has no TLS); returns the body
/// whatever the status.
pub async fn http_get(base: &str, path: &str) -> anyhow::Result<String> {
    Ok(domain_probe::get_path(base, path, Duration::from_secs(5))
        .await?
        .body)
}

/// [`connect`], retrying briefly while the instance does not know the member yet.
///
/// A member registered through one instance's admin API is found by the others on a
/// cache miss (a database lookup, since c1f8b8d); the retry only guards tests against
/// that regression and prints when it happens.
pub async fn connect_member(
    cluster: &SequencerCluster,
    i: usize,
    member: &(MemberId, Arc<SigningKeyPair>),
) -> anyhow::Result<SequencerConnection> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match connect(cluster, i, member).await {
            Ok(c) => return Ok(c),
            Err(e)
                if Instant::now() < deadline && format!("{e:#}").contains("is not registered") =>
            {
                println!(
                    "seq-{i} does not know {} yet (registration not visible); retrying",
                    member.0.name()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The cluster's domain id and sequencer key, pinned for a `DomainClient`: a bare
/// `SequencerCluster` runs no domain manager, so no namespace-signed registration could vouch
/// for the key and an unpinned client refuses it (issue 11 item 12).
pub fn cluster_pins(cluster: &SequencerCluster) -> anyhow::Result<DomainPins> {
    let key = SigningKeyPair::load_pem(cluster.logs.path("sequencer-key.pem"))?;
    Ok(DomainPins {
        domain_id: Some(cluster.domain_id.to_string()),
        sequencer_key: Some(*key.fingerprint()),
    })
}

/// A [`DomainClient`] for `member` over `endpoints` of the cluster (TLS trusting the test CA),
/// pinned to the cluster's domain id and sequencer key (see [`cluster_pins`]).
pub async fn domain_client(
    cluster: &SequencerCluster,
    endpoints: &[String],
    member: &(MemberId, Arc<SigningKeyPair>),
    mut options: ClientOptions,
) -> anyhow::Result<DomainClient> {
    options.pins = cluster_pins(cluster)?;
    let tls = DomainTls::Files(ClientTlsFiles {
        ca: cluster.pki_files.ca.clone(),
        cert: None,
        key: None,
        domain_name: None,
    });
    let identity = MemberIdentity {
        id: member.0.clone(),
        key: member.1.clone(),
    };
    DomainClient::connect("testdomain", endpoints, tls, identity, options)
        .await
        .with_context(|| format!("connect {}", member.0))
}

/// Registers `n` participants (`load-0` …) and connects a [`DomainClient`] for each over every
/// instance of the cluster: the members of a [`history::start_load`].
pub async fn load_clients(
    cluster: &SequencerCluster,
    n: usize,
    options: ClientOptions,
) -> anyhow::Result<Vec<DomainClient>> {
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.public_endpoint()).collect();
    let mut clients = Vec::new();
    for i in 0..n {
        let member = cluster
            .add_member(
                domain_identity::MemberRole::Participant,
                &format!("load-{i}"),
            )
            .await?;
        clients.push(domain_client(cluster, &endpoints, &member, options.clone()).await?);
    }
    Ok(clients)
}

/// Declares an end-to-end test: `#[tokio::test]` on a 2-thread runtime, with
/// [`TestLogs`](domain_testkit::process::TestLogs) named after the test that are kept when
/// `body(logs)` fails ([`checks::keep_logs_on_error`]). With `serial`, the test first takes
/// the `SERIAL` lock of the calling module (one test of that file at a time when they share
/// a process, as under `cargo test`). Doc comments and attributes go before the name.
#[macro_export]
macro_rules! e2e_test {
    ($(#[$meta:meta])* serial $name:ident => $body:path) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> ::anyhow::Result<()> {
            let _serial = SERIAL.lock().await;
            let logs = ::domain_testkit::process::TestLogs::new(stringify!($name));
            $crate::checks::keep_logs_on_error(&logs, $body(logs.clone())).await
        }
    };
    ($(#[$meta:meta])* $name:ident => $body:path) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> ::anyhow::Result<()> {
            let logs = ::domain_testkit::process::TestLogs::new(stringify!($name));
            $crate::checks::keep_logs_on_error(&logs, $body(logs.clone())).await
        }
    };
}

/// Runs a test body on its own 2-thread runtime (so the body's timing does not depend on
/// how the harness was started), one at a time per process (nextest runs each test in a
/// process of its own; `cargo test` would otherwise run these load tests side by side),
/// prints how long it took, and keeps the logs when it fails.
pub fn run_test<F, Fut>(name: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(domain_testkit::process::TestLogs) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let logs = domain_testkit::process::TestLogs::new(name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let result = runtime.block_on(body(logs.clone()));
    println!(
        "{name}: {} after {:.1?}",
        if result.is_ok() { "passed" } else { "FAILED" },
        started.elapsed()
    );
    match &result {
        Ok(()) => logs.passed(),
        Err(_) => logs.mark_failed(),
    }
    result
}
