//! The participant admin API's closed set of errors, mapped to gRPC status in one place.
//! Codes are listed in docs/participant.md.

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_METADATA: &str = "domain-error-code";

#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("not connected to a domain: {0}")]
    NotConnected(String),
    #[error(
        "no mediator known: the participant has seen no mediator registration in its event stream; reconnect with `participant connect-multi … --mediator MED::…`"
    )]
    NoMediator,
    #[error("{0}")]
    ConnectFailed(String),
    #[error("{0}")]
    DomainMismatch(String),
    #[error("the request could not be sequenced: {0}")]
    SendFailed(String),
    #[error("no verdict within {0:?}")]
    PingTimeout(std::time::Duration),
    #[error("database unavailable: {0}")]
    Database(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ParticipantError {
    /// Stable, documented code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "PAR_INVALID_ARGUMENT",
            Self::NotConnected(_) => "PAR_NOT_CONNECTED",
            Self::NoMediator => "PAR_NO_MEDIATOR",
            Self::ConnectFailed(_) => "PAR_CONNECT_FAILED",
            Self::DomainMismatch(_) => "PAR_DOMAIN_MISMATCH",
            Self::SendFailed(_) => "PAR_SEND_FAILED",
            Self::PingTimeout(_) => "PAR_PING_TIMEOUT",
            Self::Database(_) => "PAR_DATABASE",
            Self::Internal(_) => "PAR_INTERNAL",
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotConnected(_) | Self::ConnectFailed(_) | Self::Database(_) => Code::Unavailable,
            Self::SendFailed(_) => Code::Unavailable,
            Self::NoMediator | Self::DomainMismatch(_) => Code::FailedPrecondition,
            Self::PingTimeout(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// Converts the error into the status sent to the peer, with the code in metadata.
    pub fn into_status(self) -> Status {
        let mut status = Status::new(self.grpc_code(), self.to_string());
        if let Ok(v) = MetadataValue::try_from(self.code()) {
            status.metadata_mut().insert(ERROR_CODE_METADATA, v);
        }
        status
    }
}

impl From<ParticipantError> for Status {
    fn from(e: ParticipantError) -> Self {
        e.into_status()
    }
}
