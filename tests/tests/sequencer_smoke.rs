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
