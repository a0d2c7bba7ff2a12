//! The public ids of a new domain, derived from its keys exactly as the components derive
//! them (`domain_manager::domain_id_of_key_file`, `domain_mediator::mediator_id`), written
//! as one file per id.
//!
//! Why a binary of its own: the component images have no shell, and the components print
//! the ids only on stdout (`domain-manager init`, `mediator generate-key`), which a
//! Kubernetes container cannot redirect into a file. The bootstrap Job
//! (deploy/k8s/base/bootstrap-job.yaml) runs this after generating the keys and hands the
//! files to `kubectl create configmap domain-identity --from-file=…`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use domain_identity::{DomainId, MemberId, SigningKeyPair};

/// The file names written into the output directory, which are also the keys of the
/// `domain-identity` ConfigMap the services read.
pub const FILES: [&str; 3] = ["domain-name", "domain-id", "mediator-id"];

/// What can go wrong; every variant names the input or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The domain name is not a valid id name, or the namespace key cannot be read.
    #[error("--namespace-key {path}: {source}")]
    Namespace {
        path: PathBuf,
        source: domain_manager::KeyFileError,
    },
    /// The mediator key cannot be read.
    #[error("--mediator-key {path}: {source}")]
    MediatorKey {
        path: PathBuf,
        source: domain_identity::KeyError,
    },
    /// The mediator name is not a valid id name.
    #[error("--mediator-name {name:?}: {reason}")]
    MediatorName { name: String, reason: String },
    /// An output file could not be created (it exists already, or the directory is not
    /// writable). Nothing is ever overwritten.
    #[error("cannot create {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl BootstrapError {
    /// True when the operator's input is invalid (exit code 64), not the environment.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BootstrapError::Namespace {
                source: domain_manager::KeyFileError::DomainName { .. },
                ..
            } | BootstrapError::MediatorName { .. }
        )
    }
}

/// A domain's public ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub domain_name: String,
    pub domain_id: DomainId,
    pub mediator_id: MemberId,
}

impl Identity {
    /// The ids of the domain `domain_name` under the namespace key at `namespace_key`, with
    /// the mediator `mediator_name` signing with the key at `mediator_key`.
    pub fn of_keys(
        namespace_key: &Path,
        domain_name: &str,
        mediator_key: &Path,
        mediator_name: &str,
    ) -> Result<Self, BootstrapError> {
        let domain_id = domain_manager::domain_id_of_key_file(namespace_key, domain_name).map_err(
            |source| BootstrapError::Namespace {
                path: namespace_key.to_owned(),
                source,
            },
        )?;
        let key = SigningKeyPair::load_pem(mediator_key).map_err(|source| {
            BootstrapError::MediatorKey {
                path: mediator_key.to_owned(),
                source,
            }
        })?;
        let mediator_id = domain_mediator::mediator_id(mediator_name, &key).map_err(|e| {
            BootstrapError::MediatorName {
                name: mediator_name.to_owned(),
                reason: format!("{e:#}"),
            }
        })?;
        Ok(Self {
            domain_name: domain_name.to_owned(),
            domain_id,
            mediator_id,
        })
    }

    /// `(file name, value)` in [`FILES`] order.
    pub fn entries(&self) -> [(&'static str, String); 3] {
        [
            (FILES[0], self.domain_name.clone()),
            (FILES[1], self.domain_id.to_string()),
            (FILES[2], self.mediator_id.to_string()),
        ]
    }

    /// Writes one file per id into `dir` (created if missing). No trailing newline: a
    /// ConfigMap value from `--from-file` is the file's bytes, and an environment variable
    /// from `configMapKeyRef` would carry the newline into the id. Refuses to overwrite an
    /// existing file.
    pub fn write(&self, dir: &Path) -> Result<(), BootstrapError> {
        std::fs::create_dir_all(dir).map_err(|source| BootstrapError::Write {
            path: dir.to_owned(),
            source,
        })?;
        // All or nothing for the operator's mistake of pointing --out at an old directory.
        for name in FILES {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok() {
                return Err(BootstrapError::Write {
                    path,
                    source: std::io::ErrorKind::AlreadyExists.into(),
                });
            }
        }
        for (name, value) in self.entries() {
            let path = dir.join(name);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|source| BootstrapError::Write {
                    path: path.clone(),
                    source,
                })?;
            file.write_all(value.as_bytes())
                .map_err(|source| BootstrapError::Write { path, source })?;
        }
        Ok(())
    }
}
