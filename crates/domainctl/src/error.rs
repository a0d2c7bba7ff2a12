//! Errors of a `domainctl` run and the exit code each one maps to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the domain manager refused the request (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED, …), or an unexpected local failure (cannot start the runtime, cannot write the output) |
//! | 2 | usage or invalid input, detected before any network call: bad flags, an invalid participant id or endpoint URL, unusable TLS files |
//! | 3 | no domain-manager replica could serve the call: all unreachable, passive, or timed out |

use std::fmt;

use tonic::{Code, Status};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the server refused the request (or an unexpected local failure).
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: usage error or invalid input; nothing was sent. Same code clap uses.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no domain-manager replica reachable, all passive, or all timed out.
pub const EXIT_UNAVAILABLE: u8 = 3;

pub use domain_proto::error::{
    ACTIVE_REPLICA_HEADER as ACTIVE_REPLICA_KEY, ERROR_CODE_HEADER as ERROR_CODE_KEY,
};
/// `domain-error-code` of a passive replica refusing a write.
pub const DM_NOT_ACTIVE: &str = "DM_NOT_ACTIVE";

/// Why a `domainctl` run failed. [`CliError::exit_code`] gives the process exit code and
/// `Display` the `error: …` line(s) for stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid input found locally; nothing was sent.
    #[error("error: {0}")]
    Usage(String),
    /// A TLS file given with `--ca`/`--cert`/`--key` cannot be used.
    #[error("error: {0}")]
    Tls(#[from] domain_tls::TlsError),
    /// A replica answered with a definitive error.
    #[error("error: {0}")]
    Refused(ServerError),
    /// Every endpoint was tried and none could serve the call.
    #[error("{}", unavailable_message(.0))]
    Unavailable(Vec<FailedAttempt>),
    /// A local failure unrelated to input or servers.
    #[error("error: {0}")]
    Local(String),
}

impl CliError {
    /// The process exit code for this error (see the module docs).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Tls(_) => EXIT_USAGE,
            CliError::Refused(_) | CliError::Local(_) => EXIT_REFUSED,
            CliError::Unavailable(_) => EXIT_UNAVAILABLE,
        }
    }
}

/// One endpoint that could not serve a call, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// The endpoint URL as tried.
    pub endpoint: String,
    /// Human-readable reason (connect error, timeout, `UNAVAILABLE: … [DM_NOT_ACTIVE]`, …).
    pub reason: String,
}

fn unavailable_message(attempts: &[FailedAttempt]) -> String {
    let mut out = String::from("error: no domain-manager replica could serve the request");
    if attempts.is_empty() {
        out.push_str(" (no endpoint given)");
    }
    for attempt in attempts {
        out.push_str(&format!("\n  {}: {}", attempt.endpoint, attempt.reason));
    }
    out
}

/// A gRPC error answered by a server, with its `domain-error-code` if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The gRPC status code.
    pub code: Code,
    /// The status message, with control characters escaped.
    pub message: String,
    /// The `domain-error-code` metadata value, when present.
    pub domain_code: Option<String>,
}

impl ServerError {
    /// Extracts code, message and `domain-error-code` from a status.
    #[must_use]
    pub fn from_status(status: &Status) -> Self {
        Self {
            code: status.code(),
            message: sanitize(status.message()),
            domain_code: metadata_str(status, ERROR_CODE_KEY).map(sanitize),
        }
    }
}

impl fmt::Display for ServerError {
    /// `<GRPC_CODE_NAME>: <message> [<domain-error-code>]`, brackets only when a code is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", code_name(self.code), self.message)?;
        if let Some(code) = &self.domain_code {
            write!(f, " [{code}]")?;
        }
        Ok(())
    }
}

/// A metadata value as text; `None` when absent or not visible ASCII.
pub(crate) fn metadata_str<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status
        .metadata()
        .get(key)
        .and_then(|value| value.to_str().ok())
}

/// The canonical gRPC name of a status code (`INVALID_ARGUMENT`, …), as in the gRPC spec and
/// other tools' output, rather than tonic's English description.
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Escapes control characters in text that came from a peer, so a hostile or broken server
/// cannot send terminal escape sequences or fake extra output lines.
#[must_use]
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The `source()` chain of an error joined with `: `, skipping repeats, because tonic's
/// transport errors say only "transport error" at the top and the cause is further down.
#[must_use]
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    sanitize(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_code(code: Code, message: &str, domain_code: &str) -> Status {
        let mut status = Status::new(code, message);
        status.metadata_mut().insert(
            ERROR_CODE_KEY,
            domain_code.parse().expect("ascii metadata value"),
        );
        status
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        let tls = domain_tls::TlsError::Settings("x");
        assert_eq!(CliError::from(tls).exit_code(), 2);
        let refused = ServerError::from_status(&Status::not_found("no such participant"));
        assert_eq!(CliError::Refused(refused).exit_code(), 1);
        assert_eq!(CliError::Local("x".into()).exit_code(), 1);
        assert_eq!(CliError::Unavailable(Vec::new()).exit_code(), 3);
    }

    #[test]
    fn server_error_format() {
        let status = status_with_code(
            Code::FailedPrecondition,
            "participant is disabled",
            "DM_PARTICIPANT_DISABLED",
        );
        let error = CliError::Refused(ServerError::from_status(&status));
        assert_eq!(
            error.to_string(),
            "error: FAILED_PRECONDITION: participant is disabled [DM_PARTICIPANT_DISABLED]"
        );
        let plain = ServerError::from_status(&Status::invalid_argument("bad"));
        assert_eq!(plain.to_string(), "INVALID_ARGUMENT: bad");
    }

    #[test]
    fn server_text_is_sanitized() {
        let status = Status::internal("line1\n\u{1b}[31mred");
        assert_eq!(
            ServerError::from_status(&status).to_string(),
            "INTERNAL: line1\\n\\u{1b}[31mred"
        );
    }

    #[test]
    fn unavailable_lists_every_endpoint() {
        let error = CliError::Unavailable(vec![
            FailedAttempt {
                endpoint: "http://a:1".into(),
                reason: "cannot connect: connection refused".into(),
            },
            FailedAttempt {
                endpoint: "http://b:1".into(),
                reason: "UNAVAILABLE: passive [DM_NOT_ACTIVE]".into(),
            },
        ]);
        assert_eq!(
            error.to_string(),
            "error: no domain-manager replica could serve the request\n  \
             http://a:1: cannot connect: connection refused\n  \
             http://b:1: UNAVAILABLE: passive [DM_NOT_ACTIVE]"
        );
    }

    #[test]
    fn error_chain_skips_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&io), "refused");
    }
}
