//! Unique ids (`name::fingerprint`), member ids (`ROLE::name::fingerprint`) and domain ids.

use std::fmt;

use crate::fingerprint::Fingerprint;
use crate::keys::PublicKey;

/// Maximum length of a [`UniqueId`] name, in characters.
pub const MAX_NAME_LEN: usize = 185;

/// Separator between the parts of unique and member ids.
const SEPARATOR: &str = "::";

/// Errors parsing or building identifiers and fingerprints.
///
/// Positions are 0-based character indexes into the part named in the message (the name or
/// the fingerprint), not into the whole input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The `::` separator is missing.
    #[error("missing `::` separator (expected `{expected}`)")]
    MissingSeparator {
        /// The expected shape of the input, e.g. `name::fingerprint`.
        expected: &'static str,
    },
    /// The name part is empty.
    #[error("name is empty (expected 1 to 185 characters of A-Z a-z 0-9 _ . -)")]
    EmptyName,
    /// The name part is longer than [`MAX_NAME_LEN`].
    #[error("name is {len} characters long, at most 185 are allowed")]
    NameTooLong {
        /// Actual length in characters.
        len: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "name has invalid character {ch:?} at position {position} (allowed: A-Z a-z 0-9 _ . -)"
    )]
    InvalidNameChar {
        /// The offending character.
        ch: char,
        /// Its 0-based character index within the name.
        position: usize,
    },
    /// The fingerprint part is empty.
    #[error("missing fingerprint (expected \"1220\" followed by 64 lowercase hex characters)")]
    EmptyFingerprint,
    /// The fingerprint does not start with the sha2-256 multihash prefix `1220`.
    #[error("fingerprint must start with \"1220\" (sha2-256 multihash), found {found:?}")]
    FingerprintPrefix {
        /// The first four characters found instead.
        found: String,
    },
    /// The fingerprint is not exactly 68 characters long.
    #[error("fingerprint must be 68 characters long, got {len}")]
    FingerprintLength {
        /// Actual length in characters.
        len: usize,
    },
    /// The fingerprint contains a character that is not lowercase hex.
    #[error(
        "fingerprint has non-hex character {ch:?} at position {position} (expected lowercase 0-9a-f)"
    )]
    FingerprintNotHex {
        /// The offending character.
        ch: char,
        /// Its 0-based character index within the fingerprint.
        position: usize,
    },
    /// A member id starts with a role prefix that is not one of `PAR`, `MED`, `SEQ`, `DOM`.
    #[error("unknown member role prefix {prefix:?} (valid prefixes: PAR, MED, SEQ, DOM)")]
    UnknownRole {
        /// The prefix found (truncated to 32 characters).
        prefix: String,
    },
    /// A valid member id of another role than the one required.
    #[error("this is a {} id ({}::…), not a {} id ({}::name::1220…)", .found.noun(), .found.prefix(), .expected.noun(), .expected.prefix())]
    WrongRole {
        /// The role the id has.
        found: MemberRole,
        /// The role required.
        expected: MemberRole,
    },
}

/// Truncates attacker-controlled input before embedding it in an error message.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 32;
    match s.char_indices().nth(MAX) {
        Some((idx, _)) => format!("{}…", &s[..idx]),
        None => s.to_owned(),
    }
}

/// A unique identifier: a human-readable `name` in the namespace of a key `fingerprint`,
/// written `name::fingerprint` (e.g. `alice::1220ab…`).
///
/// Name rule: 1 to [`MAX_NAME_LEN`] (185) characters, each an ASCII letter, digit, `_`, `.`
/// or `-` (i.e. `[A-Za-z0-9_.-]{1,185}`). In particular a name can never contain `:`, so
/// the first `::` always separates the name from the fingerprint.
///
/// The string form is canonical: `parse(s)?.to_string() == s` for every accepted `s`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UniqueId {
    name: String,
    fingerprint: Fingerprint,
}

impl UniqueId {
    /// Builds a unique id, validating the name (see the type docs for the rule).
    pub fn new(name: impl Into<String>, fingerprint: Fingerprint) -> Result<Self, IdError> {
        let name = name.into();
        Self::validate_name(&name)?;
        Ok(Self { name, fingerprint })
    }

    /// Checks a name against the rule `[A-Za-z0-9_.-]{1,185}`.
    pub fn validate_name(name: &str) -> Result<(), IdError> {
        if name.is_empty() {
            return Err(IdError::EmptyName);
        }
        if let Some((position, ch)) = name
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(IdError::InvalidNameChar { ch, position });
        }
        // All ASCII from here on, so the byte length is the character length.
        if name.len() > MAX_NAME_LEN {
            return Err(IdError::NameTooLong { len: name.len() });
        }
        Ok(())
    }

    /// Parses `name::fingerprint`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Self::parse_expecting(s, "name::fingerprint")
    }

    fn parse_expecting(s: &str, expected: &'static str) -> Result<Self, IdError> {
        let (name, fingerprint) = s
            .split_once(SEPARATOR)
            .ok_or(IdError::MissingSeparator { expected })?;
        Self::validate_name(name)?;
        let fingerprint = Fingerprint::parse(fingerprint)?;
        Ok(Self {
            name: name.to_owned(),
            fingerprint,
        })
    }

    /// The name part.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace fingerprint part.
    #[must_use]
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.name, self.fingerprint)
    }
}

string_form!(UniqueId, UniqueId::parse, debug);

/// The role of a domain member, written as the prefix of its [`MemberId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberRole {
    /// A participant node (`PAR`).
    Participant,
    /// A mediator (`MED`).
    Mediator,
    /// A sequencer (`SEQ`).
    Sequencer,
    /// The domain itself, acting through its domain manager (`DOM`).
    DomainManager,
}

impl MemberRole {
    /// Every role, in prefix order `PAR`, `MED`, `SEQ`, `DOM`.
    pub const ALL: [MemberRole; 4] = [
        MemberRole::Participant,
        MemberRole::Mediator,
        MemberRole::Sequencer,
        MemberRole::DomainManager,
    ];

    /// The three-letter prefix used in member ids.
    #[must_use]
    pub fn prefix(self) -> &'static str {
        match self {
            MemberRole::Participant => "PAR",
            MemberRole::Mediator => "MED",
            MemberRole::Sequencer => "SEQ",
            MemberRole::DomainManager => "DOM",
        }
    }

    /// The role in words, for messages (`participant`, `domain manager`).
    #[must_use]
    pub fn noun(self) -> &'static str {
        match self {
            MemberRole::Participant => "participant",
            MemberRole::Mediator => "mediator",
            MemberRole::Sequencer => "sequencer",
            MemberRole::DomainManager => "domain manager",
        }
    }

    /// Parses a three-letter prefix (case-sensitive).
    pub fn from_prefix(prefix: &str) -> Result<Self, IdError> {
        Self::ALL
            .into_iter()
            .find(|role| role.prefix() == prefix)
            .ok_or_else(|| IdError::UnknownRole {
                prefix: truncate_for_error(prefix),
            })
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

string_form!(MemberRole, MemberRole::from_prefix);

/// A domain member: a role plus a unique id, written `ROLE::name::fingerprint`,
/// e.g. `PAR::alice::1220ab…`. The fingerprint names the member's key (see
/// [`MemberId::matches_key`]).
///
/// The string form is canonical: `parse(s)?.to_string() == s` for every accepted `s`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId {
    role: MemberRole,
    uid: UniqueId,
}

impl MemberId {
    /// A member id from its parts.
    #[must_use]
    pub fn new(role: MemberRole, uid: UniqueId) -> Self {
        Self { role, uid }
    }

    /// Parses `ROLE::name::fingerprint` with `ROLE` one of `PAR`, `MED`, `SEQ`, `DOM`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const EXPECTED: &str = "ROLE::name::fingerprint";
        let (prefix, rest) = s
            .split_once(SEPARATOR)
            .ok_or(IdError::MissingSeparator { expected: EXPECTED })?;
        let role = MemberRole::from_prefix(prefix)?;
        let uid = UniqueId::parse_expecting(rest, EXPECTED)?;
        Ok(Self { role, uid })
    }

    /// Parses a participant id, `PAR::name::1220…`: the one parser behind every place that
    /// takes one (admin APIs, CLIs, identity files). With `accept_bare`, a bare unique id
    /// `name::1220…` (what `participant id` printed before member ids) is read as the
    /// participant with that unique id; the `bool` says the input was bare, so a CLI can
    /// say how it read it.
    pub fn parse_participant(s: &str, accept_bare: bool) -> Result<(Self, bool), IdError> {
        let s = s.trim();
        match Self::parse(s) {
            Ok(id) if id.role == MemberRole::Participant => Ok((id, false)),
            Ok(id) => Err(IdError::WrongRole {
                found: id.role,
                expected: MemberRole::Participant,
            }),
            Err(e) if accept_bare => match UniqueId::parse(s) {
                Ok(uid) => Ok((Self::new(MemberRole::Participant, uid), true)),
                Err(_) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The member's role.
    #[must_use]
    pub fn role(&self) -> MemberRole {
        self.role
    }

    /// The member's unique id (`name::fingerprint`).
    #[must_use]
    pub fn uid(&self) -> &UniqueId {
        &self.uid
    }

    /// The name part of the unique id.
    #[must_use]
    pub fn name(&self) -> &str {
        self.uid.name()
    }

    /// The fingerprint part of the unique id.
    #[must_use]
    pub fn fingerprint(&self) -> &Fingerprint {
        self.uid.fingerprint()
    }

    /// Whether `key` is the key this id names, i.e. its fingerprint equals the id's.
    #[must_use]
    pub fn matches_key(&self, key: &PublicKey) -> bool {
        key.fingerprint() == self.fingerprint()
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.role.prefix(), self.uid)
    }
}

string_form!(MemberId, MemberId::parse, debug);

/// The id of a domain: a [`UniqueId`] whose fingerprint is the domain's namespace key,
/// written `name::fingerprint` (no role prefix). Its string form is what signatures are
/// bound to (see [`crate::signing_input`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(UniqueId);

impl DomainId {
    /// A domain id from its unique id.
    #[must_use]
    pub fn new(uid: UniqueId) -> Self {
        Self(uid)
    }

    /// Parses `name::fingerprint`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        UniqueId::parse(s).map(Self)
    }

    /// The underlying unique id.
    #[must_use]
    pub fn uid(&self) -> &UniqueId {
        &self.0
    }

    /// The domain's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The domain's namespace fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> &Fingerprint {
        self.0.fingerprint()
    }

    /// Whether `key` is the domain's namespace key.
    #[must_use]
    pub fn matches_key(&self, key: &PublicKey) -> bool {
        key.fingerprint() == self.fingerprint()
    }
}

impl From<UniqueId> for DomainId {
    fn from(uid: UniqueId) -> Self {
        Self(uid)
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

string_form!(DomainId, DomainId::parse, debug);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKeyPair;

    const FP: &str = "1220aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn fp(byte: u8) -> Fingerprint {
        Fingerprint::of_public_key_bytes(&[byte; 32])
    }

    #[test]
    fn unique_id_round_trip() {
        let uid = UniqueId::new("alice-1.node_A", fp(1)).expect("valid");
        let s = uid.to_string();
        assert_eq!(s, format!("alice-1.node_A::{}", fp(1)));
        let parsed: UniqueId = s.parse().expect("parse");
        assert_eq!(parsed, uid);
        assert_eq!(parsed.name(), "alice-1.node_A");
        assert_eq!(parsed.fingerprint(), &fp(1));
        assert_eq!(parsed.to_string(), s);
    }

    #[test]
    fn name_length_limits() {
        let max = "a".repeat(MAX_NAME_LEN);
        assert!(UniqueId::new(max.clone(), fp(1)).is_ok());
        assert!(UniqueId::parse(&format!("{max}::{}", fp(1))).is_ok());
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            UniqueId::new(too_long, fp(1)),
            Err(IdError::NameTooLong { len: 186 })
        );
        assert_eq!(UniqueId::new("", fp(1)), Err(IdError::EmptyName));
    }

    /// Asserts that `parse` refuses every input of `cases` with exactly its error.
    fn assert_rejections<T: fmt::Debug>(
        parse: fn(&str) -> Result<T, IdError>,
        cases: &[(String, IdError)],
    ) {
        for (input, expected) in cases {
            match parse(input) {
                Err(err) => assert_eq!(&err, expected, "input {input:?}"),
                Ok(parsed) => panic!("input {input:?} accepted as {parsed:?}"),
            }
        }
    }

    #[test]
    fn unique_id_rejections() {
        let f = fp(1).to_string();
        let invalid_char = |ch, position| IdError::InvalidNameChar { ch, position };
        assert_rejections(
            UniqueId::parse,
            &[
                (
                    "alice".into(),
                    IdError::MissingSeparator {
                        expected: "name::fingerprint",
                    },
                ),
                (format!("::{f}"), IdError::EmptyName),
                ("alice::".into(), IdError::EmptyFingerprint),
                (format!("al ice::{f}"), invalid_char(' ', 2)),
                (format!("alicé::{f}"), invalid_char('é', 4)),
                // A name cannot contain ':', so "a:b::fp" fails on the name.
                (format!("a:b::{f}"), invalid_char(':', 1)),
                // Trailing junk after the fingerprint.
                (
                    format!("alice::{f}::x"),
                    IdError::FingerprintNotHex {
                        ch: ':',
                        position: 68,
                    },
                ),
            ],
        );
    }

    #[test]
    fn member_id_round_trip_all_roles() {
        let uid = UniqueId::new("alice", fp(7)).expect("valid");
        for (role, prefix) in MemberRole::ALL
            .into_iter()
            .zip(["PAR", "MED", "SEQ", "DOM"])
        {
            let member = MemberId::new(role, uid.clone());
            let s = member.to_string();
            assert_eq!(s, format!("{prefix}::alice::{}", fp(7)));
            let parsed: MemberId = s.parse().expect("parse");
            assert_eq!(parsed, member);
            assert_eq!(parsed.role(), role);
            assert_eq!(parsed.uid(), &uid);
            assert_eq!(parsed.name(), "alice");
            assert_eq!(parsed.to_string(), s);
            assert_eq!(prefix.parse::<MemberRole>(), Ok(role));

            let json = serde_json::to_string(&member).expect("serialize");
            assert_eq!(json, format!("\"{s}\""));
            let back: MemberId = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, member);
        }
    }

    #[test]
    fn member_id_rejections() {
        let f = fp(1).to_string();
        let unknown = MemberId::parse(&format!("XYZ::a::{f}"));
        let msg = unknown.map_err(|e| e.to_string()).expect_err("rejected");
        assert_eq!(
            msg,
            "unknown member role prefix \"XYZ\" (valid prefixes: PAR, MED, SEQ, DOM)"
        );
        let unknown_role = |prefix: &str| IdError::UnknownRole {
            prefix: prefix.into(),
        };
        let missing_separator = IdError::MissingSeparator {
            expected: "ROLE::name::fingerprint",
        };
        let mut non_hex = f.clone();
        non_hex.replace_range(20..21, "z");
        assert_rejections(
            MemberId::parse,
            &[
                (format!("XYZ::a::{f}"), unknown_role("XYZ")),
                // Prefixes are case-sensitive.
                (format!("par::a::{f}"), unknown_role("par")),
                // A unique id without a role is an unknown role named after the name.
                (format!("alice::{f}"), unknown_role("alice")),
                // Missing fingerprint, with and without the trailing separator.
                ("PAR::alice".into(), missing_separator.clone()),
                ("PAR::alice::".into(), IdError::EmptyFingerprint),
                ("PAR".into(), missing_separator),
                // Wrong-length fingerprint.
                (
                    format!("PAR::alice::{}", &f[..67]),
                    IdError::FingerprintLength { len: 67 },
                ),
                // Non-hex fingerprint.
                (
                    format!("PAR::alice::{non_hex}"),
                    IdError::FingerprintNotHex {
                        ch: 'z',
                        position: 20,
                    },
                ),
                // Bad fingerprint prefix.
                (
                    format!("PAR::alice::1221{}", &f[4..]),
                    IdError::FingerprintPrefix {
                        found: "1221".into(),
                    },
                ),
                // Bad name character.
                (
                    format!("PAR::ali/ce::{f}"),
                    IdError::InvalidNameChar {
                        ch: '/',
                        position: 3,
                    },
                ),
                (format!("PAR::::{f}"), IdError::EmptyName),
            ],
        );
        // Serde surfaces the parse error.
        let err =
            serde_json::from_str::<MemberId>(&format!("\"XYZ::a::{f}\"")).expect_err("rejected");
        assert!(
            err.to_string()
                .contains("unknown member role prefix \"XYZ\"")
        );
    }

    #[test]
    fn unknown_prefix_is_truncated_in_error() {
        let long = "X".repeat(100);
        match MemberId::parse(&format!("{long}::a::{}", fp(1))) {
            Err(IdError::UnknownRole { prefix }) => {
                assert_eq!(prefix, format!("{}…", "X".repeat(32)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn matches_key_compares_fingerprints() {
        let key = SigningKeyPair::generate();
        let other = SigningKeyPair::generate();
        let uid = UniqueId::new("alice", *key.fingerprint()).expect("valid");
        let member = MemberId::new(MemberRole::Participant, uid.clone());
        assert!(member.matches_key(key.public_key()));
        assert!(!member.matches_key(other.public_key()));

        let domain = DomainId::new(uid);
        assert!(domain.matches_key(key.public_key()));
        assert!(!domain.matches_key(other.public_key()));
    }

    #[test]
    fn domain_id_round_trip() {
        let s = format!("my-domain::{}", fp(3));
        let domain: DomainId = s.parse().expect("parse");
        assert_eq!(domain.to_string(), s);
        assert_eq!(domain.name(), "my-domain");
        assert_eq!(domain.fingerprint(), &fp(3));
        assert_eq!(format!("{domain:?}"), format!("DomainId({s})"));
        let json = serde_json::to_string(&domain).expect("serialize");
        assert_eq!(
            serde_json::from_str::<DomainId>(&json).expect("deserialize"),
            domain
        );
        // A member id is not a domain id.
        assert!(DomainId::parse(&format!("DOM::my-domain::{}", fp(3))).is_err());
    }

    #[test]
    fn id_error_messages() {
        let f = fp(1).to_string();
        let msg = |r: Result<MemberId, IdError>| r.map_err(|e| e.to_string()).expect_err("error");
        assert_eq!(
            msg(MemberId::parse("PAR::alice")),
            "missing `::` separator (expected `ROLE::name::fingerprint`)"
        );
        assert_eq!(
            msg(MemberId::parse(&format!("PAR::::{f}"))),
            "name is empty (expected 1 to 185 characters of A-Z a-z 0-9 _ . -)"
        );
        assert_eq!(
            msg(MemberId::parse(&format!("PAR::a$b::{f}"))),
            "name has invalid character '$' at position 1 (allowed: A-Z a-z 0-9 _ . -)"
        );
        assert_eq!(
            msg(MemberId::parse("PAR::a::")),
            "missing fingerprint (expected \"1220\" followed by 64 lowercase hex characters)"
        );
    }

    #[test]
    fn one_parser_for_participant_ids() {
        let full = format!("PAR::alice::{FP}");
        let (id, bare) = MemberId::parse_participant(&full, false).expect("full id");
        assert_eq!((id.to_string(), bare), (full.clone(), false));
        let (id, bare) =
            MemberId::parse_participant(&format!(" alice::{FP} "), true).expect("bare id");
        assert_eq!((id.to_string(), bare), (full, true));
        assert!(MemberId::parse_participant(&format!("alice::{FP}"), false).is_err());
        let err =
            MemberId::parse_participant(&format!("MED::m::{FP}"), true).expect_err("a mediator id");
        assert_eq!(
            err.to_string(),
            "this is a mediator id (MED::…), not a participant id (PAR::name::1220…)"
        );
        assert!(MemberId::parse_participant("garbage", true).is_err());
    }
}
