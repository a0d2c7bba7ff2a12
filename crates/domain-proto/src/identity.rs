//! The one place where wire messages meet the identity and time types (feature
//! `identity`): keys, signatures, ids and sequencer time are parsed here once at the gRPC
//! boundary, and written back here. The wire keeps its shapes (`bytes`, `string`, `int64`
//! micros); only these conversions know both sides.
//!
//! * [`pb::PublicKey`] ⇄ [`PublicKey`]: `From<&PublicKey>` (ed25519), `TryFrom<&pb::PublicKey>`
//!   (the key bytes, whatever the algorithm field says, as every caller read them so far) and
//!   [`ed25519_key`] (also refuses another algorithm).
//! * [`pb::Signature`] ⇄ [`Signature`]: [`pb::Signature::from_identity`] (with its purpose),
//!   `TryFrom<&pb::Signature>` (bytes and signer fingerprint; the purpose is the verifier's
//!   to check, see [`pb::Signature::purpose_is`]).
//! * id strings ⇄ [`MemberId`], [`DomainId`]: [`member_id`], [`domain_id`] (errors name the
//!   field).
//! * `*_micros` ⇄ [`Timestamp`]: [`timestamp`], [`Timestamp::as_micros`].
//! * [`batch::LeafProof`] → `sequencer.v1.BatchProof`: `From` (an event's place in its
//!   signed batch; verifiers read the proto's fields straight into
//!   [`batch::root_from_path`]).

use std::fmt;

use domain_identity::batch;
use domain_identity::{
    DomainId, IdError, KeyError, MemberId, PublicKey, Signature, SignatureError, SignaturePurpose,
};
use domain_time::Timestamp;

use crate::common::v1 as pb;

impl From<batch::LeafProof> for crate::sequencer::v1::BatchProof {
    fn from(leaf: batch::LeafProof) -> Self {
        Self {
            leaf_index: leaf.index,
            leaf_count: leaf.count,
            path: leaf.path.into_iter().map(|h| h.to_vec()).collect(),
        }
    }
}

impl From<&PublicKey> for pb::PublicKey {
    fn from(key: &PublicKey) -> Self {
        pb::PublicKey {
            algorithm: pb::KeyAlgorithm::Ed25519 as i32,
            key: key.to_bytes().to_vec(),
        }
    }
}

impl TryFrom<&pb::PublicKey> for PublicKey {
    type Error = KeyError;

    /// The ed25519 key in `key.key`; the algorithm field is not looked at (see [`ed25519_key`]).
    fn try_from(key: &pb::PublicKey) -> Result<Self, KeyError> {
        PublicKey::from_bytes(&key.key)
    }
}

/// Why a wire key is not an ed25519 [`PublicKey`].
#[derive(Debug)]
pub enum KeyConversionError {
    /// The algorithm field is not `KEY_ALGORITHM_ED25519`.
    NotEd25519,
    /// The bytes are not an ed25519 public key.
    Key(KeyError),
}

impl fmt::Display for KeyConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyConversionError::NotEd25519 => f.write_str("only ed25519 keys are supported"),
            KeyConversionError::Key(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for KeyConversionError {}

/// An ed25519 public key from the wire, refusing any other algorithm.
pub fn ed25519_key(key: &pb::PublicKey) -> Result<PublicKey, KeyConversionError> {
    if key.algorithm != pb::KeyAlgorithm::Ed25519 as i32 {
        return Err(KeyConversionError::NotEd25519);
    }
    PublicKey::try_from(key).map_err(KeyConversionError::Key)
}

impl pb::Signature {
    /// The wire form of `sig`, made for `purpose`.
    pub fn from_identity(sig: &Signature, purpose: SignaturePurpose) -> Self {
        pb::Signature {
            signature: sig.to_bytes().to_vec(),
            signer_fingerprint: sig.signer().to_string(),
            purpose: purpose.as_i32(),
        }
    }

    /// Whether the signature says it was made for `purpose`.
    pub fn purpose_is(&self, purpose: SignaturePurpose) -> bool {
        self.purpose == purpose.as_i32()
    }
}

impl TryFrom<&pb::Signature> for Signature {
    type Error = SignatureError;

    /// The signature bytes and signer fingerprint (the purpose is checked by the verifier).
    fn try_from(sig: &pb::Signature) -> Result<Self, SignatureError> {
        Signature::from_parts(&sig.signature, &sig.signer_fingerprint)
    }
}

/// A member id field of a request; the error names the field.
pub fn member_id(field: &str, value: &str) -> Result<MemberId, FieldError> {
    MemberId::parse(value).map_err(|error| FieldError {
        field: field.to_owned(),
        error,
    })
}

/// A domain id field of a request; the error names the field.
pub fn domain_id(field: &str, value: &str) -> Result<DomainId, FieldError> {
    DomainId::parse(value).map_err(|error| FieldError {
        field: field.to_owned(),
        error,
    })
}

/// A `*_micros` field as sequencer time.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

/// An id field of a message that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as named in the `.proto` file.
    pub field: String,
    /// Why it does not parse.
    pub error: IdError,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.error)
    }
}

impl std::error::Error for FieldError {}

#[cfg(test)]
mod tests {
    use domain_identity::{MemberRole, SigningKeyPair, UniqueId};

    use super::*;

    #[test]
    fn keys_round_trip_and_other_algorithms_are_refused() {
        let pair = SigningKeyPair::generate();
        let wire = pb::PublicKey::from(pair.public_key());
        assert_eq!(wire.algorithm, pb::KeyAlgorithm::Ed25519 as i32);
        assert!(PublicKey::try_from(&wire).expect("parses") == *pair.public_key());
        assert!(ed25519_key(&wire).expect("ed25519") == *pair.public_key());

        let unspecified = pb::PublicKey {
            algorithm: pb::KeyAlgorithm::Unspecified as i32,
            ..wire.clone()
        };
        assert!(matches!(
            ed25519_key(&unspecified),
            Err(KeyConversionError::NotEd25519)
        ));
        assert_eq!(
            ed25519_key(&unspecified).map_err(|e| e.to_string()),
            Err("only ed25519 keys are supported".to_owned())
        );
        let short = pb::PublicKey {
            key: vec![1, 2, 3],
            ..wire
        };
        assert!(matches!(
            ed25519_key(&short),
            Err(KeyConversionError::Key(_))
        ));
        assert!(PublicKey::try_from(&short).is_err());
    }

    #[test]
    fn signatures_round_trip_with_their_purpose() {
        let pair = SigningKeyPair::generate();
        let domain = DomainId::new(UniqueId::new("d", *pair.fingerprint()).expect("uid"));
        let sig = pair.sign(SignaturePurpose::Submission, &domain, b"payload");
        let wire = pb::Signature::from_identity(&sig, SignaturePurpose::Submission);
        assert!(wire.purpose_is(SignaturePurpose::Submission));
        assert!(!wire.purpose_is(SignaturePurpose::Topology));
        assert_eq!(wire.signer_fingerprint, pair.fingerprint().to_string());
        let back = Signature::try_from(&wire).expect("parses");
        assert!(back == sig);
        pair.public_key()
            .verify(SignaturePurpose::Submission, &domain, b"payload", &back)
            .expect("still verifies");

        let bad_signer = pb::Signature {
            signer_fingerprint: "1220".into(),
            ..wire.clone()
        };
        assert!(Signature::try_from(&bad_signer).is_err());
        let short = pb::Signature {
            signature: vec![0; 10],
            ..wire
        };
        assert!(Signature::try_from(&short).is_err());
    }

    #[test]
    fn ids_parse_once_and_bad_ones_name_the_field() {
        let fp = format!("1220{}", "ab".repeat(32));
        let member = member_id("member", &format!("PAR::alice::{fp}")).expect("valid");
        assert_eq!(member.role(), MemberRole::Participant);
        assert_eq!(
            domain_id("domain_id", &format!("dom::{fp}"))
                .expect("valid")
                .to_string(),
            format!("dom::{fp}")
        );
        let err = member_id("member", &format!("XYZ::a::{fp}")).expect_err("unknown role");
        assert_eq!(err.field, "member");
        assert_eq!(
            err.to_string(),
            "member: unknown member role prefix \"XYZ\" (valid prefixes: PAR, MED, SEQ, DOM)"
        );
        let err = domain_id("domain_id", "dom::1220").expect_err("short fingerprint");
        assert_eq!(
            err.to_string(),
            "domain_id: fingerprint must be 68 characters long, got 4"
        );
        assert!(domain_id("domain_id", &format!("DOM::dom::{fp}")).is_err());
    }

    #[test]
    fn micros_are_sequencer_time() {
        let t = timestamp(1_796_621_801_823_658);
        assert_eq!(t.as_micros(), 1_796_621_801_823_658);
        assert_eq!(timestamp(t.as_micros()), t);
    }
}
