//! The participant's identity on disk, in its data directory:
//!
//! | file                    | contents                                                   |
//! |-------------------------|------------------------------------------------------------|
//! | `participant-key.pem`   | the ed25519 signing key, PKCS#8 PEM, mode 0600             |
//! | `identity.toml`         | `name` and the resulting unique id `name::1220…`           |
//!
//! The unique id is `<name>::<fingerprint of the public key>`; on a domain the participant
//! is the member `PAR::<name>::<fingerprint>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use domain_identity::{MemberId, MemberRole, SigningKeyPair, UniqueId};
use serde::{Deserialize, Serialize};

/// Key file name inside the data directory.
pub const KEY_FILE: &str = "participant-key.pem";
/// Identity file name inside the data directory.
pub const IDENTITY_FILE: &str = "identity.toml";

/// Why an identity cannot be created or loaded; every message names the file or value.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid participant name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error(
        "no participant identity in {}: run `participant init --name <name> --data-dir {}` first",
        dir.display(),
        dir.display()
    )]
    NotInitialised { dir: PathBuf },
    #[error(
        "{} already holds participant {existing}; a participant cannot be renamed (use another --data-dir)",
        dir.display()
    )]
    NameMismatch { dir: PathBuf, existing: String },
    #[error("cannot create data directory {}: {error}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Key(#[from] domain_identity::KeyError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct IdentityFile {
    name: String,
    id: String,
}

/// A loaded identity: name, unique id, member id and signing key.
#[derive(Clone)]
pub struct Identity {
    pub uid: UniqueId,
    pub member: MemberId,
    pub key: Arc<SigningKeyPair>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("member", &self.member.to_string())
            .finish_non_exhaustive()
    }
}

impl Identity {
    fn from_key(name: &str, key: SigningKeyPair) -> Result<Self, IdentityError> {
        let uid =
            UniqueId::new(name, *key.fingerprint()).map_err(|e| IdentityError::InvalidName {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            member: MemberId::new(MemberRole::Participant, uid.clone()),
            uid,
            key: Arc::new(key),
        })
    }

    /// The name part of the id.
    pub fn name(&self) -> &str {
        self.uid.name()
    }
}

/// Creates the data directory, the key and the identity file, or loads them when they
/// exist (idempotent). Returns the identity and whether a new key was created.
pub fn init(dir: &Path, name: &str) -> Result<(Identity, bool), IdentityError> {
    UniqueId::validate_name(name).map_err(|e| IdentityError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    create_private_dir(dir)?;
    let key_path = dir.join(KEY_FILE);
    let id_path = dir.join(IDENTITY_FILE);
    if let Some(existing) = read_identity_file(&id_path)?
        && existing.name != name
    {
        return Err(IdentityError::NameMismatch {
            dir: dir.to_owned(),
            existing: existing.id,
        });
    }
    let (key, created) = if key_path.exists() {
        (SigningKeyPair::load_pem(&key_path)?, false)
    } else {
        let key = SigningKeyPair::generate();
        key.save_pem(&key_path)?;
        (key, true)
    };
    let identity = Identity::from_key(name, key)?;
    let file = IdentityFile {
        name: name.to_owned(),
        id: identity.uid.to_string(),
    };
    let text = toml::to_string_pretty(&file).map_err(|e| IdentityError::File {
        path: id_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomically(&id_path, text.as_bytes())?;
    Ok((identity, created))
}

/// Loads the identity created by [`init`].
pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
    let id_path = dir.join(IDENTITY_FILE);
    let key_path = dir.join(KEY_FILE);
    let Some(file) = read_identity_file(&id_path)? else {
        return Err(IdentityError::NotInitialised {
            dir: dir.to_owned(),
        });
    };
    if !key_path.exists() {
        return Err(IdentityError::NotInitialised {
            dir: dir.to_owned(),
        });
    }
    let identity = Identity::from_key(&file.name, SigningKeyPair::load_pem(&key_path)?)?;
    if identity.uid.to_string() != file.id {
        return Err(IdentityError::File {
            path: id_path,
            reason: format!(
                "records id {} but the key in {} gives {}",
                file.id,
                key_path.display(),
                identity.uid
            ),
        });
    }
    Ok(identity)
}

fn read_identity_file(path: &Path) -> Result<Option<IdentityFile>, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IdentityError::File {
                path: path.to_owned(),
                reason: format!("cannot read: {e}"),
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| IdentityError::File {
            path: path.to_owned(),
            reason: format!("invalid identity file: {e}"),
        })
}

/// Creates `dir` (and parents) with mode 0700 for the leaf when it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| IdentityError::CreateDir {
            dir: dir.to_owned(),
            error,
        })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see a
/// half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        IdentityError::File {
            path: path.to_owned(),
            reason: format!("cannot write: {e}"),
        }
    })
}

/// Parses a participant id given as `name::1220…` or `PAR::name::1220…`.
pub fn parse_participant_id(s: &str) -> Result<MemberId, String> {
    MemberId::parse_participant(s, true)
        .map(|(id, _)| id)
        .map_err(|e| {
            format!("{s:?} is not a participant id (`name::1220…` or `PAR::name::1220…`): {e}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn init_is_idempotent_and_refuses_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("alice");
        let (first, created) = init(&data, "alice").expect("init");
        assert!(created);
        assert!(first.uid.to_string().starts_with("alice::1220"));
        assert_eq!(first.member.to_string(), format!("PAR::{}", first.uid));
        let mode = std::fs::metadata(data.join(KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = init(&data, "alice").expect("init again");
        assert!(!created);
        assert_eq!(again.uid, first.uid);
        assert_eq!(load(&data).expect("load").uid, first.uid);
        let err = init(&data, "bob").expect_err("rename");
        assert!(err.to_string().contains("cannot be renamed"), "{err}");
        let err = init(&dir.path().join("x"), "a::b").expect_err("bad name");
        assert!(matches!(err, IdentityError::InvalidName { .. }));
        let err = load(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("participant init"), "{err}");
    }

    #[test]
    fn participant_ids_with_or_without_prefix() {
        let fp = format!("1220{}", "ab".repeat(32));
        let a = parse_participant_id(&format!("bob::{fp}")).expect("short");
        let b = parse_participant_id(&format!("PAR::bob::{fp}")).expect("long");
        assert_eq!(a, b);
        assert!(parse_participant_id(&format!("MED::m::{fp}")).is_err());
        assert!(parse_participant_id("bob").is_err());
    }
}
