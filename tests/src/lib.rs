//! Shared helpers of the end-to-end tests (tests/tests/*.rs): connecting
//! members to a [`domain_testkit::cluster::SequencerCluster`].

pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use domain_identity::{MemberId, SigningKeyPair};
use domain_sequencer_client::{MemberIdentity, SequencerConnection, connect_channel};
use domain_testkit::cluster::SequencerCluster;

/// Connects and authenticates `member` to instance `i` of the cluster.
pub async fn connect(
    cluster: &SequencerCluster,
    i: usize,
    member: &(MemberId, Arc<SigningKeyPair>),
) -> anyhow::Result<SequencerConnection> {
    let node = cluster
        .nodes
        .get(i)
        .ok_or_else(|| anyhow::anyhow!("no instance {i}"))?;
    let channel = connect_channel(
        &node.public_endpoint(),
        Some(cluster.client_tls()),
        Duration::from_secs(5),
    )
    .await?;
    let conn = SequencerConnection::new(
        channel,
        MemberIdentity {
            id: member.0.clone(),
            key: member.1.clone(),
        },
    )
    .await?;
    conn.authenticate().await?;
    Ok(conn)
}

/// A one-envelope payload addressed to `recipients`.
pub fn envelope(
    content: impl Into<Vec<u8>>,
    recipients: &[&MemberId],
) -> domain_proto::v1::Envelope {
    domain_proto::v1::Envelope {
        content: content.into().into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        broadcast: false,
    }
}

/// Microseconds since the epoch, for max sequencing times.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}
