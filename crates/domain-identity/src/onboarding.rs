//! The two files of joining a domain from another company (docs/onboarding.md):
//!
//! - the **identity file** a participant exports (`participant export-identity`): its member
//!   id, public key, optional display name and contact, creation time, signed by its own key
//!   (purpose [`SignaturePurpose::IdentityFile`]), so the provider can check that the party
//!   holds the key before allowlisting it;
//! - the **connection bundle** a provider exports (`domainctl domain export-connection`):
//!   domain id, suggested alias, public sequencer endpoints, sequencer id and key, CA bundle,
//!   protocol version, creation time, signed by the domain's namespace key (purpose
//!   [`SignaturePurpose::ConnectionBundle`]); the domain id is the namespace key's
//!   fingerprint, so the bundle verifies against nothing but itself.
//!
//! Both are JSON objects whose `signature` member signs the compact JSON encoding of all
//! other members, in the order of the structs below. Verification re-encodes the parsed
//! body, so any edit (a changed value, an added or removed member) breaks the signature or
//! is refused as an unknown member.

use serde::{Deserialize, Serialize};

use crate::{DomainId, MemberId, MemberRole, PublicKey, Signature, SignaturePurpose};
use crate::{Fingerprint, SigningKeyPair};

/// `format` of an identity file.
pub const IDENTITY_FORMAT: &str = "domain-runtime/participant-identity";
/// `format` of a connection bundle.
pub const BUNDLE_FORMAT: &str = "domain-runtime/connection-bundle";
/// The only version of both files so far.
pub const FILE_VERSION: u32 = 1;

/// Why an identity file or bundle is refused. [`OnboardingError::code`] is the documented
/// error code (docs/errors.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnboardingError {
    /// Not JSON, a member missing or unknown, a wrong `format` or `version`.
    #[error("not a valid {what}: {reason}")]
    Format { what: &'static str, reason: String },
    /// The public key does not give the fingerprint in the id.
    #[error("{what}: the public key (fingerprint {key}) does not match the id {id}")]
    KeyMismatch {
        what: &'static str,
        id: String,
        key: Fingerprint,
    },
    /// The signature was made by another key (e.g. another domain's namespace key).
    #[error("{what} is signed by key {signer}, not by {expected}")]
    WrongSigner {
        what: &'static str,
        signer: String,
        expected: String,
    },
    /// The signature does not verify: the file was edited after signing.
    #[error("{what}: the signature does not verify (the file was changed after it was signed)")]
    BadSignature { what: &'static str },
}

impl OnboardingError {
    /// The documented code (docs/errors.md).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Format { .. } => "ONBOARDING_FILE_INVALID",
            Self::KeyMismatch { .. } => "ONBOARDING_KEY_MISMATCH",
            Self::WrongSigner { .. } => "ONBOARDING_WRONG_SIGNER",
            Self::BadSignature { .. } => "ONBOARDING_SIGNATURE_INVALID",
        }
    }
}

/// The signature member of both files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSignature {
    /// Fingerprint of the signing key (`1220…`).
    pub signer: String,
    /// Hex of the 64-byte ed25519 signature.
    pub ed25519: String,
}

/// The signed part of an identity file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdentityBody {
    /// Always [`IDENTITY_FORMAT`].
    pub format: String,
    /// Always [`FILE_VERSION`].
    pub version: u32,
    /// Full member id `PAR::<name>::<fingerprint>`.
    pub participant_id: String,
    /// Hex of the 32-byte ed25519 public key.
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A verified identity file.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    pub body: IdentityBody,
    pub participant: MemberId,
    pub public_key: PublicKey,
}

/// The signed part of a connection bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BundleBody {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Always [`FILE_VERSION`].
    pub version: u32,
    /// `<name>::<fingerprint of the namespace key>`.
    pub domain_id: String,
    /// Hex of the namespace public key (its fingerprint is the domain id's).
    pub namespace_public_key: String,
    /// Suggested local alias of the connection.
    pub alias: String,
    /// Public sequencer endpoints (`https://host:port`).
    pub endpoints: Vec<String>,
    /// `SEQ::<name>::<fingerprint>`.
    pub sequencer_id: String,
    /// Fingerprint of the sequencer key the endpoints must present.
    pub sequencer_key_fingerprint: String,
    /// PEM CA certificates the endpoints' certificates chain to; absent when they use
    /// certificates of public CAs (then `system-roots` is true). May hold several CAs
    /// (during a CA rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Whether the joining party should (also) trust its system's CA roots.
    pub system_roots: bool,
    /// Protocol version the sequencers speak.
    pub protocol_version: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A verified bundle.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub body: BundleBody,
    pub domain_id: DomainId,
    pub sequencer_id: MemberId,
    pub sequencer_key_fingerprint: Fingerprint,
}

const IDENTITY: &str = "identity file";
const BUNDLE: &str = "connection bundle";

/// What tells the two files apart: the name in messages, the `format` member and the
/// purpose of the signature.
struct FileKind {
    what: &'static str,
    format: &'static str,
    purpose: SignaturePurpose,
}

const IDENTITY_FILE: FileKind = FileKind {
    what: IDENTITY,
    format: IDENTITY_FORMAT,
    purpose: SignaturePurpose::IdentityFile,
};

const BUNDLE_FILE: FileKind = FileKind {
    what: BUNDLE,
    format: BUNDLE_FORMAT,
    purpose: SignaturePurpose::ConnectionBundle,
};

/// The members every file has, read from it after the strict body.
#[derive(Deserialize)]
struct FileHeader {
    format: String,
    version: u32,
}

fn format_err(what: &'static str, reason: impl Into<String>) -> OnboardingError {
    OnboardingError::Format {
        what,
        reason: reason.into(),
    }
}

/// RFC 3339 UTC of now (seconds).
#[must_use]
#[expect(
    clippy::disallowed_methods,
    reason = "a human-readable stamp in a file, not sequencer time"
)]
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Signs `body` with `key`, which must be the key the file's id names: `id` (also the signed
/// context) has the fingerprint `id_fingerprint`.
fn sign_body<T: Serialize>(
    body: &T,
    key: &SigningKeyPair,
    kind: &FileKind,
    context: &str,
    id_fingerprint: &Fingerprint,
) -> Result<String, OnboardingError> {
    let what = kind.what;
    check_key(
        what,
        &context,
        key.fingerprint() == id_fingerprint,
        key.fingerprint(),
    )?;
    let bytes = serde_json::to_vec(body).map_err(|e| format_err(what, e.to_string()))?;
    let sig = key
        .sign_with_domain_str(kind.purpose, context, &bytes)
        .map_err(|e| format_err(what, e.to_string()))?;
    let mut value = serde_json::to_value(body).map_err(|e| format_err(what, e.to_string()))?;
    let signature = FileSignature {
        signer: sig.signer().to_string(),
        ed25519: hex::encode(sig.as_bytes()),
    };
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "signature".into(),
            serde_json::to_value(signature).map_err(|e| format_err(what, e.to_string()))?,
        );
    }
    let mut text =
        serde_json::to_string_pretty(&value).map_err(|e| format_err(what, e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// Splits a file into its body (deserialized strictly) and signature, and checks the body's
/// `format` and `version`.
fn split<T: for<'de> Deserialize<'de>>(
    text: &str,
    kind: &FileKind,
) -> Result<(T, FileSignature), OnboardingError> {
    let what = kind.what;
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format_err(what, format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = &mut value else {
        return Err(format_err(what, "not a JSON object"));
    };
    let signature = map
        .remove("signature")
        .ok_or_else(|| format_err(what, "no `signature` member"))?;
    let signature: FileSignature = serde_json::from_value(signature)
        .map_err(|e| format_err(what, format!("signature: {e}")))?;
    let body = T::deserialize(&value).map_err(|e| format_err(what, e.to_string()))?;
    let header = FileHeader::deserialize(&value).map_err(|e| format_err(what, e.to_string()))?;
    if header.format != kind.format {
        return Err(format_err(
            what,
            format!("format is {:?}, expected {:?}", header.format, kind.format),
        ));
    }
    if header.version != FILE_VERSION {
        return Err(format_err(
            what,
            format!(
                "version {} is not supported (expected {FILE_VERSION})",
                header.version
            ),
        ));
    }
    Ok((body, signature))
}

fn check_signature<T: Serialize>(
    body: &T,
    signature: &FileSignature,
    key: &PublicKey,
    kind: &FileKind,
    context: &str,
) -> Result<(), OnboardingError> {
    let what = kind.what;
    if signature.signer != key.fingerprint().to_string() {
        return Err(OnboardingError::WrongSigner {
            what,
            signer: signature.signer.clone(),
            expected: key.fingerprint().to_string(),
        });
    }
    let raw = hex::decode(&signature.ed25519)
        .map_err(|e| format_err(what, format!("signature is not hex: {e}")))?;
    let sig = Signature::from_parts(&raw, &signature.signer)
        .map_err(|e| format_err(what, format!("signature: {e}")))?;
    let bytes = serde_json::to_vec(body).map_err(|e| format_err(what, e.to_string()))?;
    key.verify_with_domain_str(kind.purpose, context, &bytes, &sig)
        .map_err(|_| OnboardingError::BadSignature { what })
}

/// Refuses `key` unless it gives the fingerprint in `id` (`matches`).
fn check_key(
    what: &'static str,
    id: &impl ToString,
    matches: bool,
    key: &Fingerprint,
) -> Result<(), OnboardingError> {
    if matches {
        return Ok(());
    }
    Err(OnboardingError::KeyMismatch {
        what,
        id: id.to_string(),
        key: *key,
    })
}

/// Parses the member id in `field` of a file, which must be of `role`.
fn parse_member(
    what: &'static str,
    field: &str,
    text: &str,
    role: MemberRole,
) -> Result<MemberId, OnboardingError> {
    let id = MemberId::parse(text).map_err(|e| format_err(what, format!("{field}: {e}")))?;
    if id.role() != role {
        return Err(format_err(
            what,
            format!("{text} is not a {} id ({}::…)", role.noun(), role.prefix()),
        ));
    }
    Ok(id)
}

/// The public key in a file (hex `hex_key`): it must give the fingerprint of the file's id
/// (`id`, also the signed context) and must have made the signature.
fn verify_signed_by<T: Serialize>(
    body: &T,
    signature: &FileSignature,
    kind: &FileKind,
    hex_key: &str,
    id: &str,
    id_fingerprint: &Fingerprint,
) -> Result<PublicKey, OnboardingError> {
    let key = parse_key(hex_key, kind.what)?;
    check_key(
        kind.what,
        &id,
        key.fingerprint() == id_fingerprint,
        key.fingerprint(),
    )?;
    check_signature(body, signature, &key, kind, id)?;
    Ok(key)
}

fn parse_key(hex_key: &str, what: &'static str) -> Result<PublicKey, OnboardingError> {
    let raw = hex::decode(hex_key)
        .map_err(|e| format_err(what, format!("public key is not hex: {e}")))?;
    PublicKey::from_bytes(&raw).map_err(|e| format_err(what, format!("public key: {e}")))
}

/// Writes the identity file of `participant` (whose key is `key`).
pub fn export_identity(
    participant: &MemberId,
    key: &SigningKeyPair,
    display_name: Option<String>,
    contact: Option<String>,
) -> Result<String, OnboardingError> {
    let is_participant = participant.role() == MemberRole::Participant;
    check_key(IDENTITY, participant, is_participant, key.fingerprint())?;
    let body = IdentityBody {
        format: IDENTITY_FORMAT.into(),
        version: FILE_VERSION,
        participant_id: participant.to_string(),
        public_key: hex::encode(key.public_key().as_bytes()),
        display_name,
        contact,
        created_at: now_rfc3339(),
    };
    // The identity exists before any domain: the signed context is the member id itself.
    sign_body(
        &body,
        key,
        &IDENTITY_FILE,
        &body.participant_id,
        participant.fingerprint(),
    )
}

/// Verifies an identity file: format, id, key and fingerprint agreement, signature.
pub fn verify_identity(text: &str) -> Result<VerifiedIdentity, OnboardingError> {
    let (body, signature): (IdentityBody, _) = split(text, &IDENTITY_FILE)?;
    let participant = parse_member(
        IDENTITY,
        "participant-id",
        &body.participant_id,
        MemberRole::Participant,
    )?;
    let public_key = verify_signed_by(
        &body,
        &signature,
        &IDENTITY_FILE,
        &body.public_key,
        &body.participant_id,
        participant.fingerprint(),
    )?;
    Ok(VerifiedIdentity {
        body,
        participant,
        public_key,
    })
}

/// What a bundle says, before signing.
#[derive(Debug, Clone)]
pub struct BundleContents {
    pub alias: String,
    pub endpoints: Vec<String>,
    pub sequencer_id: MemberId,
    pub sequencer_key: PublicKey,
    pub ca_pem: Option<String>,
    pub system_roots: bool,
    pub protocol_version: String,
}

/// Writes the bundle of `domain_id`, signed by its namespace key.
pub fn export_bundle(
    domain_id: &DomainId,
    namespace_key: &SigningKeyPair,
    contents: BundleContents,
) -> Result<String, OnboardingError> {
    let body = BundleBody {
        format: BUNDLE_FORMAT.into(),
        version: FILE_VERSION,
        domain_id: domain_id.to_string(),
        namespace_public_key: hex::encode(namespace_key.public_key().as_bytes()),
        alias: contents.alias,
        endpoints: contents.endpoints,
        sequencer_id: contents.sequencer_id.to_string(),
        sequencer_key_fingerprint: contents.sequencer_key.fingerprint().to_string(),
        ca_pem: contents.ca_pem,
        system_roots: contents.system_roots,
        protocol_version: contents.protocol_version,
        created_at: now_rfc3339(),
    };
    sign_body(
        &body,
        namespace_key,
        &BUNDLE_FILE,
        &body.domain_id,
        domain_id.fingerprint(),
    )
}

/// Verifies a bundle against the domain id in it: the namespace key must give the domain
/// id's fingerprint and must have made the signature.
pub fn verify_bundle(text: &str) -> Result<VerifiedBundle, OnboardingError> {
    let (body, signature): (BundleBody, _) = split(text, &BUNDLE_FILE)?;
    let domain_id = DomainId::parse(&body.domain_id)
        .map_err(|e| format_err(BUNDLE, format!("domain-id: {e}")))?;
    // Checked before the key in the file is used: a bundle re-signed by another domain's
    // key names a signer that is not this domain's namespace.
    if signature.signer != domain_id.fingerprint().to_string() {
        return Err(OnboardingError::WrongSigner {
            what: BUNDLE,
            signer: signature.signer.clone(),
            expected: format!("the namespace key of {domain_id}"),
        });
    }
    verify_signed_by(
        &body,
        &signature,
        &BUNDLE_FILE,
        &body.namespace_public_key,
        &body.domain_id,
        domain_id.fingerprint(),
    )?;
    let sequencer_id = parse_member(
        BUNDLE,
        "sequencer-id",
        &body.sequencer_id,
        MemberRole::Sequencer,
    )?;
    let sequencer_key_fingerprint = Fingerprint::parse(&body.sequencer_key_fingerprint)
        .map_err(|e| format_err(BUNDLE, format!("sequencer-key-fingerprint: {e}")))?;
    if sequencer_id.fingerprint() != &sequencer_key_fingerprint {
        return Err(format_err(
            BUNDLE,
            "sequencer-key-fingerprint does not match sequencer-id",
        ));
    }
    if body.endpoints.is_empty() {
        return Err(format_err(BUNDLE, "no endpoint"));
    }
    if body.ca_pem.is_none() && !body.system_roots {
        return Err(format_err(
            BUNDLE,
            "neither ca-pem nor system-roots: the endpoints could not be trusted",
        ));
    }
    Ok(VerifiedBundle {
        body,
        domain_id,
        sequencer_id,
        sequencer_key_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UniqueId;

    fn participant(key: &SigningKeyPair) -> MemberId {
        MemberId::new(
            MemberRole::Participant,
            UniqueId::new("alice", *key.fingerprint()).expect("uid"),
        )
    }

    #[test]
    fn identity_round_trip_and_refusals() {
        let key = SigningKeyPair::generate();
        let id = participant(&key);
        let text = export_identity(&id, &key, Some("Alice Corp".into()), None).expect("export");
        let v = verify_identity(&text).expect("verify");
        assert_eq!(v.participant, id);
        assert_eq!(v.body.display_name.as_deref(), Some("Alice Corp"));

        // Edited after signing.
        let tampered = text.replace("Alice Corp", "Mallory Corp");
        assert_eq!(
            verify_identity(&tampered).map(|_| ()),
            Err(OnboardingError::BadSignature { what: IDENTITY })
        );
        // Unknown member added.
        let added = text.replacen('{', "{\"admin\": true,", 1);
        assert_eq!(
            verify_identity(&added).map_err(|e| e.code()).map(|_| ()),
            Err("ONBOARDING_FILE_INVALID")
        );
        // Another key, re-signed by it, under the same id.
        let other = SigningKeyPair::generate();
        let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
        value["public-key"] = hex::encode(other.public_key().as_bytes()).into();
        let swapped = serde_json::to_string(&value).expect("json");
        let e = verify_identity(&swapped).expect_err("mismatch");
        assert_eq!(e.code(), "ONBOARDING_KEY_MISMATCH", "{e}");
        assert!(e.to_string().contains("does not match the id"), "{e}");
        assert!(verify_identity("not json").is_err());
    }

    fn domain(key: &SigningKeyPair) -> DomainId {
        DomainId::new(UniqueId::new("acme", *key.fingerprint()).expect("uid"))
    }

    fn contents() -> BundleContents {
        let seq = SigningKeyPair::generate();
        BundleContents {
            alias: "acme".into(),
            endpoints: vec!["https://seq-1.acme.example:5001".into()],
            sequencer_id: MemberId::new(
                MemberRole::Sequencer,
                UniqueId::new("seq", *seq.fingerprint()).expect("uid"),
            ),
            sequencer_key: seq.public_key().clone(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n…".into()),
            system_roots: false,
            protocol_version: "1".into(),
        }
    }

    #[test]
    fn bundle_round_trip_and_refusals() {
        let ns = SigningKeyPair::generate();
        let d = domain(&ns);
        let text = export_bundle(&d, &ns, contents()).expect("export");
        let v = verify_bundle(&text).expect("verify");
        assert_eq!(v.domain_id, d);

        let edited = text.replace("seq-1.acme.example", "seq-1.evil.example");
        assert_eq!(
            verify_bundle(&edited).map(|_| ()),
            Err(OnboardingError::BadSignature { what: BUNDLE })
        );
        // Signed by another domain's namespace key (its own key put in the file).
        let other = SigningKeyPair::generate();
        let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
        value.as_object_mut().expect("object").remove("signature");
        value["namespace-public-key"] = hex::encode(other.public_key().as_bytes()).into();
        let body: BundleBody = serde_json::from_value(value).expect("body");
        // (The forger passes its own fingerprint, so the export-side key check lets it sign.)
        let forged = sign_body(
            &body,
            &other,
            &BUNDLE_FILE,
            &body.domain_id,
            other.fingerprint(),
        )
        .expect("sign");
        let e = verify_bundle(&forged).expect_err("wrong signer");
        assert_eq!(e.code(), "ONBOARDING_WRONG_SIGNER", "{e}");
        assert!(e.to_string().contains(&d.to_string()), "{e}");
        // An identity signature is not a bundle signature.
        let key = SigningKeyPair::generate();
        assert!(
            verify_bundle(&export_identity(&participant(&key), &key, None, None).expect("id"))
                .is_err()
        );
    }
}
