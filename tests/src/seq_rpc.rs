//! Raw gRPC calls of the sequencer tests (without the client library): challenge requests
//! and the status of a call that must be refused.

use anyhow::bail;
use domain_identity::{MemberId, SigningKeyPair};
use domain_proto::common::v1 as common_pb;
use domain_proto::sequencer::v1 as pb;
use tonic::Status;

/// The status of a call that must be refused; an answer instead is an error naming `case`.
pub fn rejected<T: std::fmt::Debug>(r: Result<T, Status>, case: &str) -> anyhow::Result<Status> {
    match r {
        Ok(v) => bail!("{case}: expected a rejection, got {v:?}"),
        Err(st) => Ok(st),
    }
}

/// A `Challenge` request for `member`, presenting `key`'s Ed25519 public key.
pub fn challenge_request(member: &MemberId, key: &SigningKeyPair) -> pb::ChallengeRequest {
    pb::ChallengeRequest {
        member: member.to_string(),
        public_key: Some(common_pb::PublicKey {
            algorithm: common_pb::KeyAlgorithm::Ed25519 as i32,
            key: key.public_key().to_bytes().to_vec(),
        }),
    }
}
