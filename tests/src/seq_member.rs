//! A member's part in the sequencer tests: registering participants with a cluster and
//! sending one envelope.

use std::time::Duration;

use domain_identity::{MemberId, MemberRole};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{ClientError, SequencerConnection};

use crate::topology::Member;
use crate::{envelope, now_micros};

/// Registers one participant per name with the cluster, in order.
pub async fn add_participants<const N: usize>(
    cluster: &SequencerCluster,
    names: [&str; N],
) -> anyhow::Result<[Member; N]> {
    let mut members = Vec::with_capacity(N);
    for name in names {
        members.push(cluster.add_member(MemberRole::Participant, name).await?);
    }
    members
        .try_into()
        .map_err(|_| anyhow::anyhow!("registered a different number of members than named"))
}

/// The max sequencing window of the tests' sends: [`send_to`] asks for sequencing within
/// 60 s from now.
pub const SEND_WINDOW: Duration = Duration::from_secs(60);

/// Sends `content` from `conn` to `to` alone as one envelope, to be sequenced within
/// [`SEND_WINDOW`].
pub async fn send_to(
    conn: &SequencerConnection,
    message_id: &str,
    content: &[u8],
    to: &MemberId,
) -> Result<pb::SendResponse, ClientError> {
    send_within(conn, message_id, content, to, SEND_WINDOW).await
}

/// [`send_to`], to be sequenced within `within` from now.
pub async fn send_within(
    conn: &SequencerConnection,
    message_id: &str,
    content: &[u8],
    to: &MemberId,
    within: Duration,
) -> Result<pb::SendResponse, ClientError> {
    let max_sequencing = now_micros() + within.as_micros() as i64;
    conn.send(message_id, vec![envelope(content, &[to])], max_sequencing)
        .await
}
