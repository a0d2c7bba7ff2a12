//! The reference participant end to end, through its CLI and admin API, on a real domain
//! (2 TLS sequencers, domain manager, mediator):
//!
//! 1. identity: `init` is idempotent, refuses a rename, `id` prints the same id;
//! 2. `ping` both ways (target as `name::…` and `PAR::name::…`; the mediator learned from
//!    the topology history, no `--mediator` hint), approved, each a
//!    committed transaction (root hash = sha256(payload)) in both participants' own
//!    databases;
//! 3. a confirmer with `auto-confirm = "reject"`: the ping fails with the rejecting
//!    participant named; one with `auto-confirm = "off"`: the mediator times it out;
//!    neither commits anything;
//! 4. a participant that is not allowlisted cannot be pinged (the sequencer refuses it
//!    as recipient) and cannot connect;
//! 5. restart: the node resumes after its last processed event and pings again; the
//!    `ConnectMulti` admin call switches a running node;
//! 6. `connect-multi` errors: a missing CA file is named, unreachable endpoints fail
//!    with each endpoint's reason, nothing is persisted.

use domain_e2e::participant as common;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{Domain, committed, participant_cli, participant_ok};
use domain_e2e::checks::keep_logs_on_error;
use domain_e2e::flt_participant::{ensure_cli_failed, ping_cli, ping_ok};
use domain_proto::participant::admin::v1 as pb;
use domain_testkit::process::TestLogs;
use domain_testkit::process::free_port;
use sha2::{Digest as _, Sha256};

#[tokio::test(flavor = "multi_thread")]
async fn ping_reject_timeout_restart_and_cli_errors() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    keep_logs_on_error(&logs, body(logs.clone())).await
}

async fn body(logs: TestLogs) -> anyhow::Result<()> {
    let mut domain = Domain::start(
        logs,
        &[
            ("alice", "payload"),
            ("bob", "payload"),
            ("carol", "reject"),
            ("dave", "off"),
        ],
        "2s",
    )
    .await?;
    let (alice, bob, carol, dave) = (0, 1, 2, 3);
    let p = |i: usize| &domain.participants[i];

    // 1. Identity.
    let alice_dir = p(alice).data_dir.to_string_lossy().into_owned();
    ensure!(participant_ok(&["id", "--data-dir", &alice_dir]).await? == p(alice).member);
    ensure!(
        participant_ok(&["init", "--name", "alice", "--data-dir", &alice_dir]).await?
            == p(alice).member,
        "init is not idempotent"
    );
    let rename = participant_cli(&["init", "--name", "mallory", "--data-dir", &alice_dir]).await?;
    ensure_cli_failed(&rename, "rename", "cannot be renamed", |e| {
        e.contains("cannot be renamed")
    })?;
    ensure!(p(alice).uid.starts_with("alice::1220"));

    // 2. Pings both ways.
    let out = ping_ok(&p(bob).uid, &p(alice).admin_url()).await?;
    ensure!(
        out.starts_with(&format!("ping {} approved in ", p(bob).member)) && out.ends_with(" ms"),
        "unexpected ping output {out:?}"
    );
    println!("{out}");
    let out = ping_ok(&p(alice).member, &p(bob).admin_url()).await?;
    ensure!(out.contains("approved in"), "{out}");
    println!("{out}");
    for i in [alice, bob] {
        // A ping returns when the pinging side committed; the other side commits when its
        // own stream delivers the verdict, which may be a moment later.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let rows = loop {
            let rows = committed(&p(i).db).await?;
            if rows.len() >= 2 || tokio::time::Instant::now() >= deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ensure!(
            rows.len() == 2,
            "{}: {} committed transactions, expected 2",
            p(i).name,
            rows.len()
        );
        for (request_id, root_hash, payload) in &rows {
            ensure!(payload.starts_with(b"ping "), "payload {payload:?}");
            ensure!(
                root_hash.as_slice() == Sha256::digest(payload).as_slice(),
                "root hash of request {request_id} is not sha256(payload)"
            );
        }
    }
    ensure!(
        committed(&p(alice).db).await? == committed(&p(bob).db).await?,
        "alice and bob committed different transactions"
    );

    // 3. Reject and timeout.
    let out = ping_cli(&p(carol).member, &p(alice).admin_url(), &[]).await?;
    let rejected_by = format!("rejected by {}", p(carol).member);
    ensure_cli_failed(&out, "ping to a rejecting participant", &rejected_by, |e| {
        e.contains(&rejected_by)
    })?;
    let out = ping_cli(&p(dave).member, &p(alice).admin_url(), &["--timeout", "8s"]).await?;
    ensure_cli_failed(
        &out,
        "ping to a participant that never answers",
        "that it timed out waiting for dave",
        |e| e.contains("timed out (no response from") && e.contains(&p(dave).member),
    )?;
    for i in [carol, dave] {
        ensure!(
            committed(&p(i).db).await?.is_empty(),
            "{} committed something",
            p(i).name
        );
    }
    ensure!(committed(&p(alice).db).await?.len() == 2);

    // 4. A participant that is not allowlisted.
    let eve = domain.add_participant("eve", "payload", false).await?;
    let p = |i: usize| &domain.participants[i];
    let out = ping_cli(&p(eve).member, &p(alice).admin_url(), &[]).await?;
    ensure_cli_failed(
        &out,
        "ping to a participant that is not allowlisted",
        "PAR_SEND_FAILED",
        |e| e.contains("PAR_SEND_FAILED"),
    )?;

    // 5. Restart alice: resumes after its last event, pings again.
    let alice_counter = p(alice)
        .metric("participant_last_counter")
        .await?
        .context("no last counter")?;
    domain.participants[alice]
        .process
        .as_mut()
        .context("alice not running")?
        .terminate(Duration::from_secs(15))
        .await?;
    domain.start_participant(alice).await?;
    let p = |i: usize| &domain.participants[i];
    let out = ping_ok(&p(bob).member, &p(alice).admin_url()).await?;
    ensure!(out.contains("approved in"), "{out}");
    let after = p(alice)
        .metric("participant_last_counter")
        .await?
        .context("no last counter")?;
    let processed = p(alice)
        .metric("participant_events_processed_total")
        .await?
        .context("no processed events")?;
    ensure!(
        processed == after - alice_counter,
        "after the restart alice processed {processed} events for counters {alice_counter}..={after}: it must resume exactly after the last processed one"
    );
    ensure!(committed(&p(alice).db).await?.len() == 3);

    // ConnectMulti on the running node: same domain, switched without a restart.
    let ca_pem = std::fs::read_to_string(&domain.cluster.pki_files.ca)?;
    let mut admin = p(alice).admin().await?;
    let reply = admin
        .connect_multi(pb::ConnectMultiRequest {
            alias: "again".into(),
            endpoints: domain.sequencer_endpoints(),
            ca_pem,
        })
        .await?
        .into_inner();
    ensure!(reply.domain_id == domain.cluster.domain_id.to_string());
    domain
        .wait_ready_status(alice, 200, Duration::from_secs(20))
        .await?;
    let status = admin.status(pb::StatusRequest {}).await?.into_inner();
    ensure!(status.alias == "again", "status {status:?}");
    ensure!(status.committed_transactions == 3);
    let out = ping_ok(&p(bob).member, &p(alice).admin_url()).await?;
    ensure!(out.contains("approved in"), "{out}");

    // 6. connect-multi errors (offline, in a fresh data dir).
    let dir = domain.logs.path("frank");
    let dir_s = dir.to_string_lossy().into_owned();
    participant_ok(&["init", "--name", "frank", "--data-dir", &dir_s]).await?;
    let endpoints = domain.sequencer_endpoints();
    let missing = domain.logs.path("no-such-ca.pem");
    let out = participant_cli(&[
        "connect-multi",
        "d",
        &endpoints[0],
        "--ca",
        &missing.to_string_lossy(),
        "--data-dir",
        &dir_s,
    ])
    .await?;
    ensure_cli_failed(
        &out,
        "connect-multi with a missing CA",
        "no-such-ca.pem",
        |e| e.contains("no-such-ca.pem"),
    )?;
    let dead = format!("https://localhost:{}", free_port());
    let ca = domain.cluster.pki_files.ca.to_string_lossy().into_owned();
    let out = participant_cli(&[
        "connect-multi",
        "d",
        &dead,
        "--ca",
        &ca,
        "--timeout",
        "1s",
        "--data-dir",
        &dir_s,
    ])
    .await?;
    ensure_cli_failed(
        &out,
        "connect-multi to an unreachable endpoint",
        "cannot reach domain d",
        |e| e.contains("cannot reach domain d") && e.contains(&dead),
    )?;
    ensure!(
        !dir.join("domain-connection.toml").exists(),
        "a failed connect-multi persisted"
    );
    domain.logs.passed();
    Ok(())
}
