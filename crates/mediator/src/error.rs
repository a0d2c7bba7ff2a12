//! The mediator's closed set of admin API errors, mapped to gRPC status in one
//! place ([`MediatorError::into_status`]). Codes are listed in docs/mediator.md.

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_METADATA: &str = "domain-error-code";

#[derive(Debug, thiserror::Error)]
pub enum MediatorError {
    #[error("database unavailable: {0}")]
    Database(String),
}

impl MediatorError {
    /// Stable, documented code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            MediatorError::Database(_) => "MED_DATABASE_UNAVAILABLE",
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self {
            MediatorError::Database(_) => Code::Unavailable,
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

impl From<MediatorError> for Status {
    fn from(e: MediatorError) -> Self {
        e.into_status()
    }
}
