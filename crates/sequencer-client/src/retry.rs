//! Which failures are worth another attempt, and whether they say the endpoint is down.
//!
//! Follows `docs/errors.md`: a send is retried (with the same message id and the same signed
//! bytes, which the sequencer deduplicates) after `UNAVAILABLE` (`SEQ_INSTANCE_OFFLINE`,
//! `SEQ_OUTCOME_UNKNOWN`, `SEQ_DATABASE_UNAVAILABLE`, transport errors), `SEQ_OVERLOADED`,
//! `DEADLINE_EXCEEDED` (no answer in time) and the codes transport failures surface as
//! (`UNKNOWN`, `CANCELLED`, `ABORTED`, `INTERNAL` without a `domain-error-code`). Every other
//! answer is definitive and returned at once. `UNAUTHENTICATED` with `SEQ_TOKEN_INVALID` or
//! `SEQ_MISSING_CREDENTIALS` asks for one re-authentication, then a retry.

use tonic::{Code, Status};

use crate::ClientError;

pub use domain_proto::error::error_code;

/// What to do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Return the error to the caller.
    Definitive,
    /// Try again (on another endpoint if there is one). `endpoint_down` says the endpoint
    /// itself failed (transport error, UNAVAILABLE, no answer) and should be marked unhealthy
    /// until its health check passes again.
    Retry { endpoint_down: bool },
    /// The token was refused: authenticate again, then retry.
    Reauthenticate,
}

/// Classifies a status returned by a sequencer call (or synthesized for a timeout).
pub fn classify_status(status: &Status) -> RetryClass {
    let code = error_code(status);
    match status.code() {
        Code::Ok => RetryClass::Definitive,
        Code::Unavailable | Code::DeadlineExceeded => RetryClass::Retry {
            endpoint_down: true,
        },
        // SEQ_OVERLOADED, SEQ_SUBSCRIBER_TOO_SLOW: the instance works, it is just busy.
        // SEQ_REQUEST_TOO_LARGE will never pass anywhere.
        Code::ResourceExhausted => match code {
            Some("SEQ_REQUEST_TOO_LARGE") => RetryClass::Definitive,
            _ => RetryClass::Retry {
                endpoint_down: false,
            },
        },
        // Transport failures (reset streams, broken connections) surface as these codes
        // without a domain error code; SEQ_INTERNAL is a server bug and definitive.
        Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal => match code {
            None => RetryClass::Retry {
                endpoint_down: true,
            },
            Some(_) => RetryClass::Definitive,
        },
        Code::Unauthenticated => match code {
            Some("SEQ_TOKEN_INVALID") | Some("SEQ_MISSING_CREDENTIALS") => {
                RetryClass::Reauthenticate
            }
            _ => RetryClass::Definitive,
        },
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss => RetryClass::Definitive,
    }
}

/// Classifies any client error: statuses as [`classify_status`]; failures to reach an
/// endpoint are retryable; everything else (bad events, forks, configuration) is definitive.
pub fn classify(error: &ClientError) -> RetryClass {
    match error {
        ClientError::Status(st) => classify_status(st),
        ClientError::Connect { .. } => RetryClass::Retry {
            endpoint_down: true,
        },
        _ => RetryClass::Definitive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_code(code: Code, domain_code: &str) -> Status {
        let mut st = Status::new(code, "x");
        st.metadata_mut().insert(
            domain_proto::error::ERROR_CODE_HEADER,
            domain_code.parse().expect("ascii metadata"),
        );
        st
    }

    const DOWN: RetryClass = RetryClass::Retry {
        endpoint_down: true,
    };
    const BUSY: RetryClass = RetryClass::Retry {
        endpoint_down: false,
    };

    /// Every domain error code a sequencer sends, with the class a client gives it.
    #[test]
    fn sequencer_codes() {
        use RetryClass::{Definitive, Reauthenticate};
        use tonic::Code::*;
        #[rustfmt::skip]
        let table = [
            (Unavailable, "SEQ_INSTANCE_OFFLINE", DOWN),
            (Unavailable, "SEQ_OUTCOME_UNKNOWN", DOWN),
            (Unavailable, "SEQ_DATABASE_UNAVAILABLE", DOWN),
            (ResourceExhausted, "SEQ_OVERLOADED", BUSY),
            (ResourceExhausted, "SEQ_SUBSCRIBER_TOO_SLOW", BUSY),
            (InvalidArgument, "SEQ_MALFORMED_REQUEST", Definitive),
            (InvalidArgument, "SEQ_SUBMISSION_SIGNATURE_INVALID", Definitive),
            (InvalidArgument, "SEQ_RECIPIENT_UNKNOWN", Definitive),
            (PermissionDenied, "SEQ_MEMBER_DISABLED", Definitive),
            (PermissionDenied, "SEQ_MEMBER_UNKNOWN", Definitive),
            (FailedPrecondition, "SEQ_MAX_SEQUENCING_TIME_EXCEEDED", Definitive),
            (FailedPrecondition, "SEQ_RECIPIENT_DISABLED", Definitive),
            (ResourceExhausted, "SEQ_REQUEST_TOO_LARGE", Definitive),
            (OutOfRange, "SEQ_EVENTS_PRUNED", Definitive),
            (Internal, "SEQ_INTERNAL", Definitive),
            (Unauthenticated, "SEQ_KEY_MISMATCH", Definitive),
            (Unauthenticated, "SEQ_CHALLENGE_SIGNATURE_INVALID", Definitive),
            // Token problems: authenticate again, then retry.
            (Unauthenticated, "SEQ_TOKEN_INVALID", Reauthenticate),
            (Unauthenticated, "SEQ_MISSING_CREDENTIALS", Reauthenticate),
        ];
        for (code, domain, class) in table {
            assert_eq!(classify_status(&with_code(code, domain)), class, "{domain}");
        }
    }

    /// Statuses without a domain code: transport failures and our own timeouts are
    /// retried elsewhere; anything else is final.
    #[test]
    fn plain_statuses() {
        for (st, class) in [
            (Status::unavailable("tcp connect error"), DOWN),
            (Status::deadline_exceeded("no answer"), DOWN),
            (Status::unknown("h2 protocol error"), DOWN),
            (Status::cancelled("stream reset"), DOWN),
            (Status::internal("h2: connection reset"), DOWN),
            (Status::invalid_argument("bad"), RetryClass::Definitive),
            (
                Status::out_of_range("decoded message length too large"),
                RetryClass::Definitive,
            ),
        ] {
            assert_eq!(classify_status(&st), class, "{st:?}");
        }
    }

    #[test]
    fn client_errors() {
        assert_eq!(
            classify(&ClientError::Connect {
                endpoint: "https://a:1".into(),
                reason: "refused".into()
            }),
            RetryClass::Retry {
                endpoint_down: true
            }
        );
        assert_eq!(
            classify(&ClientError::InvalidEvent("gap".into())),
            RetryClass::Definitive
        );
    }
}
