//! The one error contract of every service and client.
//!
//! A failed call carries a gRPC status code, a human-readable message, and in the metadata
//! key [`ERROR_CODE_HEADER`] a stable code from docs/errors.md (`SEQ_…`, `MED_…`, `DM_…`,
//! `PAR_…`, `PROTO_…`). Operators search logs for the code; clients branch on it. Each service
//! has one closed error enum implementing [`ServiceError`]; [`ServiceError::to_status`] is the
//! only place a status with a code is built, and [`error_code`] the only place one is read.

use std::collections::BTreeSet;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// gRPC metadata key carrying the stable error code of a failed call.
pub const ERROR_CODE_HEADER: &str = "domain-error-code";

/// gRPC metadata key a passive replica (domain manager) uses to name the active one's admin
/// address on `DM_NOT_ACTIVE` (empty when unknown).
pub const ACTIVE_REPLICA_HEADER: &str = "domain-active-replica";

/// A service's closed set of errors.
pub trait ServiceError: std::fmt::Display {
    /// Every code the service can answer with. docs/errors.md lists exactly these (each
    /// service's tests check it), so the list there cannot drift from the code.
    const CODES: &'static [&'static str];

    /// The stable, documented code of this error.
    fn code(&self) -> &'static str;

    /// The gRPC status code sent with it.
    fn grpc_code(&self) -> Code;

    /// Whether the same request may succeed when retried (on this or another replica).
    fn retryable(&self) -> bool {
        is_retryable(self.grpc_code())
    }

    /// The status sent to the peer: gRPC code, message, and the code in metadata.
    fn to_status(&self) -> Status {
        status(self.grpc_code(), self.code(), self.to_string())
    }
}

/// A status with `code` in its metadata (for errors raised outside a service's enum, e.g. a
/// codec or a middleware layer).
pub fn status(grpc_code: Code, code: &'static str, message: impl Into<String>) -> Status {
    let mut status = Status::new(grpc_code, message);
    status
        .metadata_mut()
        .insert(ERROR_CODE_HEADER, MetadataValue::from_static(code));
    status
}

/// The stable error code of a status, if it carries one.
pub fn error_code(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_CODE_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// Whether a call that failed with `code` may succeed when retried: the service was
/// unavailable, busy, timed out or aborted the call. Everything else is the request's fault
/// or a bug, and retrying the same bytes gets the same answer.
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::DeadlineExceeded
    )
}

/// The codes with `prefix` (e.g. `SEQ_`) that a markdown document lists in the first column
/// of a table (`` | `SEQ_…` | ``): what each service's docs test compares with its
/// [`ServiceError::CODES`].
pub fn documented_codes(markdown: &str, prefix: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(code, _)| code))
        .filter(|code| code.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Compares a service's codes with what `markdown` documents; `Err` names the differences.
pub fn check_documented<E: ServiceError>(markdown: &str, prefix: &str) -> Result<(), String> {
    let documented = documented_codes(markdown, prefix);
    let defined: BTreeSet<String> = E::CODES.iter().map(|c| (*c).to_owned()).collect();
    if defined.len() != E::CODES.len() {
        return Err(format!("{prefix}: a code is listed twice in CODES"));
    }
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&defined).collect();
    if undocumented.is_empty() && stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{prefix}: defined but not documented: {undocumented:?}; documented but not defined: {stale:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Demo {
        Busy,
        Bad,
    }

    impl std::fmt::Display for Demo {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "demo {self:?}")
        }
    }

    impl ServiceError for Demo {
        const CODES: &'static [&'static str] = &["DEMO_BUSY", "DEMO_BAD"];
        fn code(&self) -> &'static str {
            match self {
                Demo::Busy => "DEMO_BUSY",
                Demo::Bad => "DEMO_BAD",
            }
        }
        fn grpc_code(&self) -> Code {
            match self {
                Demo::Busy => Code::ResourceExhausted,
                Demo::Bad => Code::InvalidArgument,
            }
        }
    }

    #[test]
    fn status_carries_code_and_message() {
        let st = Demo::Busy.to_status();
        assert_eq!(st.code(), Code::ResourceExhausted);
        assert_eq!(st.message(), "demo Busy");
        assert_eq!(error_code(&st), Some("DEMO_BUSY"));
        assert!(Demo::Busy.retryable());
        assert!(!Demo::Bad.retryable());
        assert_eq!(error_code(&Status::internal("x")), None);
    }

    #[test]
    fn docs_are_compared_both_ways() {
        let md = "| code | meaning |\n|---|---|\n| `DEMO_BUSY` | busy |\n| `DEMO_BAD` | bad |\n| `OTHER_X` | not ours |\n";
        assert_eq!(check_documented::<Demo>(md, "DEMO_"), Ok(()));
        let missing = "| `DEMO_BUSY` | busy |\n";
        assert!(
            check_documented::<Demo>(missing, "DEMO_")
                .expect_err("must differ")
                .contains("DEMO_BAD")
        );
        let stale = format!("{md}| `DEMO_GONE` | removed |\n");
        assert!(
            check_documented::<Demo>(&stale, "DEMO_")
                .expect_err("must differ")
                .contains("DEMO_GONE")
        );
    }
}
