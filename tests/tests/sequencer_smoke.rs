//! A member sends to another through one instance; both read it from the other.

use std::time::Duration;

use domain_e2e::{connect, envelope, now_micros};
use domain_identity::MemberRole;
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::StreamValidator;
use domain_testkit::{pg::PgCluster, process::TestLogs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_receive_across_instances() -> anyhow::Result<()> {
    let logs = TestLogs::new("send_and_receive_across_instances");
    let db = PgCluster::shared().create_database("seq_smoke").await;
    let cluster = SequencerCluster::start(logs, db, 2, "").await?;
    let alice = cluster.add_member(MemberRole::Participant, "alice").await?;
    let bob = cluster.add_member(MemberRole::Participant, "bob").await?;

    let a0 = connect(&cluster, 0, &alice).await?;
    let b1 = connect(&cluster, 1, &bob).await?;
    let sent = a0
        .send(
            "m-1",
            vec![envelope(b"hello".to_vec(), &[&bob.0])],
            now_micros() + 10_000_000,
        )
        .await?;
    assert!(!sent.deduplicated);

    let mut bob_stream = b1.subscribe(0).await?;
    let event = tokio::time::timeout(Duration::from_secs(10), bob_stream.message())
        .await??
        .and_then(|r| r.event)
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    b1.verify_event(&event)?;
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
    let receipt = tokio::time::timeout(Duration::from_secs(10), alice_stream.message())
        .await??
        .and_then(|r| r.event)
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    a1.verify_event(&receipt)?;
    assert_eq!(receipt.message_id, "m-1");
    assert_eq!(receipt.timestamp_micros, sent.sequencing_timestamp_micros);
    assert!(receipt.envelopes.is_empty());
    cluster.logs.passed();
    Ok(())
}
