//! The sequencer's closed set of service errors, under the one error contract
//! ([`domain_proto::error::ServiceError`]). docs/errors.md lists every code (a test checks
//! it); renaming one is a breaking change.

use domain_identity::MemberId;
pub use domain_proto::error::ServiceError;
use domain_time::Timestamp;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    #[error("missing or malformed authorization metadata: {0}")]
    MissingCredentials(&'static str),
    #[error("token is unknown, expired or revoked")]
    TokenInvalid,
    #[error("nonce is unknown, expired, already used or issued to another member")]
    NonceInvalid,
    #[error("challenge signature does not verify: {0}")]
    ChallengeSignatureInvalid(String),
    #[error("public key fingerprint {key} does not match member {member}")]
    KeyMismatch { member: MemberId, key: String },
    #[error("member {0} is not registered on this domain")]
    MemberUnknown(String),
    #[error("member {0} is disabled")]
    MemberDisabled(String),
    #[error("authenticated as {authenticated} but the request is for {requested}")]
    MemberMismatch {
        authenticated: String,
        requested: String,
    },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("submission signature does not verify: {0}")]
    SubmissionSignatureInvalid(String),
    #[error("recipient {0} is not registered on this domain")]
    RecipientUnknown(String),
    #[error("recipient {0} is disabled")]
    RecipientDisabled(String),
    #[error("submission has no envelope with content")]
    EmptySubmission,
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
    #[error(
        "max sequencing time {max_sequencing_time} passed before sequencing (sequencer time {now})"
    )]
    MaxSequencingTimeExceeded {
        max_sequencing_time: Timestamp,
        now: Timestamp,
    },
    #[error("sequencer is overloaded, retry later with the same message id")]
    Overloaded,
    #[error("too many new participants registering on this instance; retry authentication shortly")]
    RegistrationRateLimited,
    #[error(
        "subscriber fell behind by more than its buffer and was disconnected; resume from counter {resume_from}"
    )]
    SubscriberTooSlow { resume_from: i64 },
    #[error(
        "member {member} already has {limit} subscriptions open on this instance (reader.max-subscriptions-per-member); close one or retry later"
    )]
    TooManySubscriptions { member: String, limit: usize },
    #[error(
        "counter {counter} lies below the pruning bound; the oldest retained counter is {oldest}"
    )]
    EventsPruned { counter: i64, oldest: i64 },
    #[error(
        "counter {counter} lies beyond this member's history (its next counter is {next}): the \
         database lost events the member received (an asynchronous standby promoted or a backup \
         restored)"
    )]
    CounterAhead { counter: i64, next: i64 },
    #[error(
        "the sender or a recipient was registered at {registered_ts}, further ahead of this instance's clock ({now}) than ha.max-clock-skew; retry later or through another instance"
    )]
    RegisteredAhead {
        registered_ts: Timestamp,
        now: Timestamp,
    },
    #[error("this sequencer instance is not online: {0}")]
    InstanceOffline(String),
    #[error("outcome unknown after a database failure; retry with the same message id")]
    OutcomeUnknown,
    #[error("topology transaction refused: {0}")]
    TopologyInvalid(String),
    #[error(
        "acknowledged timestamp {timestamp} lies above the safe watermark {safe_watermark}: no member can have processed it"
    )]
    AcknowledgeAhead {
        timestamp: Timestamp,
        safe_watermark: Timestamp,
    },
    #[error("pruning bound refused: {0}")]
    PruneBoundInvalid(String),
    #[error("another pruning run holds the pruning lock; retry shortly")]
    PruningBusy,
    #[error("database unavailable: {0}")]
    Database(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError for SequencerError {
    const CODES: &'static [&'static str] = &[
        "SEQ_MISSING_CREDENTIALS",
        "SEQ_TOKEN_INVALID",
        "SEQ_NONCE_INVALID",
        "SEQ_CHALLENGE_SIGNATURE_INVALID",
        "SEQ_KEY_MISMATCH",
        "SEQ_MEMBER_UNKNOWN",
        "SEQ_MEMBER_DISABLED",
        "SEQ_MEMBER_MISMATCH",
        "SEQ_MALFORMED_REQUEST",
        "SEQ_SUBMISSION_SIGNATURE_INVALID",
        "SEQ_RECIPIENT_UNKNOWN",
        "SEQ_RECIPIENT_DISABLED",
        "SEQ_EMPTY_SUBMISSION",
        "SEQ_REQUEST_TOO_LARGE",
        "SEQ_MAX_SEQUENCING_TIME_EXCEEDED",
        "SEQ_OVERLOADED",
        "SEQ_REGISTRATION_RATE_LIMITED",
        "SEQ_SUBSCRIBER_TOO_SLOW",
        "SEQ_TOO_MANY_SUBSCRIPTIONS",
        "SEQ_EVENTS_PRUNED",
        "SEQ_COUNTER_AHEAD",
        "SEQ_REGISTERED_AHEAD",
        "SEQ_INSTANCE_OFFLINE",
        "SEQ_OUTCOME_UNKNOWN",
        "SEQ_TOPOLOGY_INVALID",
        "SEQ_ACKNOWLEDGE_AHEAD",
        "SEQ_PRUNE_BOUND_INVALID",
        "SEQ_PRUNING_BUSY",
        "SEQ_DATABASE_UNAVAILABLE",
        "SEQ_INTERNAL",
    ];

    fn code(&self) -> &'static str {
        use SequencerError::*;
        match self {
            MissingCredentials(_) => "SEQ_MISSING_CREDENTIALS",
            TokenInvalid => "SEQ_TOKEN_INVALID",
            NonceInvalid => "SEQ_NONCE_INVALID",
            ChallengeSignatureInvalid(_) => "SEQ_CHALLENGE_SIGNATURE_INVALID",
            KeyMismatch { .. } => "SEQ_KEY_MISMATCH",
            MemberUnknown(_) => "SEQ_MEMBER_UNKNOWN",
            MemberDisabled(_) => "SEQ_MEMBER_DISABLED",
            MemberMismatch { .. } => "SEQ_MEMBER_MISMATCH",
            Malformed(_) => "SEQ_MALFORMED_REQUEST",
            SubmissionSignatureInvalid(_) => "SEQ_SUBMISSION_SIGNATURE_INVALID",
            RecipientUnknown(_) => "SEQ_RECIPIENT_UNKNOWN",
            RecipientDisabled(_) => "SEQ_RECIPIENT_DISABLED",
            EmptySubmission => "SEQ_EMPTY_SUBMISSION",
            RequestTooLarge { .. } => "SEQ_REQUEST_TOO_LARGE",
            MaxSequencingTimeExceeded { .. } => "SEQ_MAX_SEQUENCING_TIME_EXCEEDED",
            Overloaded => "SEQ_OVERLOADED",
            RegistrationRateLimited => "SEQ_REGISTRATION_RATE_LIMITED",
            SubscriberTooSlow { .. } => "SEQ_SUBSCRIBER_TOO_SLOW",
            TooManySubscriptions { .. } => "SEQ_TOO_MANY_SUBSCRIPTIONS",
            EventsPruned { .. } => "SEQ_EVENTS_PRUNED",
            CounterAhead { .. } => "SEQ_COUNTER_AHEAD",
            RegisteredAhead { .. } => "SEQ_REGISTERED_AHEAD",
            InstanceOffline(_) => "SEQ_INSTANCE_OFFLINE",
            OutcomeUnknown => "SEQ_OUTCOME_UNKNOWN",
            TopologyInvalid(_) => "SEQ_TOPOLOGY_INVALID",
            AcknowledgeAhead { .. } => "SEQ_ACKNOWLEDGE_AHEAD",
            PruneBoundInvalid(_) => "SEQ_PRUNE_BOUND_INVALID",
            PruningBusy => "SEQ_PRUNING_BUSY",
            Database(_) => "SEQ_DATABASE_UNAVAILABLE",
            Internal(_) => "SEQ_INTERNAL",
        }
    }

    fn grpc_code(&self) -> Code {
        use SequencerError::*;
        match self {
            MissingCredentials(_)
            | TokenInvalid
            | NonceInvalid
            | ChallengeSignatureInvalid(_)
            | KeyMismatch { .. } => Code::Unauthenticated,
            MemberUnknown(_) | MemberDisabled(_) | MemberMismatch { .. } => Code::PermissionDenied,
            Malformed(_)
            | SubmissionSignatureInvalid(_)
            | RecipientUnknown(_)
            | TopologyInvalid(_)
            | AcknowledgeAhead { .. }
            | PruneBoundInvalid(_)
            | EmptySubmission => Code::InvalidArgument,
            RecipientDisabled(_) | MaxSequencingTimeExceeded { .. } => Code::FailedPrecondition,
            RequestTooLarge { .. }
            | Overloaded
            | RegistrationRateLimited
            | SubscriberTooSlow { .. }
            | TooManySubscriptions { .. } => Code::ResourceExhausted,
            EventsPruned { .. } | CounterAhead { .. } => Code::OutOfRange,
            InstanceOffline(_) | OutcomeUnknown | RegisteredAhead { .. } | Database(_) => {
                Code::Unavailable
            }
            PruningBusy => Code::Aborted,
            Internal(_) => Code::Internal,
        }
    }
}

impl From<SequencerError> for Status {
    fn from(e: SequencerError) -> Self {
        e.to_status()
    }
}

impl From<crate::store::StoreError> for SequencerError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Fenced { .. } => {
                SequencerError::InstanceOffline(e.to_string())
            }
            other => SequencerError::Database(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_metadata() {
        let all = [
            SequencerError::TokenInvalid,
            SequencerError::NonceInvalid,
            SequencerError::EmptySubmission,
            SequencerError::Overloaded,
            SequencerError::RegistrationRateLimited,
            SequencerError::OutcomeUnknown,
            SequencerError::MemberUnknown("x".into()),
            SequencerError::RecipientUnknown("x".into()),
            SequencerError::SubscriberTooSlow { resume_from: 1 },
            SequencerError::CounterAhead {
                counter: 9,
                next: 4,
            },
            SequencerError::TooManySubscriptions {
                member: "x".into(),
                limit: 1,
            },
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            assert!(seen.insert(e.code()));
            assert!(
                SequencerError::CODES.contains(&e.code()),
                "{} not in CODES",
                e.code()
            );
            let st = e.to_status();
            assert_eq!(domain_proto::error::error_code(&st), Some(e.code()));
        }
    }

    /// docs/errors.md lists exactly the codes the sequencer defines.
    #[test]
    fn docs_list_every_code() {
        let docs = include_str!("../../../docs/errors.md");
        domain_proto::error::check_documented::<SequencerError>(docs, "SEQ_")
            .unwrap_or_else(|e| panic!("docs/errors.md: {e}"));
    }
}
