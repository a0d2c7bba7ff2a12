//! The participant admin API's closed set of errors, mapped to gRPC status in one place.
//! Codes are listed in docs/participant.md.

pub use domain_proto::error::ServiceError;
use tonic::{Code, Status};

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

impl ServiceError for ParticipantError {
    const CODES: &'static [&'static str] = &[
        "PAR_INVALID_ARGUMENT",
        "PAR_NOT_CONNECTED",
        "PAR_NO_MEDIATOR",
        "PAR_CONNECT_FAILED",
        "PAR_DOMAIN_MISMATCH",
        "PAR_SEND_FAILED",
        "PAR_PING_TIMEOUT",
        "PAR_DATABASE_UNAVAILABLE",
        "PAR_INTERNAL",
    ];

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "PAR_INVALID_ARGUMENT",
            Self::NotConnected(_) => "PAR_NOT_CONNECTED",
            Self::NoMediator => "PAR_NO_MEDIATOR",
            Self::ConnectFailed(_) => "PAR_CONNECT_FAILED",
            Self::DomainMismatch(_) => "PAR_DOMAIN_MISMATCH",
            Self::SendFailed(_) => "PAR_SEND_FAILED",
            Self::PingTimeout(_) => "PAR_PING_TIMEOUT",
            Self::Database(_) => "PAR_DATABASE_UNAVAILABLE",
            Self::Internal(_) => "PAR_INTERNAL",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotConnected(_) | Self::ConnectFailed(_) | Self::Database(_) => Code::Unavailable,
            Self::SendFailed(_) => Code::Unavailable,
            Self::NoMediator | Self::DomainMismatch(_) => Code::FailedPrecondition,
            Self::PingTimeout(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ParticipantError> for Status {
    fn from(e: ParticipantError) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod contract_tests {
    use super::*;

    /// docs/errors.md lists exactly the codes this service defines.
    #[test]
    fn docs_list_every_code() {
        let docs = include_str!("../../../docs/errors.md");
        domain_proto::error::check_documented::<ParticipantError>(docs, "PAR_")
            .unwrap_or_else(|e| panic!("docs/errors.md: {e}"));
    }
}
