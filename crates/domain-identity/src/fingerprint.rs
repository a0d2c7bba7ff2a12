//! Canton-style public key fingerprints.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::ids::IdError;

/// Multihash prefix of every fingerprint: `0x12` = sha2-256, `0x20` = 32-byte digest.
pub const FINGERPRINT_PREFIX: &str = "1220";

/// Length of a fingerprint's string form: the 4-char prefix plus 64 hex chars.
pub const FINGERPRINT_LEN: usize = FINGERPRINT_PREFIX.len() + 64;

/// Fingerprint of a public key, in Canton's form: `"1220"` followed by the lowercase hex
/// SHA-256 of the 32 raw ed25519 public key bytes (i.e. a hex-encoded sha2-256 multihash).
///
/// The string form is canonical: [`Fingerprint::parse`] accepts only lowercase hex, so
/// `parse(s)?.to_string() == s` for every accepted `s`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    digest: [u8; 32],
}

impl Fingerprint {
    /// Fingerprint of a raw 32-byte ed25519 public key.
    #[must_use]
    pub fn of_public_key_bytes(public_key: &[u8; 32]) -> Self {
        let digest: [u8; 32] = Sha256::digest(public_key).into();
        Self { digest }
    }

    /// Builds a fingerprint from an already computed SHA-256 digest.
    #[must_use]
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self { digest }
    }

    /// The SHA-256 digest (without the multihash prefix).
    #[must_use]
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Parses the string form: exactly [`FINGERPRINT_LEN`] (68) chars, starting with
    /// [`FINGERPRINT_PREFIX`] (`"1220"`), all lowercase hex (`0-9a-f`).
    ///
    /// Checks, in order: non-empty, every char lowercase hex, the prefix, the length.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::EmptyFingerprint);
        }
        if let Some((position, ch)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(IdError::FingerprintNotHex { ch, position });
        }
        // Only ASCII hex digits from here on, so byte indexing is char indexing.
        if s.len() >= FINGERPRINT_PREFIX.len() && !s.starts_with(FINGERPRINT_PREFIX) {
            return Err(IdError::FingerprintPrefix {
                found: s[..FINGERPRINT_PREFIX.len()].to_owned(),
            });
        }
        if s.len() != FINGERPRINT_LEN {
            return Err(IdError::FingerprintLength { len: s.len() });
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&s[FINGERPRINT_PREFIX.len()..], &mut digest)
            .map_err(|_| IdError::FingerprintLength { len: s.len() })?;
        Ok(Self { digest })
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FINGERPRINT_PREFIX)?;
        f.write_str(&hex::encode(self.digest))
    }
}

string_form!(Fingerprint, Fingerprint::parse, debug);

#[cfg(test)]
mod tests {
    use super::*;

    const RFC8032_TEST1_PK: &str =
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn fixed_key() -> [u8; 32] {
        let mut key = [0u8; 32];
        hex::decode_to_slice(RFC8032_TEST1_PK, &mut key).expect("valid hex");
        key
    }

    #[test]
    fn fingerprint_matches_independent_sha256() {
        let key = fixed_key();
        let fp = Fingerprint::of_public_key_bytes(&key);

        // Independently: multihash header bytes 0x12 0x20, then the SHA-256 digest.
        let digest = sha2::Sha256::digest(key);
        let mut multihash = vec![0x12u8, 0x20];
        multihash.extend_from_slice(&digest);
        assert_eq!(fp.to_string(), hex::encode(&multihash));
        assert!(fp.to_string().starts_with("1220"));
        assert_eq!(fp.to_string().len(), 68);
        assert_eq!(fp.digest().as_slice(), digest.as_slice());
    }

    #[test]
    fn fingerprint_known_vector() {
        // sha256 of the RFC 8032 test-1 public key, computed with `sha256sum`.
        let fp = Fingerprint::of_public_key_bytes(&fixed_key());
        assert_eq!(
            fp.to_string(),
            "122021fe31dfa154a261626bf854046fd2271b7bed4b6abe45aa58877ef47f9721b9"
        );
    }

    #[test]
    fn parse_round_trips() {
        let fp = Fingerprint::of_public_key_bytes(&fixed_key());
        let s = fp.to_string();
        assert_eq!(Fingerprint::parse(&s), Ok(fp));
        assert_eq!(s.parse::<Fingerprint>(), Ok(fp));
        let json = serde_json::to_string(&fp).expect("serialize");
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(
            serde_json::from_str::<Fingerprint>(&json).expect("deserialize"),
            fp
        );
    }

    #[test]
    fn parse_rejections() {
        let good = Fingerprint::of_public_key_bytes(&fixed_key()).to_string();

        assert_eq!(Fingerprint::parse(""), Err(IdError::EmptyFingerprint));

        // Wrong multihash prefix, right length.
        let bad_prefix = format!("1320{}", &good[4..]);
        assert_eq!(
            Fingerprint::parse(&bad_prefix),
            Err(IdError::FingerprintPrefix {
                found: "1320".into()
            })
        );
        // A bare 64-char digest without the prefix.
        assert_eq!(
            Fingerprint::parse(&good[4..]),
            Err(IdError::FingerprintPrefix {
                found: good[4..8].to_owned()
            })
        );

        // Too short / too long.
        assert_eq!(
            Fingerprint::parse(&good[..66]),
            Err(IdError::FingerprintLength { len: 66 })
        );
        assert_eq!(
            Fingerprint::parse(&format!("{good}00")),
            Err(IdError::FingerprintLength { len: 70 })
        );
        assert_eq!(
            Fingerprint::parse("12"),
            Err(IdError::FingerprintLength { len: 2 })
        );

        // Non-hex and uppercase hex.
        let mut non_hex = good.clone();
        non_hex.replace_range(10..11, "g");
        assert_eq!(
            Fingerprint::parse(&non_hex),
            Err(IdError::FingerprintNotHex {
                ch: 'g',
                position: 10
            })
        );
        let upper = good.to_uppercase();
        assert!(matches!(
            Fingerprint::parse(&upper),
            Err(IdError::FingerprintNotHex { .. })
        ));
        assert!(matches!(
            Fingerprint::parse("1220é"),
            Err(IdError::FingerprintNotHex {
                ch: 'é',
                position: 4
            })
        ));
    }

    #[test]
    fn error_messages_are_precise() {
        assert_eq!(
            Fingerprint::parse("1320").map_err(|e| e.to_string()),
            Err("fingerprint must start with \"1220\" (sha2-256 multihash), found \"1320\"".into())
        );
        assert_eq!(
            Fingerprint::parse("1220ab").map_err(|e| e.to_string()),
            Err("fingerprint must be 68 characters long, got 6".into())
        );
        assert_eq!(
            Fingerprint::parse("1220x").map_err(|e| e.to_string()),
            Err(
                "fingerprint has non-hex character 'x' at position 4 (expected lowercase 0-9a-f)"
                    .into()
            )
        );
    }
}
