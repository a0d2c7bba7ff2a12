//! How the sequencer's signature over an event is kept in `seq_events.signature` and handed
//! back to recipients (migration 0007 documents the column).
//!
//! - Exactly [`SIGNATURE_LEN`] bytes: an ed25519 signature with purpose SEQUENCED_EVENT over
//!   the event's content. Rows written before batch signing hold this form, and it is still
//!   delivered as it is.
//! - Longer: the batch's ed25519 signature with purpose SEQUENCED_BATCH over the batch root
//!   ([`domain_identity::batch`]), followed by the event's encoded `BatchProof`.

use domain_identity::{SIGNATURE_LEN, Signature, batch};
use domain_proto::common::v1::SignaturePurpose;
use domain_proto::sequencer::v1::BatchProof;
use prost::Message as _;

/// The column value for an event of a batch signed with `signature`.
pub fn stored_signature(signature: &Signature, leaf: batch::LeafProof) -> Vec<u8> {
    let proof = BatchProof::from(leaf);
    let mut out = Vec::with_capacity(SIGNATURE_LEN + proof.encoded_len());
    out.extend_from_slice(&signature.to_bytes());
    proof.encode_raw(&mut out);
    out
}

/// A stored event's authentication as delivered: signature bytes, their purpose, and the
/// batch proof when the batch was signed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventAuth {
    pub signature: Vec<u8>,
    pub purpose: SignaturePurpose,
    pub batch_proof: Option<BatchProof>,
}

impl EventAuth {
    /// Splits a column value. A value that is neither form (a corrupted row) is delivered
    /// as a per-event signature, which no recipient will verify: the stream stays gap-free
    /// and the recipient reports the bad signature.
    pub fn from_stored(mut stored: Vec<u8>) -> Self {
        if stored.len() > SIGNATURE_LEN
            && let Ok(proof) = BatchProof::decode(&stored[SIGNATURE_LEN..])
        {
            stored.truncate(SIGNATURE_LEN);
            return Self {
                signature: stored,
                purpose: SignaturePurpose::SequencedBatch,
                batch_proof: Some(proof),
            };
        }
        Self {
            signature: stored,
            purpose: SignaturePurpose::SequencedEvent,
            batch_proof: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_identity::SigningKeyPair;

    #[test]
    fn both_forms_round_trip() {
        let key = SigningKeyPair::from_seed(&[3; 32]);
        let sig = key
            .sign_with_domain_str(
                domain_identity::SignaturePurpose::SequencedBatch,
                "d",
                b"payload",
            )
            .expect("sign");
        let leaf = batch::LeafProof {
            index: 2,
            count: 5,
            path: vec![[1; 32], [2; 32], [3; 32]],
        };
        let stored = stored_signature(&sig, leaf);
        let auth = EventAuth::from_stored(stored);
        assert_eq!(auth.signature, sig.to_bytes().to_vec());
        assert_eq!(auth.purpose, SignaturePurpose::SequencedBatch);
        let proof = auth.batch_proof.expect("proof");
        assert_eq!((proof.leaf_index, proof.leaf_count), (2, 5));
        assert_eq!(proof.path, vec![vec![1u8; 32], vec![2; 32], vec![3; 32]]);

        let legacy = EventAuth::from_stored(sig.to_bytes().to_vec());
        assert_eq!(legacy.purpose, SignaturePurpose::SequencedEvent);
        assert!(legacy.batch_proof.is_none());
        assert_eq!(legacy.signature.len(), SIGNATURE_LEN);
    }
}
