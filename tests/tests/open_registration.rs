//! Issue 11 item 4: in open access mode a `Challenge` proves nothing (only the public
//! key is sent), so it must not register a member; registration waits for a valid
//! `Authenticate`.

use domain_e2e::e2e_test;
use domain_e2e::seq_cluster::start_with_db;
use domain_e2e::seq_rpc::challenge_request;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use domain_e2e::{connect, envelope, now_micros};
use domain_identity::{MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use domain_sequencer_client::connect_channel;
use domain_testkit::process::TestLogs;

fn fresh_participant(name: &str) -> anyhow::Result<(MemberId, Arc<SigningKeyPair>)> {
    let key = SigningKeyPair::generate();
    let id = MemberId::new(
        MemberRole::Participant,
        UniqueId::new(name, *key.fingerprint())?,
    );
    Ok((id, Arc::new(key)))
}

async fn member_rows(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM seq_members", &[])
        .await?
        .get(0))
}

e2e_test! {
    open_mode_challenge_flood_registers_nothing => body
}

async fn body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, db) =
        start_with_db(logs, "open_registration", 1, "access-mode = \"open\"", &[]).await?;

    // A legitimate participant joins by proving its key (Challenge + Authenticate).
    let legit = fresh_participant("legit")?;
    let conn = connect(&cluster, 0, &legit).await?;
    let before = member_rows(&db).await?;

    // The flood: Challenges for fresh ids, never followed by Authenticate.
    let node = &cluster.nodes[0];
    let channel = connect_channel(
        &node.public_endpoint(),
        Some(cluster.client_tls()),
        Duration::from_secs(5),
    )
    .await?;
    let mut raw = SequencerServiceClient::new(channel);
    for i in 0..50 {
        let (id, key) = fresh_participant(&format!("spam{i}"))?;
        // Answered or refused, it must not register: only the row count matters.
        let _ = raw.challenge(challenge_request(&id, &key)).await;
    }
    let after = member_rows(&db).await?;
    ensure!(
        after == before,
        "50 Challenges without Authenticate changed seq_members from {before} to {after} rows"
    );

    // The legitimate participant keeps working.
    for k in 0..5 {
        let req = conn.sign_submission(&pb::SubmissionRequest {
            sender: legit.0.to_string(),
            message_id: format!("legit-{k}"),
            envelopes: vec![envelope(format!("hello {k}").into_bytes(), &[&legit.0])],
            max_sequencing_time_micros: now_micros() + 60_000_000,
            time_proof: false,
        });
        let r = conn.send_signed(req).await?;
        ensure!(!r.deduplicated, "legit-{k} sequenced once");
    }
    Ok(())
}
