//! Smoke tests of the scale options of seqbench against a real sequencer cluster (the
//! testkit's PostgreSQL and the workspace `sequencer` binary, built with the same profile):
//! idle subscribers stay subscribed, receive nothing and get their RSS reading; with
//! fanout > 1, where the bench verifies each event's signature once for all its copies,
//! a corrupted copy still fails the run. Nothing here asserts a performance figure.

use clap::Parser as _;
use domain_benches::cli::Args;

/// A short phase 2 only run over one instance.
fn args(extra: &[&str]) -> Args {
    let mut argv = vec![
        "seqbench",
        "--instances",
        "1",
        "--senders",
        "1",
        "--in-flight",
        "8",
        "--payload-bytes",
        "256",
        "--warmup",
        "500ms",
        "--duration",
        "1s",
        "--skip-floor",
        "--skip-raw",
        "--skip-latency",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).expect("valid arguments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subscribers_stay_subscribed_and_are_measured() {
    // Two connections of 16 and 14 streams, so sharing and splitting both run.
    let summary = domain_benches::seqbench::run(args(&[
        "--idle-subscribers",
        "30",
        "--idle-streams-per-connection",
        "16",
    ]))
    .await
    .expect("the run passes with idle subscribers in place");
    let idle = summary
        .idle
        .expect("the summary reports the idle subscribers");
    assert_eq!((idle.per_instance, idle.total), (30, 30));
    assert_eq!(idle.connections, 2);
    assert_eq!(idle.rss_before_bytes.len(), 1);
    assert_eq!(idle.rss_after_bytes.len(), 1);
    assert!(idle.rss_before_bytes[0] > 0 && idle.rss_after_bytes[0] > 0);
    let phase = summary.throughput.expect("phase 2 ran");
    assert!(phase.window.acked > 0, "nothing acknowledged: {phase:?}");
    assert_eq!(summary.shape.idle_subscribers_per_instance, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_copies_are_each_checked_for_corruption() {
    let err = domain_benches::seqbench::run(args(&[
        "--subscribers",
        "3",
        "--fanout",
        "3",
        "--inject-fault",
        "bad-signature",
    ]))
    .await
    .expect_err("a corrupted copy of a fanned-out event must fail the run");
    let msg = format!("{err:#}");
    // The signature check itself must catch it: the per-copy content checks alone would
    // also reject the flipped byte, but then a cache that skipped the signature of a
    // copy that differs from the verified one would go unnoticed.
    assert!(
        msg.contains("subscriber 0") && msg.contains("bad sequencer signature"),
        "unexpected error: {msg}"
    );
}
