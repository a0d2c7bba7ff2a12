//! A member sends to another through one instance; both read it from the other.

use std::time::Duration;

use domain_e2e::checks::next_event;
use domain_e2e::connect;
use domain_e2e::seq_member::{add_participants, send_within};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::StreamValidator;
use domain_testkit::{pg::PgCluster, process::TestLogs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_receive_across_instances() -> anyhow::Result<()> {
    let logs = TestLogs::new("send_and_receive_across_instances");
    let db = PgCluster::shared().create_database("seq_smoke").await;
    let cluster = SequencerCluster::start(logs, db, 2, "").await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;

    let a0 = connect(&cluster, 0, &alice).await?;
    let b1 = connect(&cluster, 1, &bob).await?;
    let sent = send_within(&a0, "m-1", b"hello", &bob.0, Duration::from_secs(10)).await?;
    assert!(!sent.deduplicated);

    let mut bob_stream = b1.subscribe(0).await?;
    let event = next_event(&mut bob_stream, "bob's stream").await?;
    b1.verify_event(&event)?;
    // Batch signatures are on by default: the event carries its proof, and a client that
    // only knows per-event signatures would refuse it (docs/protocol.md's upgrade order).
    assert!(event.batch_proof.is_some(), "a batch-signed event");
    assert!(
        per_event_signature_verifies(&b1, &event).is_err(),
        "the batch signature is not a signature over the content"
    );
    StreamValidator::default().check(&event)?;
    assert_eq!(event.counter, 0);
    assert_eq!(event.timestamp_micros, sent.sequencing_timestamp_micros);
    assert_eq!(event.envelopes.len(), 1);
    assert!(
        event.message_id.is_empty(),
        "recipients never see the message id"
    );

    // The sender gets a receipt carrying its message id.
    let a1 = connect(&cluster, 1, &alice).await?;
    let mut alice_stream = a1.subscribe(0).await?;
    let receipt = next_event(&mut alice_stream, "alice's receipts").await?;
    a1.verify_event(&receipt)?;
    assert_eq!(receipt.message_id, "m-1");
    assert_eq!(receipt.timestamp_micros, sent.sequencing_timestamp_micros);
    assert!(receipt.envelopes.is_empty());
    cluster.logs.passed();
    Ok(())
}

/// What a client that predates batch signatures checks: the signature over the content.
fn per_event_signature_verifies(
    conn: &domain_sequencer_client::SequencerConnection,
    event: &domain_proto::sequencer::v1::SequencedEvent,
) -> anyhow::Result<()> {
    let legacy = domain_proto::sequencer::v1::SequencedEvent {
        batch_proof: None,
        ..event.clone()
    };
    domain_sequencer_client::verify_event(&conn.sequencer_key, &conn.domain_id, &legacy)?;
    Ok(())
}

/// Issue 17, `writer.batch-signatures = false` (a rolling upgrade with older member clients):
/// every event is signed on its own, without a proof, and verifies the way older clients
/// verify it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_signatures_when_batch_signatures_are_off() -> anyhow::Result<()> {
    let logs = TestLogs::new("per_event_signatures_when_batch_signatures_are_off");
    let db = PgCluster::shared().create_database("seq_smoke_each").await;
    let cluster =
        SequencerCluster::start(logs, db, 1, "[writer]\nbatch-signatures = false\n").await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;
    let a0 = connect(&cluster, 0, &alice).await?;
    let b0 = connect(&cluster, 0, &bob).await?;
    send_within(&a0, "m-1", b"hello", &bob.0, Duration::from_secs(10)).await?;
    let mut bob_stream = b0.subscribe(0).await?;
    let event = next_event(&mut bob_stream, "bob's stream").await?;
    assert!(event.batch_proof.is_none(), "no proof: signed on its own");
    b0.verify_event(&event)?;
    per_event_signature_verifies(&b0, &event)?;
    cluster.logs.passed();
    Ok(())
}
