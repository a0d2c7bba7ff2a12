//! The domain manager's closed set of service errors, mapped to gRPC status in
//! exactly one place ([`DomainManagerError::into_status`]). docs/domain-manager.md
//! lists every code; renaming one is a breaking change.

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_METADATA: &str = "domain-error-code";

/// Metadata key a passive replica uses to name the active one's admin address (may be
/// empty when unknown).
pub const ACTIVE_REPLICA_METADATA: &str = "domain-active-replica";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainManagerError {
    /// This replica is not the active one (or lost the lease while handling the call).
    #[error("{}", not_active_message(.holder.as_deref(), .address.as_deref()))]
    NotActive {
        /// Holder id of the active replica, when known.
        holder: Option<String>,
        /// Admin address of the active replica, when known.
        address: Option<String>,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("participant {0} is not known to this domain")]
    UnknownParticipant(String),
    #[error("no sequencer could sequence the topology transaction: {0}")]
    SequencerUnavailable(String),
    #[error("database unavailable: {0}")]
    Database(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// `ExportConnection` without `[connection]` in the configuration (or without a
    /// registered sequencer to describe).
    #[error("no connection bundle can be exported: {0}")]
    ConnectionNotConfigured(String),
}

fn not_active_message(holder: Option<&str>, address: Option<&str>) -> String {
    match (holder, address) {
        (Some(h), Some(a)) => {
            format!("this domain-manager replica is passive; the active replica is {h} at {a}")
        }
        (Some(h), None) => format!(
            "this domain-manager replica is passive; the active replica is {h} (address unknown)"
        ),
        (None, Some(a)) => {
            format!("this domain-manager replica is passive; the active replica is at {a}")
        }
        (None, None) => {
            "this domain-manager replica is passive and no active replica is known; retry shortly"
                .to_owned()
        }
    }
}

impl DomainManagerError {
    /// Stable, documented code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotActive { .. } => "DM_NOT_ACTIVE",
            Self::InvalidArgument(_) => "DM_INVALID_ARGUMENT",
            Self::UnknownParticipant(_) => "DM_UNKNOWN_PARTICIPANT",
            Self::SequencerUnavailable(_) => "DM_SEQUENCER_UNAVAILABLE",
            Self::Database(_) => "DM_DATABASE",
            Self::Internal(_) => "DM_INTERNAL",
            Self::ConnectionNotConfigured(_) => "DM_CONNECTION_NOT_CONFIGURED",
        }
    }

    /// gRPC status code of the error.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::NotActive { .. } | Self::SequencerUnavailable(_) | Self::Database(_) => {
                Code::Unavailable
            }
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::UnknownParticipant(_) => Code::NotFound,
            Self::Internal(_) => Code::Internal,
            Self::ConnectionNotConfigured(_) => Code::FailedPrecondition,
        }
    }

    /// Converts the error into the status sent to the peer, with the code (and, for
    /// `DM_NOT_ACTIVE`, the active replica's address) in metadata.
    pub fn into_status(self) -> Status {
        let mut status = Status::new(self.grpc_code(), self.to_string());
        status
            .metadata_mut()
            .insert(ERROR_CODE_METADATA, MetadataValue::from_static(self.code()));
        if let Self::NotActive { address, .. } = &self {
            let value = address
                .as_deref()
                .and_then(|a| MetadataValue::try_from(a).ok())
                .unwrap_or_else(|| MetadataValue::from_static(""));
            status.metadata_mut().insert(ACTIVE_REPLICA_METADATA, value);
        }
        status
    }
}

impl From<DomainManagerError> for Status {
    fn from(e: DomainManagerError) -> Self {
        e.into_status()
    }
}

impl From<domain_lease::LeaseError> for DomainManagerError {
    fn from(e: domain_lease::LeaseError) -> Self {
        if e.is_fenced() {
            Self::NotActive {
                holder: None,
                address: None,
            }
        } else {
            Self::Database(e.to_string())
        }
    }
}

impl From<tokio_postgres::Error> for DomainManagerError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Database(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for DomainManagerError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Database(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
        status.metadata().get(key).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn every_error_maps_to_its_code_and_status() {
        let cases = [
            (
                DomainManagerError::NotActive {
                    holder: None,
                    address: None,
                },
                "DM_NOT_ACTIVE",
                Code::Unavailable,
            ),
            (
                DomainManagerError::InvalidArgument("x".into()),
                "DM_INVALID_ARGUMENT",
                Code::InvalidArgument,
            ),
            (
                DomainManagerError::UnknownParticipant("PAR::a::1220".into()),
                "DM_UNKNOWN_PARTICIPANT",
                Code::NotFound,
            ),
            (
                DomainManagerError::SequencerUnavailable("x".into()),
                "DM_SEQUENCER_UNAVAILABLE",
                Code::Unavailable,
            ),
            (
                DomainManagerError::Database("x".into()),
                "DM_DATABASE",
                Code::Unavailable,
            ),
            (
                DomainManagerError::Internal("x".into()),
                "DM_INTERNAL",
                Code::Internal,
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (error, code, grpc) in cases {
            assert!(seen.insert(code), "duplicate code {code}");
            assert_eq!(error.code(), code);
            let status = error.into_status();
            assert_eq!(status.code(), grpc, "{code}");
            assert_eq!(meta(&status, ERROR_CODE_METADATA), Some(code));
        }
    }

    #[test]
    fn not_active_names_the_active_replica() {
        let status = DomainManagerError::NotActive {
            holder: Some("domain-manager-host1-0a0b0c0d".into()),
            address: Some("https://dm-1.example:4402".into()),
        }
        .into_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            meta(&status, ACTIVE_REPLICA_METADATA),
            Some("https://dm-1.example:4402")
        );
        assert!(
            status.message().contains("domain-manager-host1-0a0b0c0d")
                && status.message().contains("https://dm-1.example:4402"),
            "{}",
            status.message()
        );

        let status = DomainManagerError::NotActive {
            holder: None,
            address: None,
        }
        .into_status();
        assert_eq!(meta(&status, ACTIVE_REPLICA_METADATA), Some(""));
        assert!(status.message().contains("no active replica is known"));
    }

    #[test]
    fn fenced_lease_error_is_not_active() {
        let e: DomainManagerError = domain_lease::LeaseError::Fenced {
            name: "domain-manager".into(),
            epoch: 3,
        }
        .into();
        assert_eq!(e.code(), "DM_NOT_ACTIVE");
    }
}
