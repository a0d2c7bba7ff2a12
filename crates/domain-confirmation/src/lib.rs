//! The confirmation protocol's vocabulary, shared by the mediator (which decides and signs
//! verdicts), the participant (which verifies and applies them) and the tests: how a
//! request ended ([`Outcome`]), what makes a verdict valid ([`verify_verdict`]), and the
//! message ids verdicts are sent with ([`verdict_message_id`]), how both sides sign and
//! verify the protocol's signed messages ([`sign`], [`verify_signature`]), and the view of a
//! verified sequenced event both processors take in ([`Event`]).

use std::borrow::Borrow;

use domain_identity::{DomainId, MemberId, SignaturePurpose, SigningKeyPair};
use domain_proto::common::v1 as common_pb;
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_sequencer_client::to_proto_signature;
use prost::Message;

/// Message ids of verdicts are `verdict-<request id>`: a resend (after a failover, or a
/// retry) is deduplicated by the sequencer.
pub const VERDICT_MESSAGE_PREFIX: &str = "verdict-";

/// The sequencer message id of the verdict for `request_id`.
pub fn verdict_message_id(request_id: i64) -> String {
    format!("{VERDICT_MESSAGE_PREFIX}{request_id}")
}

/// The request id of a verdict message id, if it is one.
pub fn parse_verdict_message_id(message_id: &str) -> Option<i64> {
    message_id
        .strip_prefix(VERDICT_MESSAGE_PREFIX)?
        .parse()
        .ok()
}

/// One sequenced event, already verified (sequencer signature, envelope hashes, counter
/// continuity), as a confirmation processor (mediator or participant) sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub counter: i64,
    pub ts: i64,
    /// The (sequencer-signed) sender of the event.
    pub sender: String,
    /// Set only in our own receipts.
    pub message_id: String,
    pub time_proof: bool,
    /// The envelopes addressed to this member.
    pub envelopes: Vec<sequencer_pb::Envelope>,
}

impl Event {
    /// The processor's view of an event (owned or borrowed; envelope contents are shared,
    /// not copied) and its verified signed content.
    pub fn from_verified(
        event: impl Borrow<sequencer_pb::SequencedEvent>,
        content: &sequencer_pb::SignedEventContent,
    ) -> Self {
        let event = event.borrow();
        Self {
            counter: event.counter,
            ts: event.timestamp_micros,
            sender: content.sender.clone(),
            message_id: event.message_id.clone(),
            time_proof: content.time_proof,
            envelopes: event
                .envelopes
                .iter()
                .filter_map(|d| d.envelope.clone())
                .collect(),
        }
    }
}

/// How a confirmation request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Rejected { participant: String, reason: String },
    TimedOut { missing_confirmers: Vec<String> },
}

impl Outcome {
    /// Label of the `outcome` metric labels and of the stores' `outcome` columns.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Rejected { .. } => "rejected",
            Outcome::TimedOut { .. } => "timed_out",
        }
    }

    /// One human-readable line, e.g. `rejected by PAR::bob::…: payload starts with reject`.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Approved => "approved".into(),
            Outcome::Rejected {
                participant,
                reason,
            } => format!("rejected by {participant}: {reason}"),
            Outcome::TimedOut { missing_confirmers } => format!(
                "timed out (no response from {})",
                missing_confirmers.join(", ")
            ),
        }
    }

    /// The verdict's `outcome` field.
    pub fn to_proto(&self) -> pb::verdict::Outcome {
        match self {
            Outcome::Approved => pb::verdict::Outcome::Approved(pb::Approved {}),
            Outcome::Rejected {
                participant,
                reason,
            } => pb::verdict::Outcome::Rejected(pb::Rejected {
                participant: participant.clone(),
                reason: reason.clone(),
            }),
            Outcome::TimedOut { missing_confirmers } => {
                pb::verdict::Outcome::TimedOut(pb::TimedOut {
                    missing_confirmers: missing_confirmers.clone(),
                })
            }
        }
    }

    /// The outcome a verdict carries; `None` when it carries none (an invalid verdict).
    pub fn from_proto(outcome: Option<pb::verdict::Outcome>) -> Option<Self> {
        Some(match outcome? {
            pb::verdict::Outcome::Approved(_) => Outcome::Approved,
            pb::verdict::Outcome::Rejected(r) => Outcome::Rejected {
                participant: r.participant,
                reason: r.reason,
            },
            pb::verdict::Outcome::TimedOut(t) => Outcome::TimedOut {
                missing_confirmers: t.missing_confirmers,
            },
        })
    }
}

/// The two signed messages of the protocol: a participant's [`pb::SignedConfirmationResponse`]
/// and a mediator's [`pb::SignedVerdict`]. Both carry the encoded message, a signature of one
/// purpose for the domain over those bytes, and the signer's public key; [`sign`] builds one,
/// [`verify_signature`] checks one.
pub trait SignedMessage: Sized {
    /// The signature purpose of this message.
    const PURPOSE: SignaturePurpose;
    /// The message from its signed bytes, signature and signer key.
    fn from_parts(
        bytes: Vec<u8>,
        signature: common_pb::Signature,
        signer_key: common_pb::PublicKey,
    ) -> Self;
    /// The signed bytes.
    fn bytes(&self) -> &[u8];
    fn signature(&self) -> Option<&common_pb::Signature>;
    fn signer_key(&self) -> Option<&common_pb::PublicKey>;
}

impl SignedMessage for pb::SignedConfirmationResponse {
    const PURPOSE: SignaturePurpose = SignaturePurpose::ConfirmationResponse;
    fn from_parts(
        response: Vec<u8>,
        signature: common_pb::Signature,
        signer_key: common_pb::PublicKey,
    ) -> Self {
        Self {
            response,
            signature: Some(signature),
            signer_key: Some(signer_key),
        }
    }
    fn bytes(&self) -> &[u8] {
        &self.response
    }
    fn signature(&self) -> Option<&common_pb::Signature> {
        self.signature.as_ref()
    }
    fn signer_key(&self) -> Option<&common_pb::PublicKey> {
        self.signer_key.as_ref()
    }
}

impl SignedMessage for pb::SignedVerdict {
    const PURPOSE: SignaturePurpose = SignaturePurpose::Verdict;
    fn from_parts(
        verdict: Vec<u8>,
        signature: common_pb::Signature,
        signer_key: common_pb::PublicKey,
    ) -> Self {
        Self {
            verdict,
            signature: Some(signature),
            signer_key: Some(signer_key),
        }
    }
    fn bytes(&self) -> &[u8] {
        &self.verdict
    }
    fn signature(&self) -> Option<&common_pb::Signature> {
        self.signature.as_ref()
    }
    fn signer_key(&self) -> Option<&common_pb::PublicKey> {
        self.signer_key.as_ref()
    }
}

/// Encodes `message` and signs it with `key` for `domain_id` (the purpose of `S`), with the
/// signer's public key attached.
pub fn sign<S: SignedMessage>(
    key: &SigningKeyPair,
    domain_id: &DomainId,
    message: &impl Message,
) -> S {
    let bytes = message.encode_to_vec();
    let signature = key.sign(S::PURPOSE, domain_id, &bytes);
    S::from_parts(
        bytes,
        to_proto_signature(&signature, S::PURPOSE),
        common_pb::PublicKey::from(key.public_key()),
    )
}

/// Checks that `signed` carries `signer`'s key (by fingerprint) and a valid signature of the
/// purpose of `S` for this domain over its bytes.
pub fn verify_signature<S: SignedMessage>(
    signed: &S,
    signer: &MemberId,
    domain_id: &DomainId,
) -> Result<(), String> {
    domain_sequencer_client::verify_member_signature(
        signed.signer_key(),
        signed.signature(),
        signer,
        S::PURPOSE,
        domain_id,
        signed.bytes(),
    )
}

/// Verifies a verdict the way every participant must: the signer key is the mediator's
/// (its fingerprint is the one in the mediator id), the signature has purpose VERDICT for
/// this domain and covers the verdict bytes, the bytes decode, and the verdict names this
/// mediator and this domain.
pub fn verify_verdict(
    signed: &pb::SignedVerdict,
    mediator: &MemberId,
    domain_id: &DomainId,
) -> Result<pb::Verdict, String> {
    verify_signature(signed, mediator, domain_id)?;
    let verdict = pb::Verdict::decode(signed.verdict.as_slice())
        .map_err(|e| format!("undecodable verdict: {e}"))?;
    if verdict.mediator != mediator.to_string() || verdict.domain_id != domain_id.to_string() {
        return Err(format!(
            "verdict names mediator {} of domain {}",
            verdict.mediator, verdict.domain_id
        ));
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip() {
        assert_eq!(verdict_message_id(42), "verdict-42");
        assert_eq!(parse_verdict_message_id("verdict-42"), Some(42));
        assert_eq!(parse_verdict_message_id("ping-42"), None);
        assert_eq!(parse_verdict_message_id("verdict-x"), None);
    }

    #[test]
    fn outcomes_round_trip_through_the_proto() {
        for o in [
            Outcome::Approved,
            Outcome::Rejected {
                participant: "PAR::b::1220".into(),
                reason: "no".into(),
            },
            Outcome::TimedOut {
                missing_confirmers: vec!["PAR::c::1220".into()],
            },
        ] {
            assert_eq!(Outcome::from_proto(Some(o.to_proto())), Some(o.clone()));
        }
        assert_eq!(Outcome::from_proto(None), None);
    }
}
