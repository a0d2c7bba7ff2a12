//! The mediator's confirmation protocol with real processes: a 2-instance
//! sequencer cluster, `mediator` replicas over their own database, and
//! participants played by the test.
//!
//! - 1,000 requests from 2 participants through 2 sequencer instances each get
//!   exactly one verdict, seen by both participants and sequenced once:
//!   approve when all confirmers approve, reject when one rejects, timeout when
//!   one stays silent; the passive replica runs no subscription and reports
//!   NOT_SERVING;
//! - a response with a bad signature, one from a non-confirming participant,
//!   one for an unknown request and one after the deadline are each ignored,
//!   logged and counted, and never change a verdict; a request naming a
//!   confirmer without confirmation permission is rejected by the mediator.

use domain_e2e::e2e_test;
use domain_e2e::flt_util::log_of;
use std::time::{Duration, Instant};

use anyhow::ensure;
use domain_e2e::mediator::{
    Answer, Expected, Kind, Load, MediatorDomain, ServingStatus, check_outcome,
};
use domain_identity::SignaturePurpose;
use domain_sequencer_client::to_proto_signature;
use domain_testkit::process::TestLogs;
use domain_topology::Permission;
use futures::{StreamExt as _, TryStreamExt as _};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The load test: every tenth request rejected, every tenth timed out.
const LOAD: Load = Load {
    prefix: "root",
    reject: Some(8),
    silent: Some(9),
};

e2e_test! {
    serial thousand_requests_get_exactly_one_verdict_each => thousand_body
}

async fn thousand_body(logs: TestLogs) -> anyhow::Result<()> {
    const N: usize = 1000;
    let d = MediatorDomain::start_pair(logs, "med_thousand", 2, Duration::from_secs(2)).await?;
    let active = d.wait_active(Duration::from_secs(5)).await?;
    let passive = 1 - active;
    ensure!(
        d.grpc_health(active).await? == ServingStatus::Serving,
        "active replica health"
    );
    ensure!(
        d.grpc_health(passive).await? == ServingStatus::NotServing,
        "the passive replica must report NOT_SERVING"
    );
    let (sa, sp) = (d.status(active).await?, d.status(passive).await?);
    ensure!(
        sa.active && !sp.active,
        "status: active {sa:?}, passive {sp:?}"
    );
    ensure!(sa.mediator_id == d.mediator.0.to_string() && sp.mediator_id == sa.mediator_id);

    let started = Instant::now();
    let d = &d;
    let sent: Vec<(usize, i64)> = futures::stream::iter(0..N)
        .map(|i| async move {
            let id = d.request_of(&LOAD, i).await?;
            d.respond_to(&LOAD, i, id).await?;
            Ok::<_, anyhow::Error>((i, id))
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let send_time = started.elapsed();
    let ids: Vec<i64> = sent.iter().map(|(_, id)| *id).collect();
    d.wait_verdicts_at_alice_and_bob(&ids, Duration::from_secs(40))
        .await?;
    let all_time = started.elapsed();
    // Anything duplicated would arrive right behind: give it time to show up.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let alice = d.exactly_one_each("alice", &ids)?;
    let bob = d.exactly_one_each("bob", &ids)?;
    let mut counts = [0usize; 3];
    for (i, id) in &sent {
        let expected = LOAD.expected(d, *i);
        counts[match LOAD.kind(*i) {
            Kind::Approve => 0,
            Kind::Reject => 1,
            Kind::Silent => 2,
        }] += 1;
        check_outcome(&alice[id].verdict, &expected)?;
        ensure!(
            alice[id].verdict == bob[id].verdict && alice[id].ts == bob[id].ts,
            "alice and bob saw different verdict events for request {id}"
        );
        ensure!(alice[id].verdict.root_hash == LOAD.root(*i));
    }
    // Sequenced exactly once each (the sequencer's own record).
    let db = d.sequenced_verdicts().await?;
    ensure!(
        db.len() == N,
        "{} distinct verdict message ids sequenced, expected {N}",
        db.len()
    );
    for id in &ids {
        let n = db.get(&format!("verdict-{id}")).copied().unwrap_or(0);
        ensure!(n == 1, "verdict-{id} sequenced {n} times");
    }
    let [approved, rejected, timed_out] = d
        .metrics(
            active,
            [
                ("mediator_verdicts_total", &[("outcome", "approved")]),
                ("mediator_verdicts_total", &[("outcome", "rejected")]),
                ("mediator_verdicts_total", &[("outcome", "timed_out")]),
            ],
        )
        .await?;
    ensure!(
        (approved, rejected, timed_out) == (counts[0] as f64, counts[1] as f64, counts[2] as f64),
        "verdict metrics {approved}/{rejected}/{timed_out}, expected {counts:?}"
    );
    ensure!(
        d.metric(passive, "mediator_subscriptions_total", &[])
            .await?
            == 0.0
            && d.metric(passive, "mediator_events_processed_total", &[])
                .await?
                == 0.0,
        "the passive replica must not subscribe or process"
    );
    ensure!(d.grpc_health(passive).await? == ServingStatus::NotServing);
    // The only responses a clean run ignores: a submitter's approval sequenced
    // after the other confirmer's reject already decided the request.
    let [ignored, decided, latency_sum, batches, events] = d
        .metrics(
            active,
            [
                ("mediator_responses_ignored_total", &[]),
                ("mediator_responses_ignored_total", &[("reason", "decided")]),
                (
                    "mediator_decision_latency_seconds_sum",
                    &[("outcome", "approved")],
                ),
                ("mediator_batch_size_count", &[]),
                ("mediator_events_processed_total", &[]),
            ],
        )
        .await?;
    ensure!(
        ignored == decided && decided <= counts[1] as f64,
        "{ignored} responses ignored in a clean run, {decided} of them after a reject"
    );
    println!(
        "{N} requests ({} approve, {} reject, {} timeout): sent with their responses in {:.2} s, \
         all verdicts at both participants after {:.2} s; mean approve decision latency {:.1} ms \
         (sequencer time); {events} events in {batches} transactions; {decided} approvals came after a reject",
        counts[0],
        counts[1],
        counts[2],
        send_time.as_secs_f64(),
        all_time.as_secs_f64(),
        latency_sum * 1000.0 / counts[0] as f64,
    );
    Ok(())
}

e2e_test! {
    serial ignored_responses_never_change_verdicts => ignored_body
}

async fn ignored_body(logs: TestLogs) -> anyhow::Result<()> {
    let d = MediatorDomain::start(
        logs,
        "med_ignored",
        1,
        &[
            ("alice", Permission::Submission),
            ("bob", Permission::Submission),
            ("carol", Permission::Submission),
            ("dave", Permission::Observation),
        ],
        Duration::from_secs(2),
    )
    .await?;
    let domain_id = d.cluster.domain_id.clone();

    // 1. Bad signature: bob's "reject" signed with carol's key (but carrying
    //    bob's key), sequenced before the genuine approvals.
    let r1 = d
        .request("alice", &["alice", "bob"], &["alice", "bob"], b"r1")
        .await?;
    let mut forged = d.signed_response("bob", r1, b"r1", Answer::Reject("forged"));
    let sig = d.participant("carol").member.1.sign(
        SignaturePurpose::ConfirmationResponse,
        &domain_id,
        &forged.response,
    );
    forged.signature = Some(to_proto_signature(
        &sig,
        SignaturePurpose::ConfirmationResponse,
    ));
    d.send_response("bob", forged).await?;
    d.respond("alice", r1, b"r1", Answer::Approve).await?;
    d.respond("bob", r1, b"r1", Answer::Approve).await?;

    // 2. Not confirming: carol is an informee, not a confirmer; her reject comes first.
    let r2 = d
        .request("alice", &["alice", "bob", "carol"], &["alice"], b"r2")
        .await?;
    d.respond("carol", r2, b"r2", Answer::Reject("not mine to reject"))
        .await?;
    d.respond("alice", r2, b"r2", Answer::Approve).await?;

    // 3. Unknown request.
    d.respond("carol", r2 + 1, b"r2", Answer::Reject("no such request"))
        .await?;

    // 4. After the deadline: bob stays silent, times out, then rejects.
    let r3 = d
        .request("alice", &["alice", "bob"], &["alice", "bob"], b"r3")
        .await?;
    d.respond("alice", r3, b"r3", Answer::Approve).await?;
    d.wait_verdicts("alice", &[r1, r2, r3], Duration::from_secs(15))
        .await?;
    let late_ts = d
        .respond("bob", r3, b"r3", Answer::Reject("too late"))
        .await?;
    ensure!(
        late_ts > r3 + 2_000_000,
        "the late response was sequenced before the deadline"
    );

    // 5. A confirmer without confirmation permission: rejected by the mediator at once.
    let r4 = d
        .request("alice", &["alice", "dave"], &["alice", "dave"], b"r4")
        .await?;
    d.wait_verdicts("alice", &[r4], Duration::from_secs(10))
        .await?;

    // Wait until the late response was processed, then for any stray verdict.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d
        .metric(0, "mediator_responses_ignored_total", &[("reason", "late")])
        .await?
        < 1.0
    {
        ensure!(
            Instant::now() < deadline,
            "the late response was not counted within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let alice = d.exactly_one_each("alice", &[r1, r2, r3, r4])?;
    d.exactly_one_each("bob", &[r1, r2, r3])?;
    d.exactly_one_each("carol", &[r2])?;
    d.exactly_one_each("dave", &[r4])?;
    check_outcome(&alice[&r1].verdict, &Expected::Approved)?;
    check_outcome(&alice[&r2].verdict, &Expected::Approved)?;
    check_outcome(
        &alice[&r3].verdict,
        &Expected::TimedOut {
            missing: vec![d.id("bob")],
        },
    )?;
    check_outcome(
        &alice[&r4].verdict,
        &Expected::Rejected {
            participant: d.mediator.0.to_string(),
            reason: format!(
                "confirming participant {} has no confirmation permission at the request time (permission: observation)",
                d.id("dave")
            ),
        },
    )?;
    let db = d.sequenced_verdicts().await?;
    ensure!(
        db.len() == 4 && db.values().all(|n| *n == 1),
        "sequenced verdicts: {db:?}"
    );

    // Counted once each, nothing else ignored, and logged with the reason.
    let log = log_of(d.nodes[0].process.as_ref());
    for reason in ["bad_signature", "not_confirming", "unknown_request", "late"] {
        let n = d
            .metric(0, "mediator_responses_ignored_total", &[("reason", reason)])
            .await?;
        ensure!(
            n == 1.0,
            "mediator_responses_ignored_total{{reason={reason}}} = {n}, expected 1"
        );
        let logged = log
            .lines()
            .filter(|l| {
                l.contains("ignored confirmation response")
                    && l.contains(&format!("\"reason\":\"{reason}\""))
            })
            .count();
        ensure!(
            logged == 1,
            "{logged} log lines for the ignored {reason} response"
        );
        println!("ignored and counted: {reason}");
    }
    let total = d.metric(0, "mediator_responses_ignored_total", &[]).await?;
    ensure!(total == 4.0, "{total} responses ignored in all, expected 4");
    let rejected_at_once = d
        .metric(0, "mediator_requests_total", &[("result", "rejected")])
        .await?;
    ensure!(
        rejected_at_once == 1.0,
        "requests rejected by the mediator: {rejected_at_once}"
    );
    Ok(())
}

/// Bad configurations exit with 64 and a message naming the key; `--dump-config`
/// prints the documented defaults.
#[test]
fn config_errors_name_the_key_and_exit_64() -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut cmd = std::process::Command::new(domain_testkit::process::binary_path("mediator"));
        for (k, _) in std::env::vars() {
            if k.starts_with("MEDIATOR__") || k == "DOMAIN_CONFIG_FILE" {
                cmd.env_remove(k);
            }
        }
        Ok(cmd.args(args).output()?)
    };
    let domain = format!("domain-id=\"d::1220{}\"", "ab".repeat(32));
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "sequencerz=[]"], "sequencerz"),
        (&["--set", "sequencers=[\"http://a:1\"]"], "domain-id"),
        (
            &["--set", &domain, "--set", "signing-key-file=/k.pem"],
            "sequencers",
        ),
        (
            &[
                "--set",
                &domain,
                "--set",
                "signing-key-file=/k.pem",
                "--set",
                "sequencers=[\"https://a:1\"]",
            ],
            "sequencer-tls",
        ),
        (
            &[
                "--set",
                &domain,
                "--set",
                "signing-key-file=/k.pem",
                "--set",
                "sequencers=[\"http://a:1\"]",
                "--set",
                "lease.ttl=\"50ms\"",
            ],
            "lease.ttl",
        ),
    ];
    for (args, key) in cases {
        let out = run(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("  {args:?}: {}", stderr.trim());
        ensure!(
            out.status.code() == Some(64),
            "{args:?}: exit {:?}",
            out.status.code()
        );
        ensure!(
            stderr.contains(&format!("`{key}`")),
            "{args:?}: message does not name `{key}`: {stderr}"
        );
    }
    let out = run(&["--dump-config"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "--dump-config failed");
    for line in [
        "name = \"mediator\"",
        "time-proof-interval = \"200ms\"",
        "ops-listen = \"0.0.0.0:4503\"",
        "listen = \"127.0.0.1:4502\"",
    ] {
        ensure!(text.contains(line), "--dump-config lacks {line:?}:\n{text}");
    }
    Ok(())
}
