//! Playing the domain manager in tests: topology transactions signed with the
//! cluster's namespace key and sent as the `DOM::` member.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::confirmation::v1 as confirmation_pb;
use domain_proto::sequencer::v1 as pb;
use domain_proto::topology::v1 as topology_pb;
use domain_sequencer_client::SequencerConnection;
use domain_topology::{Mapping, Operation, Permission, TopologyTransaction};
use prost::Message as _;

use crate::now_micros;

/// A member id with its signing key.
pub type Member = (MemberId, Arc<SigningKeyPair>);

pub fn new_participant(name: &str) -> anyhow::Result<Member> {
    let key = SigningKeyPair::generate();
    let id = MemberId::new(
        MemberRole::Participant,
        UniqueId::new(name, *key.fingerprint())?,
    );
    Ok((id, Arc::new(key)))
}

pub fn domain_manager(cluster: &SequencerCluster) -> Member {
    (
        domain_topology::domain_manager_member(&cluster.domain_id),
        cluster.domain_key.clone(),
    )
}

pub fn set_state(serial: u64, p: &MemberId, permission: Permission) -> TopologyTransaction {
    TopologyTransaction::replace_participant(serial, p, permission)
}

pub fn topology_envelope(signed: topology_pb::SignedTopologyTransaction) -> pb::Envelope {
    pb::Envelope {
        content: confirmation_pb::DomainMessage {
            message: Some(confirmation_pb::domain_message::Message::Topology(signed)),
        }
        .encode_to_vec()
        .into(),
        recipients: vec![],
        broadcast: true,
    }
}

/// Sends a transaction signed with the namespace key; returns its sequencing time.
pub async fn send_topology(
    cluster: &SequencerCluster,
    dom: &SequencerConnection,
    tx: &TopologyTransaction,
) -> anyhow::Result<i64> {
    let signed = tx.sign(&cluster.domain_id, &cluster.domain_key);
    let r = dom
        .send(
            &domain_topology::message_id(tx.serial),
            vec![topology_envelope(signed)],
            now_micros() + 60_000_000,
        )
        .await
        .with_context(|| format!("sequence topology serial {}", tx.serial))?;
    Ok(r.sequencing_timestamp_micros)
}

/// The `SequencerRegistration` the domain manager writes at bootstrap for the cluster's
/// sequencer (id and key as its `GetDomainInfo` shows them). Members without a pinned
/// sequencer key only trust a key registered so (issue 11 item 12).
pub async fn sequencer_registration(
    cluster: &SequencerCluster,
    serial: u64,
) -> anyhow::Result<TopologyTransaction> {
    let channel = domain_sequencer_client::connect_channel(
        &cluster.nodes[0].public_endpoint(),
        Some(cluster.client_tls()),
        Duration::from_secs(5),
    )
    .await?;
    let info = pb::sequencer_service_client::SequencerServiceClient::new(channel)
        .get_domain_info(pb::GetDomainInfoRequest {})
        .await?
        .into_inner();
    let key = info.sequencer_public_key.context("no sequencer key")?;
    Ok(TopologyTransaction {
        serial,
        operation: Operation::Replace,
        mapping: Mapping::Sequencer {
            sequencer: MemberId::parse(&info.sequencer_id)?,
            public_key: Some(domain_identity::PublicKey::from_bytes(&key.key)?),
        },
    })
}

pub async fn sleep_until_micros(t: i64) {
    let wait = t - now_micros();
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait as u64)).await;
    }
}
