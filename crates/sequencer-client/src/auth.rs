//! The member side of challenge → signature → token, shared by [`SequencerConnection`]
//! (one endpoint) and [`DomainClient`] (failover over several).
//!
//! [`SequencerConnection`]: crate::SequencerConnection
//! [`DomainClient`]: crate::domain_client::DomainClient

use std::time::Duration;

use domain_identity::SignaturePurpose;
use domain_proto::common::v1 as common_pb;
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use domain_time::Timestamp;
use tonic::Status;
use tonic::transport::Channel;

use crate::{ClientError, MemberIdentity, to_proto_signature};

/// A session token and when it expires (sequencer time).
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    pub token: String,
    pub expires_at: Timestamp,
}

/// Asks `url` for a challenge, refuses one issued for another domain than `domain_id`,
/// signs it with the member's key and trades it for a token. Each of the two calls is
/// bounded by `timeout`.
pub(crate) async fn authenticate(
    client: &mut SequencerServiceClient<Channel>,
    member: &MemberIdentity,
    domain_id: &str,
    url: &str,
    timeout: Duration,
) -> Result<Granted, ClientError> {
    let no_answer = |what: &str| {
        ClientError::Status(Status::deadline_exceeded(format!(
            "{what}: no answer from {url} within {timeout:?}"
        )))
    };
    let challenge = tokio::time::timeout(
        timeout,
        client.challenge(pb::ChallengeRequest {
            member: member.id.to_string(),
            public_key: Some(common_pb::PublicKey::from(member.key.public_key())),
        }),
    )
    .await
    .map_err(|_| no_answer("Challenge"))??
    .into_inner();
    // A challenge for another domain would make our signature usable there.
    if challenge.domain_id != domain_id {
        return Err(ClientError::DomainInfo(format!(
            "{url} issued a challenge for domain {}, expected {domain_id}",
            challenge.domain_id
        )));
    }
    let sig = member
        .key
        .sign_with_domain_str(
            SignaturePurpose::AuthChallenge,
            &challenge.domain_id,
            &challenge.nonce,
        )
        .map_err(|e| ClientError::DomainInfo(e.to_string()))?;
    let resp = tokio::time::timeout(
        timeout,
        client.authenticate(pb::AuthenticateRequest {
            member: member.id.to_string(),
            nonce: challenge.nonce,
            signature: Some(to_proto_signature(&sig, SignaturePurpose::AuthChallenge)),
        }),
    )
    .await
    .map_err(|_| no_answer("Authenticate"))??
    .into_inner();
    Ok(Granted {
        token: resp.token,
        expires_at: Timestamp::from_micros(resp.expires_at_micros),
    })
}
