//! ed25519 signing key pairs, their PKCS#8 PEM files, and public keys.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::ed25519::signature::{MultipartSigner as _, MultipartVerifier as _};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::fingerprint::Fingerprint;
use crate::ids::DomainId;
use crate::signature::{
    Signature, SignatureError, SignaturePurpose, signing_input_parts, validate_domain_id_str,
};

/// The canonical encodings of the eight points of small order, the only `R` of a signature
/// that passes the cofactorless equation and that `verify_strict` still refuses (the key
/// cannot be of small order: [`PublicKey::from_bytes`] refuses such keys).
static SMALL_ORDER_POINTS: std::sync::LazyLock<[[u8; 32]; 8]> = std::sync::LazyLock::new(|| {
    curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes())
});

/// Length of a raw ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Errors creating, loading, saving or decoding keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A raw public key was not exactly 32 bytes.
    #[error("ed25519 public key must be 32 bytes, got {actual}")]
    PublicKeyLength {
        /// The length received.
        actual: usize,
    },
    /// The 32 bytes do not encode a point on the ed25519 curve.
    #[error("ed25519 public key bytes do not encode a valid curve point")]
    InvalidPublicKeyPoint,
    /// The 32 bytes encode a point, but not in canonical form (y not reduced mod p).
    #[error("ed25519 public key is not canonically encoded")]
    NonCanonicalPublicKey,
    /// The key is a small-order point, for which signatures are meaningless.
    #[error("ed25519 public key is a small-order (weak) point")]
    WeakPublicKey,
    /// Encoding the private key as PKCS#8 PEM failed.
    #[error("failed to encode private key as pkcs#8 pem: {0}")]
    EncodePem(#[source] ed25519_dalek::pkcs8::Error),
    /// The PEM text is not a valid PKCS#8 ed25519 private key.
    #[error("invalid pkcs#8 pem ed25519 private key: {0}")]
    DecodePem(#[source] ed25519_dalek::pkcs8::Error),
    /// The key file is not a valid PKCS#8 PEM ed25519 private key.
    #[error("invalid private key file {}: {reason}", path.display())]
    InvalidKeyFile {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Refused to overwrite an existing key file.
    #[error("key file {} already exists; refusing to overwrite it", path.display())]
    KeyFileExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Creating the key file failed.
    #[error("failed to create key file {}: {source}", path.display())]
    CreateKeyFile {
        /// The file to create.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the key file failed (the partial file is removed).
    #[error("failed to write key file {}: {source}", path.display())]
    WriteKeyFile {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading the key file failed.
    #[error("failed to read key file {}: {source}", path.display())]
    ReadKeyFile {
        /// The file to read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// An ed25519 public key together with its [`Fingerprint`].
///
/// Only canonical encodings of points of large order are accepted, so the fingerprint of the
/// raw bytes identifies the key uniquely.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    key: VerifyingKey,
    fingerprint: Fingerprint,
}

impl PublicKey {
    /// Parses a raw 32-byte ed25519 public key.
    ///
    /// Errors if the length is not 32, the bytes are not a curve point, the encoding is not
    /// canonical, or the point has small order.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let raw: &[u8; PUBLIC_KEY_LEN] =
            bytes.try_into().map_err(|_| KeyError::PublicKeyLength {
                actual: bytes.len(),
            })?;
        let key = VerifyingKey::from_bytes(raw).map_err(|_| KeyError::InvalidPublicKeyPoint)?;
        if key.to_edwards().compress().to_bytes() != *raw {
            return Err(KeyError::NonCanonicalPublicKey);
        }
        if key.is_weak() {
            return Err(KeyError::WeakPublicKey);
        }
        Ok(Self::from_verifying_key(key))
    }

    fn from_verifying_key(key: VerifyingKey) -> Self {
        let fingerprint = Fingerprint::of_public_key_bytes(key.as_bytes());
        Self { key, fingerprint }
    }

    /// The raw 32 key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.key.as_bytes()
    }

    /// The raw 32 key bytes, by value.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key.to_bytes()
    }

    /// The key's fingerprint (`1220` + hex SHA-256 of the raw bytes).
    #[must_use]
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Verifies a signature made by [`SigningKeyPair::sign`] for `purpose` in `domain_id`
    /// over `payload`, using ed25519 strict verification.
    ///
    /// Fails if the signature's signer fingerprint is not this key's, or if the signature does
    /// not verify for exactly this purpose, domain id and payload.
    pub fn verify(
        &self,
        purpose: SignaturePurpose,
        domain_id: &DomainId,
        payload: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        self.verify_with_domain_str(purpose, &domain_id.to_string(), payload, signature)
    }

    /// Like [`PublicKey::verify`], with the domain id given as a string (e.g. straight from
    /// a message). The string must be non-empty and free of NUL bytes.
    pub fn verify_with_domain_str(
        &self,
        purpose: SignaturePurpose,
        domain_id: &str,
        payload: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        validate_domain_id_str(domain_id)?;
        if signature.signer() != &self.fingerprint {
            return Err(SignatureError::SignerMismatch {
                signer: *signature.signer(),
                key: self.fingerprint,
            });
        }
        let sig = ed25519_dalek::Signature::from_bytes(signature.as_bytes());
        // Exactly `verify_strict`'s acceptance, at less cost: it decompresses R (a field
        // square root, about 4 % of a sequencer's CPU at full load) only to refuse an R of
        // small order. The cofactorless equation already refuses any R that is not the
        // canonical encoding of a point, so comparing R with the eight canonical encodings
        // of small-order points refuses the same signatures. The key is never of small
        // order (see `from_bytes`). Tests: `a_signature_verify_strict_refuses_is_refused`
        // (the small-order case) and `verification_accepts_exactly_what_verify_strict_accepts`
        // (random and tampered signatures).
        self.key
            .multipart_verify(&signing_input_parts(purpose, domain_id, payload), &sig)
            .map_err(|_| SignatureError::Invalid)?;
        if SMALL_ORDER_POINTS.contains(sig.r_bytes()) {
            return Err(SignatureError::Invalid);
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint)
    }
}

/// An ed25519 signing key pair.
///
/// Not `Clone` on purpose, to avoid scattering copies of the secret; share it with `Arc`.
/// The secret is zeroized on drop, and `Debug` shows only the fingerprint.
pub struct SigningKeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl SigningKeyPair {
    /// Generates a fresh key pair from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Panics if the OS random source fails, which is not recoverable.
    #[must_use]
    pub fn generate() -> Self {
        let mut rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
        Self::from_signing_key(SigningKey::generate(&mut rng))
    }

    /// A key pair from a 32-byte ed25519 secret seed (for tests and deterministic fixtures).
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(seed))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let public = PublicKey::from_verifying_key(signing.verifying_key());
        Self { signing, public }
    }

    /// The public half.
    #[must_use]
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public key's fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> &Fingerprint {
        self.public.fingerprint()
    }

    /// Signs `payload` for `purpose` in `domain_id`; see [`crate::signing_input`] for the
    /// exact bytes signed.
    #[must_use]
    pub fn sign(
        &self,
        purpose: SignaturePurpose,
        domain_id: &DomainId,
        payload: &[u8],
    ) -> Signature {
        self.sign_parts(purpose, &domain_id.to_string(), payload)
    }

    /// Like [`SigningKeyPair::sign`], with the domain id given as a string. The string must
    /// be non-empty and free of NUL bytes (which would make the signed bytes ambiguous).
    pub fn sign_with_domain_str(
        &self,
        purpose: SignaturePurpose,
        domain_id: &str,
        payload: &[u8],
    ) -> Result<Signature, SignatureError> {
        validate_domain_id_str(domain_id)?;
        Ok(self.sign_parts(purpose, domain_id, payload))
    }

    /// Signs the signing input's parts as one message, without copying the payload.
    fn sign_parts(&self, purpose: SignaturePurpose, domain_id: &str, payload: &[u8]) -> Signature {
        let sig = self
            .signing
            .multipart_sign(&signing_input_parts(purpose, domain_id, payload));
        Signature::new(sig.to_bytes(), *self.fingerprint())
    }

    /// The private key as PKCS#8 v2 PEM (`-----BEGIN PRIVATE KEY-----`, LF line endings),
    /// zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(KeyError::EncodePem)
    }

    /// Parses a PKCS#8 PEM ed25519 private key. If the document embeds the public key, it
    /// must match the private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self::from_signing_key)
            .map_err(KeyError::DecodePem)
    }

    /// Writes the private key as PKCS#8 PEM to a new file with mode 0600.
    ///
    /// The file is created with mode 0600 atomically (never readable by others, even
    /// briefly) and synced to disk. An existing file is never overwritten
    /// ([`KeyError::KeyFileExists`]); if writing fails, the partial file is removed.
    pub fn save_pem(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        let path = path.as_ref();
        let pem = self.to_pkcs8_pem()?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    KeyError::KeyFileExists {
                        path: path.to_owned(),
                    }
                } else {
                    KeyError::CreateKeyFile {
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
        let written = file
            // The umask can only clear bits; make the mode exactly 0600 regardless.
            .set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(pem.as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            drop(file);
            // Best effort: do not leave a truncated key behind.
            let _ = fs::remove_file(path);
            return Err(KeyError::WriteKeyFile {
                path: path.to_owned(),
                source,
            });
        }
        Ok(())
    }

    /// Loads a private key written by [`SigningKeyPair::save_pem`] (or any PKCS#8 PEM
    /// ed25519 private key, e.g. from `openssl genpkey -algorithm ed25519`).
    pub fn load_pem(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| KeyError::ReadKeyFile {
            path: path.to_owned(),
            source,
        })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::InvalidKeyFile {
            path: path.to_owned(),
            reason: "not utf-8 text".to_owned(),
        })?;
        SigningKey::from_pkcs8_pem(text)
            .map(Self::from_signing_key)
            .map_err(|e| KeyError::InvalidKeyFile {
                path: path.to_owned(),
                reason: format!("not a pkcs#8 pem ed25519 private key: {e}"),
            })
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("fingerprint", &format_args!("{}", self.fingerprint()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::signing_input_str;

    #[test]
    fn the_small_order_encodings_are_eight_distinct_points_of_small_order() {
        let mut seen = std::collections::HashSet::new();
        for bytes in SMALL_ORDER_POINTS.iter() {
            let point = curve25519_dalek::edwards::CompressedEdwardsY(*bytes)
                .decompress()
                .expect("a point");
            assert!(point.is_small_order());
            assert_eq!(point.compress().to_bytes(), *bytes, "canonical");
            assert!(seen.insert(*bytes));
        }
        assert_eq!(seen.len(), 8);
    }

    /// R is the identity (small order) and s = k·a, so [s]B = R + [k]A holds: the
    /// cofactorless equation accepts it, `verify_strict` refuses it, and so must we.
    #[test]
    fn a_signature_verify_strict_refuses_is_refused() {
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest as _, Sha512};
        let pair = SigningKeyPair::from_seed(&[7; 32]);
        let (purpose, domain, payload) = (SignaturePurpose::Submission, "d::1", b"payload");
        let message = signing_input_str(purpose, domain, payload);
        let mut r = [0u8; 32];
        r[0] = 1;
        let k: [u8; 64] = Sha512::new()
            .chain_update(r)
            .chain_update(pair.public_key().as_bytes())
            .chain_update(&message)
            .finalize()
            .into();
        let s = Scalar::from_bytes_mod_order_wide(&k) * pair.signing.to_scalar();
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&r);
        bytes[32..].copy_from_slice(s.as_bytes());
        let dalek = ed25519_dalek::Signature::from_bytes(&bytes);
        assert!(
            pair.public
                .key
                .multipart_verify(&[&message], &dalek)
                .is_ok()
        );
        assert!(pair.public.key.verify_strict(&message, &dalek).is_err());
        let ours = Signature::new(bytes, *pair.fingerprint());
        assert!(matches!(
            pair.public_key()
                .verify_with_domain_str(purpose, domain, payload, &ours),
            Err(SignatureError::Invalid)
        ));
    }

    #[test]
    fn verification_accepts_exactly_what_verify_strict_accepts() {
        let purpose = SignaturePurpose::Submission;
        for i in 0..48u8 {
            let pair = SigningKeyPair::from_seed(&[i; 32]);
            let payload = vec![i; usize::from(i) * 29];
            let sig = pair
                .sign_with_domain_str(purpose, "d::1", &payload)
                .expect("sign");
            let mut cases = vec![(*sig.as_bytes(), payload.clone())];
            // Bit flips in R (0..256) and in s (256..512), and a longer payload.
            for bit in [0usize, 9, 130, 255, 256, 300, 505, 511] {
                let mut b = *sig.as_bytes();
                b[bit / 8] ^= 1 << (bit % 8);
                cases.push((b, payload.clone()));
            }
            let mut longer = payload.clone();
            longer.push(0);
            cases.push((*sig.as_bytes(), longer));
            for (n, (bytes, payload)) in cases.into_iter().enumerate() {
                let strict = pair
                    .public
                    .key
                    .verify_strict(
                        &signing_input_str(purpose, "d::1", &payload),
                        &ed25519_dalek::Signature::from_bytes(&bytes),
                    )
                    .is_ok();
                let ours = pair
                    .public_key()
                    .verify_with_domain_str(
                        purpose,
                        "d::1",
                        &payload,
                        &Signature::new(bytes, *pair.fingerprint()),
                    )
                    .is_ok();
                assert_eq!(ours, strict, "key {i}, case {n}");
                assert_eq!(strict, n == 0, "key {i}, case {n}");
            }
        }
    }

    #[test]
    fn pem_save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        let key = SigningKeyPair::generate();
        key.save_pem(&path).expect("save");

        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode was {mode:o}");

        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");

        let loaded = SigningKeyPair::load_pem(&path).expect("load");
        assert_eq!(loaded.public_key(), key.public_key());
        assert_eq!(loaded.fingerprint(), key.fingerprint());
        assert_eq!(loaded.signing.to_bytes(), key.signing.to_bytes());
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        fs::write(&path, "existing").expect("write");
        let err = SigningKeyPair::generate()
            .save_pem(&path)
            .expect_err("must refuse");
        assert!(matches!(err, KeyError::KeyFileExists { .. }), "{err:?}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "existing");
    }

    #[test]
    fn save_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("key.pem");
        let err = SigningKeyPair::generate()
            .save_pem(&path)
            .expect_err("must fail");
        assert!(matches!(err, KeyError::CreateKeyFile { .. }), "{err:?}");
    }

    #[test]
    fn load_rejects_truncated_and_garbled_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKeyPair::generate();
        let pem = key.to_pkcs8_pem().expect("pem");

        // Truncated: drop the footer and part of the body.
        let truncated = dir.path().join("truncated.pem");
        fs::write(&truncated, &pem[..pem.len() / 2]).expect("write");
        let err = SigningKeyPair::load_pem(&truncated).expect_err("truncated");
        assert!(matches!(err, KeyError::InvalidKeyFile { .. }), "{err:?}");

        // Garbled base64 body.
        let body_start = pem.find('\n').expect("header line") + 1;
        let mut garbled = pem.to_string();
        garbled.replace_range(body_start..body_start + 8, "!!!!!!!!");
        let garbled_path = dir.path().join("garbled.pem");
        fs::write(&garbled_path, &garbled).expect("write");
        assert!(matches!(
            SigningKeyPair::load_pem(&garbled_path),
            Err(KeyError::InvalidKeyFile { .. })
        ));

        // Valid base64 but corrupted DER (flip the first body character to another base64
        // letter).
        let mut corrupted = pem.to_string();
        let first = &corrupted[body_start..=body_start];
        let replacement = if first == "A" { "B" } else { "A" };
        corrupted.replace_range(body_start..=body_start, replacement);
        assert!(matches!(
            SigningKeyPair::from_pkcs8_pem(&corrupted),
            Err(KeyError::DecodePem(_))
        ));

        // Not PEM at all, and not UTF-8.
        assert!(SigningKeyPair::from_pkcs8_pem("hello").is_err());
        let binary = dir.path().join("binary.pem");
        fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        let err = SigningKeyPair::load_pem(&binary).expect_err("binary");
        assert!(err.to_string().contains("not utf-8"), "{err}");

        // Missing file.
        assert!(matches!(
            SigningKeyPair::load_pem(dir.path().join("nope.pem")),
            Err(KeyError::ReadKeyFile { .. })
        ));
    }

    #[test]
    fn pem_with_mismatched_embedded_public_key_is_rejected() {
        // PKCS#8 v2 embeds the public key; splice another key's public part in.
        let a = SigningKeyPair::from_seed(&[1; 32]);
        let b = SigningKeyPair::from_seed(&[2; 32]);
        let mut der = ed25519_dalek::pkcs8::KeypairBytes::from(&a.signing);
        der.public_key = Some(ed25519_dalek::pkcs8::PublicKeyBytes(
            b.public_key().to_bytes(),
        ));
        let pem = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_pem(&der, LineEnding::LF)
            .expect("encode");
        assert!(SigningKeyPair::from_pkcs8_pem(&pem).is_err());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let key = SigningKeyPair::from_seed(&[0xab; 32]);
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            format!(
                "SigningKeyPair {{ fingerprint: {}, .. }}",
                key.fingerprint()
            )
        );
        assert!(!debug.contains(&hex::encode([0xab; 32])));
        assert!(!format!("{key:#?}").contains("171, 171"));
        assert_eq!(
            format!("{:?}", key.public_key()),
            format!("PublicKey({})", key.fingerprint())
        );
    }

    #[test]
    fn public_key_bytes_round_trip() {
        let key = SigningKeyPair::generate();
        let bytes = key.public_key().to_bytes();
        let parsed = PublicKey::from_bytes(&bytes).expect("valid");
        assert_eq!(&parsed, key.public_key());
        assert_eq!(parsed.as_bytes(), &bytes);
        assert_eq!(
            parsed.fingerprint(),
            &Fingerprint::of_public_key_bytes(&bytes)
        );
    }

    #[test]
    fn public_key_wrong_length_rejected() {
        let bytes = SigningKeyPair::generate().public_key().to_bytes();
        let err = PublicKey::from_bytes(&bytes[..31]).expect_err("31 bytes");
        assert!(
            matches!(err, KeyError::PublicKeyLength { actual: 31 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "ed25519 public key must be 32 bytes, got 31"
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            PublicKey::from_bytes(&long),
            Err(KeyError::PublicKeyLength { actual: 33 })
        ));
        assert!(matches!(
            PublicKey::from_bytes(&[]),
            Err(KeyError::PublicKeyLength { actual: 0 })
        ));
    }

    #[test]
    fn public_key_invalid_points_rejected() {
        // y = 2 is not the y-coordinate of any ed25519 point.
        let mut not_on_curve = [0u8; 32];
        not_on_curve[0] = 2;
        assert!(matches!(
            PublicKey::from_bytes(&not_on_curve),
            Err(KeyError::InvalidPublicKeyPoint)
        ));

        // y = 1 is the identity: a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(KeyError::WeakPublicKey)
        ));

        // y = p + 1 (= 1 mod p) is a non-canonical encoding of the identity.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(matches!(
            PublicKey::from_bytes(&non_canonical),
            Err(KeyError::NonCanonicalPublicKey)
        ));
    }
}
