//! The mediator's closed set of admin API errors, under the one error contract
//! ([`domain_proto::error::ServiceError`]). Codes are listed in docs/errors.md (a test
//! checks it).

pub use domain_proto::error::ServiceError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum MediatorError {
    #[error("database unavailable: {0}")]
    Database(String),
}

impl ServiceError for MediatorError {
    const CODES: &'static [&'static str] = &["MED_DATABASE_UNAVAILABLE"];

    fn code(&self) -> &'static str {
        match self {
            MediatorError::Database(_) => "MED_DATABASE_UNAVAILABLE",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            MediatorError::Database(_) => Code::Unavailable,
        }
    }
}

impl From<MediatorError> for Status {
    fn from(e: MediatorError) -> Self {
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
        domain_proto::error::check_documented::<MediatorError>(docs, "MED_")
            .unwrap_or_else(|e| panic!("docs/errors.md: {e}"));
    }
}
