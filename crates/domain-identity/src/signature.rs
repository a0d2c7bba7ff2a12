//! Domain-separated ed25519 signatures.

use std::fmt;

use crate::fingerprint::Fingerprint;
use crate::ids::{DomainId, IdError};

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Context string opening every signed message.
pub const SIGNING_CONTEXT: &[u8] = b"domain-runtime/v1";

/// Errors building, decoding or verifying signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature bytes were not exactly 64 bytes.
    #[error("ed25519 signature must be 64 bytes, got {actual}")]
    Length {
        /// The length received.
        actual: usize,
    },
    /// The signer fingerprint string did not parse.
    #[error("invalid signer fingerprint: {0}")]
    InvalidSignerFingerprint(#[source] IdError),
    /// The signature names a different signer than the verifying key.
    #[error("signature was made by key {signer}, not by the verifying key {key}")]
    SignerMismatch {
        /// Fingerprint carried by the signature.
        signer: Fingerprint,
        /// Fingerprint of the key used to verify.
        key: Fingerprint,
    },
    /// The signature does not verify for this key, purpose, domain id and payload.
    #[error("signature does not verify for this key, purpose, domain id and payload")]
    Invalid,
    /// The domain id string is empty.
    #[error("domain id is empty")]
    EmptyDomainId,
    /// The domain id string contains a NUL byte, which would make the signed bytes ambiguous.
    #[error("domain id contains a nul byte")]
    DomainIdContainsNul,
    /// The proto purpose was `SIGNATURE_PURPOSE_UNSPECIFIED` (0).
    #[error("signature purpose is unspecified (0)")]
    UnspecifiedPurpose,
    /// The proto purpose number is not known.
    #[error("unknown signature purpose {0} (expected 1 to 9)")]
    UnknownPurpose(i32),
}

/// What a signature is for; mirrors `domain.common.v1.SignaturePurpose` (without `UNSPECIFIED`).
///
/// The purpose's [`tag`](SignaturePurpose::tag) is part of the signed bytes, so a signature
/// made for one purpose never verifies for another. Tags and numbers are wire-stable: never
/// change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignaturePurpose {
    /// Member authentication: signature over the sequencer's nonce (proto 1).
    AuthChallenge,
    /// A member's submission request (proto 2).
    Submission,
    /// A sequenced event as delivered to a member (proto 3).
    SequencedEvent,
    /// A topology transaction (proto 4).
    Topology,
    /// A participant's confirmation response (proto 5).
    ConfirmationResponse,
    /// A mediator's verdict (proto 6).
    Verdict,
    /// A member's acknowledgement (proto 7).
    Acknowledgement,
    /// A participant's identity file, signed by its own key (proto 8).
    IdentityFile,
    /// A domain's connection bundle, signed by the namespace key (proto 9).
    ConnectionBundle,
    /// The Merkle root of a batch of sequenced events ([`crate::batch`]); each delivered
    /// event carries its inclusion proof (proto 10).
    SequencedBatch,
}

impl SignaturePurpose {
    /// Every purpose, in proto order.
    pub const ALL: [SignaturePurpose; 10] = [
        SignaturePurpose::AuthChallenge,
        SignaturePurpose::Submission,
        SignaturePurpose::SequencedEvent,
        SignaturePurpose::Topology,
        SignaturePurpose::ConfirmationResponse,
        SignaturePurpose::Verdict,
        SignaturePurpose::Acknowledgement,
        SignaturePurpose::IdentityFile,
        SignaturePurpose::ConnectionBundle,
        SignaturePurpose::SequencedBatch,
    ];

    /// The stable tag string included in the signed bytes.
    #[must_use]
    pub fn tag(self) -> &'static str {
        match self {
            SignaturePurpose::AuthChallenge => "auth-challenge",
            SignaturePurpose::Submission => "submission",
            SignaturePurpose::SequencedEvent => "sequenced-event",
            SignaturePurpose::Topology => "topology",
            SignaturePurpose::ConfirmationResponse => "confirmation-response",
            SignaturePurpose::Verdict => "verdict",
            SignaturePurpose::Acknowledgement => "acknowledgement",
            SignaturePurpose::IdentityFile => "identity-file",
            SignaturePurpose::ConnectionBundle => "connection-bundle",
            SignaturePurpose::SequencedBatch => "sequenced-batch",
        }
    }

    /// The `domain.common.v1.SignaturePurpose` number (1 to 10).
    #[must_use]
    pub fn as_i32(self) -> i32 {
        match self {
            SignaturePurpose::AuthChallenge => 1,
            SignaturePurpose::Submission => 2,
            SignaturePurpose::SequencedEvent => 3,
            SignaturePurpose::Topology => 4,
            SignaturePurpose::ConfirmationResponse => 5,
            SignaturePurpose::Verdict => 6,
            SignaturePurpose::Acknowledgement => 7,
            SignaturePurpose::IdentityFile => 8,
            SignaturePurpose::ConnectionBundle => 9,
            SignaturePurpose::SequencedBatch => 10,
        }
    }

    /// From a `domain.common.v1.SignaturePurpose` number; 0 (`UNSPECIFIED`) and unknown numbers
    /// are errors.
    pub fn from_i32(value: i32) -> Result<Self, SignatureError> {
        match value {
            0 => Err(SignatureError::UnspecifiedPurpose),
            1 => Ok(SignaturePurpose::AuthChallenge),
            2 => Ok(SignaturePurpose::Submission),
            3 => Ok(SignaturePurpose::SequencedEvent),
            4 => Ok(SignaturePurpose::Topology),
            5 => Ok(SignaturePurpose::ConfirmationResponse),
            6 => Ok(SignaturePurpose::Verdict),
            7 => Ok(SignaturePurpose::Acknowledgement),
            8 => Ok(SignaturePurpose::IdentityFile),
            9 => Ok(SignaturePurpose::ConnectionBundle),
            10 => Ok(SignaturePurpose::SequencedBatch),
            other => Err(SignatureError::UnknownPurpose(other)),
        }
    }
}

impl TryFrom<i32> for SignaturePurpose {
    type Error = SignatureError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        Self::from_i32(value)
    }
}

impl From<SignaturePurpose> for i32 {
    fn from(purpose: SignaturePurpose) -> Self {
        purpose.as_i32()
    }
}

impl fmt::Display for SignaturePurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// The exact bytes signed for `payload` under `purpose` in `domain_id`:
///
/// `b"domain-runtime/v1" 0x00 <purpose tag> 0x00 <domain id string> 0x00 <payload>`
#[must_use]
pub fn signing_input(purpose: SignaturePurpose, domain_id: &DomainId, payload: &[u8]) -> Vec<u8> {
    signing_input_str(purpose, &domain_id.to_string(), payload)
}

/// [`signing_input`] for a domain id string already checked by [`validate_domain_id_str`].
pub(crate) fn signing_input_str(
    purpose: SignaturePurpose,
    domain_id: &str,
    payload: &[u8],
) -> Vec<u8> {
    signing_input_parts(purpose, domain_id, payload).concat()
}

/// [`signing_input_str`] as the parts it concatenates, for signing and verifying without
/// copying the payload: ed25519 hashes the parts as one message.
pub(crate) fn signing_input_parts<'a>(
    purpose: SignaturePurpose,
    domain_id: &'a str,
    payload: &'a [u8],
) -> [&'a [u8]; 7] {
    [
        SIGNING_CONTEXT,
        &[0],
        purpose.tag().as_bytes(),
        &[0],
        domain_id.as_bytes(),
        &[0],
        payload,
    ]
}

/// A domain id string must be non-empty and NUL-free so the signed bytes parse unambiguously.
pub(crate) fn validate_domain_id_str(domain_id: &str) -> Result<(), SignatureError> {
    if domain_id.is_empty() {
        return Err(SignatureError::EmptyDomainId);
    }
    if domain_id.contains('\0') {
        return Err(SignatureError::DomainIdContainsNul);
    }
    Ok(())
}

/// A 64-byte ed25519 signature plus the fingerprint of the key that made it.
///
/// Maps to `domain.common.v1.Signature`: `signature` = [`as_bytes`](Signature::as_bytes),
/// `signer_fingerprint` = [`signer`](Signature::signer)`.to_string()`; the proto's `purpose`
/// is supplied by the caller (it is part of the signed bytes, not of this value).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    bytes: [u8; SIGNATURE_LEN],
    signer: Fingerprint,
}

impl Signature {
    /// A signature from its parts.
    #[must_use]
    pub fn new(bytes: [u8; SIGNATURE_LEN], signer: Fingerprint) -> Self {
        Self { bytes, signer }
    }

    /// A signature from raw bytes, which must be exactly 64 long.
    pub fn from_bytes(bytes: &[u8], signer: Fingerprint) -> Result<Self, SignatureError> {
        let bytes: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| SignatureError::Length {
            actual: bytes.len(),
        })?;
        Ok(Self { bytes, signer })
    }

    /// A signature from the `domain.common.v1.Signature` fields `signature` and
    /// `signer_fingerprint`.
    pub fn from_parts(bytes: &[u8], signer_fingerprint: &str) -> Result<Self, SignatureError> {
        let signer = Fingerprint::parse(signer_fingerprint)
            .map_err(SignatureError::InvalidSignerFingerprint)?;
        Self::from_bytes(bytes, signer)
    }

    /// The 64 signature bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.bytes
    }

    /// The 64 signature bytes, by value.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.bytes
    }

    /// Fingerprint of the signing key.
    #[must_use]
    pub fn signer(&self) -> &Fingerprint {
        &self.signer
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("signer", &format_args!("{}", self.signer))
            .field("bytes", &format_args!("{}", hex::encode(self.bytes)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UniqueId;
    use crate::keys::SigningKeyPair;

    fn domain(name: &str) -> DomainId {
        let ns = Fingerprint::of_public_key_bytes(&[9; 32]);
        DomainId::new(UniqueId::new(name, ns).expect("valid"))
    }

    #[test]
    fn purpose_numbers_and_tags_are_stable() {
        let expected = [
            (SignaturePurpose::AuthChallenge, 1, "auth-challenge"),
            (SignaturePurpose::Submission, 2, "submission"),
            (SignaturePurpose::SequencedEvent, 3, "sequenced-event"),
            (SignaturePurpose::Topology, 4, "topology"),
            (
                SignaturePurpose::ConfirmationResponse,
                5,
                "confirmation-response",
            ),
            (SignaturePurpose::Verdict, 6, "verdict"),
            (SignaturePurpose::Acknowledgement, 7, "acknowledgement"),
            (SignaturePurpose::IdentityFile, 8, "identity-file"),
            (SignaturePurpose::ConnectionBundle, 9, "connection-bundle"),
            (SignaturePurpose::SequencedBatch, 10, "sequenced-batch"),
        ];
        assert_eq!(SignaturePurpose::ALL.len(), expected.len());
        for (purpose, number, tag) in expected {
            assert_eq!(purpose.as_i32(), number);
            assert_eq!(i32::from(purpose), number);
            assert_eq!(purpose.tag(), tag);
            assert_eq!(SignaturePurpose::from_i32(number), Ok(purpose));
            assert_eq!(SignaturePurpose::try_from(number), Ok(purpose));
            assert!(!tag.contains('\0'));
        }
        assert_eq!(
            SignaturePurpose::from_i32(0),
            Err(SignatureError::UnspecifiedPurpose)
        );
        assert_eq!(
            SignaturePurpose::from_i32(11),
            Err(SignatureError::UnknownPurpose(11))
        );
        assert_eq!(
            SignaturePurpose::from_i32(-1),
            Err(SignatureError::UnknownPurpose(-1))
        );
    }

    #[test]
    fn signing_input_layout() {
        let d = domain("d1");
        let input = signing_input(SignaturePurpose::Verdict, &d, b"pay\0load");
        let mut expected = b"domain-runtime/v1\0verdict\0".to_vec();
        expected.extend_from_slice(d.to_string().as_bytes());
        expected.push(0);
        expected.extend_from_slice(b"pay\0load");
        assert_eq!(input, expected);
    }

    #[test]
    fn signature_is_exactly_ed25519_over_signing_input() {
        use ed25519_dalek::Verifier as _;
        let key = SigningKeyPair::from_seed(&[5; 32]);
        let d = domain("d1");
        let sig = key.sign(SignaturePurpose::Submission, &d, b"hello");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(key.public_key().as_bytes())
            .expect("valid key");
        let raw = ed25519_dalek::Signature::from_bytes(sig.as_bytes());
        vk.verify(
            &signing_input(SignaturePurpose::Submission, &d, b"hello"),
            &raw,
        )
        .expect("verifies over the documented bytes");
        // Not over the bare payload.
        assert!(vk.verify(b"hello", &raw).is_err());
    }

    #[test]
    fn sign_and_verify() {
        let key = SigningKeyPair::generate();
        let d = domain("d1");
        let sig = key.sign(SignaturePurpose::Submission, &d, b"payload");
        assert_eq!(sig.signer(), key.fingerprint());
        key.public_key()
            .verify(SignaturePurpose::Submission, &d, b"payload", &sig)
            .expect("verifies");
        // The str form of the same domain id is interchangeable.
        key.public_key()
            .verify_with_domain_str(
                SignaturePurpose::Submission,
                &d.to_string(),
                b"payload",
                &sig,
            )
            .expect("verifies via str");
        let via_str = key
            .sign_with_domain_str(SignaturePurpose::Submission, &d.to_string(), b"payload")
            .expect("sign via str");
        assert_eq!(via_str, sig, "ed25519 is deterministic");
        // Empty payload works too.
        let empty = key.sign(SignaturePurpose::Acknowledgement, &d, b"");
        key.public_key()
            .verify(SignaturePurpose::Acknowledgement, &d, b"", &empty)
            .expect("verifies");
    }

    #[test]
    fn tampered_signature_rejected() {
        let key = SigningKeyPair::generate();
        let d = domain("d1");
        let sig = key.sign(SignaturePurpose::Topology, &d, b"payload");
        for byte in [0, 31, 32, 63] {
            for bit in [0, 7] {
                let mut bytes = sig.to_bytes();
                bytes[byte] ^= 1 << bit;
                let tampered = Signature::new(bytes, *sig.signer());
                assert_eq!(
                    key.public_key()
                        .verify(SignaturePurpose::Topology, &d, b"payload", &tampered),
                    Err(SignatureError::Invalid),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn tampered_payload_rejected() {
        let key = SigningKeyPair::generate();
        let d = domain("d1");
        let sig = key.sign(SignaturePurpose::Submission, &d, b"payload");
        for bad in [&b"payloaD"[..], b"payload\0", b"payloa", b""] {
            assert_eq!(
                key.public_key()
                    .verify(SignaturePurpose::Submission, &d, bad, &sig),
                Err(SignatureError::Invalid)
            );
        }
    }

    #[test]
    fn other_domain_rejected() {
        let key = SigningKeyPair::generate();
        let sig = key.sign(SignaturePurpose::Submission, &domain("d1"), b"payload");
        assert_eq!(
            key.public_key().verify(
                SignaturePurpose::Submission,
                &domain("d2"),
                b"payload",
                &sig
            ),
            Err(SignatureError::Invalid)
        );
        // Same name, different namespace.
        let other_ns = DomainId::new(
            UniqueId::new("d1", Fingerprint::of_public_key_bytes(&[8; 32])).expect("valid"),
        );
        assert_eq!(
            key.public_key()
                .verify(SignaturePurpose::Submission, &other_ns, b"payload", &sig),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn other_purpose_rejected() {
        let key = SigningKeyPair::generate();
        let d = domain("d1");
        for signed_for in SignaturePurpose::ALL {
            let sig = key.sign(signed_for, &d, b"payload");
            for checked_as in SignaturePurpose::ALL {
                let result = key.public_key().verify(checked_as, &d, b"payload", &sig);
                if signed_for == checked_as {
                    assert_eq!(result, Ok(()));
                } else {
                    assert_eq!(
                        result,
                        Err(SignatureError::Invalid),
                        "{signed_for} vs {checked_as}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_key_rejected() {
        let key = SigningKeyPair::generate();
        let other = SigningKeyPair::generate();
        let d = domain("d1");
        let sig = key.sign(SignaturePurpose::Submission, &d, b"payload");
        // Signature names its signer: mismatch is reported as such.
        assert_eq!(
            other
                .public_key()
                .verify(SignaturePurpose::Submission, &d, b"payload", &sig),
            Err(SignatureError::SignerMismatch {
                signer: *key.fingerprint(),
                key: *other.fingerprint(),
            })
        );
        // Claiming the other key as signer does not help either.
        let relabelled = Signature::new(sig.to_bytes(), *other.fingerprint());
        assert_eq!(
            other
                .public_key()
                .verify(SignaturePurpose::Submission, &d, b"payload", &relabelled),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn domain_id_strings_are_validated() {
        let key = SigningKeyPair::generate();
        assert_eq!(
            key.sign_with_domain_str(SignaturePurpose::Submission, "", b"x"),
            Err(SignatureError::EmptyDomainId)
        );
        assert_eq!(
            key.sign_with_domain_str(SignaturePurpose::Submission, "a\0b", b"x"),
            Err(SignatureError::DomainIdContainsNul)
        );
        let sig = key
            .sign_with_domain_str(SignaturePurpose::Submission, "a", b"b\0x")
            .expect("sign");
        assert_eq!(
            key.public_key().verify_with_domain_str(
                SignaturePurpose::Submission,
                "a\0b",
                b"x",
                &sig
            ),
            Err(SignatureError::DomainIdContainsNul)
        );
    }

    #[test]
    fn signature_from_bytes_and_parts() {
        let key = SigningKeyPair::generate();
        let sig = key.sign(SignaturePurpose::Verdict, &domain("d1"), b"x");
        let fp = *key.fingerprint();

        assert_eq!(Signature::from_bytes(sig.as_bytes(), fp), Ok(sig.clone()));
        assert_eq!(
            Signature::from_bytes(&sig.as_bytes()[..63], fp),
            Err(SignatureError::Length { actual: 63 })
        );
        assert_eq!(
            Signature::from_bytes(&[0; 65], fp),
            Err(SignatureError::Length { actual: 65 })
        );
        assert_eq!(
            Signature::from_bytes(&[], fp).map_err(|e| e.to_string()),
            Err("ed25519 signature must be 64 bytes, got 0".into())
        );

        let from_parts =
            Signature::from_parts(sig.as_bytes(), &fp.to_string()).expect("valid parts");
        assert_eq!(from_parts, sig);
        assert_eq!(
            Signature::from_parts(sig.as_bytes(), "1220ab"),
            Err(SignatureError::InvalidSignerFingerprint(
                IdError::FingerprintLength { len: 6 }
            ))
        );

        let debug = format!("{sig:?}");
        assert!(debug.contains(&fp.to_string()));
        assert!(debug.contains(&hex::encode(sig.as_bytes())));
    }
}
