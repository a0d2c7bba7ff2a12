//! Owns the domain's identity primitives: ed25519 signing keys and their PKCS#8 PEM files,
//! Canton-style key fingerprints, unique/member/domain ids, and domain-separated signatures.
//!
//! This crate deliberately does not depend on the protobuf crate. The conversions between
//! these types and the `domain.common.v1` messages live in one place, `domain_proto::identity`
//! (feature `identity` of `domain-proto`), built on these accessors:
//!
//! * `Signature.signature` ⇄ [`Signature::as_bytes`] / [`Signature::from_bytes`],
//! * `Signature.signer_fingerprint` ⇄ [`Signature::signer`] / [`Fingerprint::parse`]
//!   (or [`Signature::from_parts`] for both at once),
//! * `Signature.purpose` ⇄ [`SignaturePurpose::as_i32`] / [`SignaturePurpose::from_i32`],
//! * `PublicKey.key` (ed25519) ⇄ [`PublicKey::as_bytes`] / [`PublicKey::from_bytes`],
//! * member and domain id strings ⇄ [`MemberId`] / [`DomainId`] via `FromStr` and `Display`.

#[macro_use]
mod string_form;

pub mod batch;
mod fingerprint;
mod ids;
mod keys;
pub mod onboarding;
mod signature;

pub use fingerprint::{FINGERPRINT_LEN, FINGERPRINT_PREFIX, Fingerprint};
pub use ids::{DomainId, IdError, MAX_NAME_LEN, MemberId, MemberRole, UniqueId};
pub use keys::{KeyError, PUBLIC_KEY_LEN, PublicKey, SigningKeyPair};
pub use signature::{
    SIGNATURE_LEN, SIGNING_CONTEXT, Signature, SignatureError, SignaturePurpose, signing_input,
};
