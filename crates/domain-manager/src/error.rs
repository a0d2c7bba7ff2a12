//! The domain manager's closed set of service errors, mapped to gRPC status in
//! exactly one place ([`Status::from`]). docs/domain-manager.md
//! lists every code; renaming one is a breaking change.

pub use domain_proto::error::ServiceError;
use tonic::{Code, Status, metadata::MetadataValue};

pub use domain_proto::error::ACTIVE_REPLICA_HEADER as ACTIVE_REPLICA_METADATA;

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

impl ServiceError for DomainManagerError {
    const CODES: &'static [&'static str] = &[
        "DM_NOT_ACTIVE",
        "DM_INVALID_ARGUMENT",
        "DM_UNKNOWN_PARTICIPANT",
        "DM_SEQUENCER_UNAVAILABLE",
        "DM_DATABASE_UNAVAILABLE",
        "DM_INTERNAL",
        "DM_CONNECTION_NOT_CONFIGURED",
    ];

    fn code(&self) -> &'static str {
        match self {
            Self::NotActive { .. } => "DM_NOT_ACTIVE",
            Self::InvalidArgument(_) => "DM_INVALID_ARGUMENT",
            Self::UnknownParticipant(_) => "DM_UNKNOWN_PARTICIPANT",
            Self::SequencerUnavailable(_) => "DM_SEQUENCER_UNAVAILABLE",
            Self::Database(_) => "DM_DATABASE_UNAVAILABLE",
            Self::Internal(_) => "DM_INTERNAL",
            Self::ConnectionNotConfigured(_) => "DM_CONNECTION_NOT_CONFIGURED",
        }
    }

    fn grpc_code(&self) -> Code {
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

    /// The contract's status plus, for `DM_NOT_ACTIVE`, the active replica's address in
    /// metadata.
    fn to_status(&self) -> Status {
        let mut status =
            domain_proto::error::status(self.grpc_code(), self.code(), self.to_string());
        if let Self::NotActive { address, .. } = self {
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
        e.to_status()
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
                "DM_DATABASE_UNAVAILABLE",
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
            let status = error.to_status();
            assert_eq!(status.code(), grpc, "{code}");
            assert_eq!(domain_proto::error::error_code(&status), Some(code));
        }
    }

    /// docs/errors.md lists exactly the codes the domain manager defines.
    #[test]
    fn docs_list_every_code() {
        let docs = include_str!("../../../docs/errors.md");
        domain_proto::error::check_documented::<DomainManagerError>(docs, "DM_")
            .unwrap_or_else(|e| panic!("docs/errors.md: {e}"));
    }

    #[test]
    fn not_active_names_the_active_replica() {
        let status = DomainManagerError::NotActive {
            holder: Some("domain-manager-host1-0a0b0c0d".into()),
            address: Some("https://dm-1.example:4402".into()),
        }
        .to_status();
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
        .to_status();
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
