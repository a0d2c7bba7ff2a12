//! Owns the meaning of topology transactions: their validation, the domain
//! namespace signature over them, and the time-indexed state (allowlist,
//! mediators, sequencers, domain parameters) that every member derives from
//! the same sequenced stream, so that a change takes effect at the same
//! sequencer instant everywhere.
//!
//! Rules shared by every consumer (sequencer, domain manager, mediator,
//! participant):
//! - only transactions sequenced with sender `DOM::<domain name>::<domain
//!   fingerprint>` and signed by the domain namespace key (the key whose
//!   fingerprint is the domain id's) count;
//! - a transaction sequenced at `ts` takes effect at `ts + topology change
//!   delay`, the delay being the one in force at `ts`;
//! - for each mapping key (one participant, one mediator, one sequencer, the
//!   parameters) the effective transaction with the highest serial wins; a
//!   serial seen before is ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use domain_identity::{
    DomainId, MemberId, MemberRole, PublicKey, Signature, SignaturePurpose, SigningKeyPair,
};
use domain_proto::common::v1 as common_pb;
use domain_proto::topology::v1 as pb;
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// Why a topology transaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("topology transaction is not decodable: {0}")]
    Malformed(String),
    #[error("topology transaction is for domain {found}, not {expected}")]
    WrongDomain { expected: String, found: String },
    #[error("topology signature is invalid: {0}")]
    BadSignature(String),
    #[error("invalid topology transaction: {0}")]
    Invalid(String),
}

/// A participant's permission, hierarchical: submission > confirmation >
/// observation > disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Submission,
    Confirmation,
    Observation,
    Disabled,
}

impl Permission {
    /// Whether a participant with this permission may confirm requests.
    pub fn can_confirm(self) -> bool {
        matches!(self, Self::Submission | Self::Confirmation)
    }

    /// Whether the participant may connect to the domain at all.
    pub fn is_active(self) -> bool {
        !matches!(self, Self::Disabled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submission => "submission",
            Self::Confirmation => "confirmation",
            Self::Observation => "observation",
            Self::Disabled => "disabled",
        }
    }

    pub fn from_proto(v: i32) -> Result<Self, TopologyError> {
        match pb::ParticipantPermission::try_from(v) {
            Ok(pb::ParticipantPermission::Submission) => Ok(Self::Submission),
            Ok(pb::ParticipantPermission::Confirmation) => Ok(Self::Confirmation),
            Ok(pb::ParticipantPermission::Observation) => Ok(Self::Observation),
            Ok(pb::ParticipantPermission::Disabled) => Ok(Self::Disabled),
            Ok(pb::ParticipantPermission::Unspecified) | Err(_) => {
                Err(TopologyError::Invalid(format!(
                    "participant permission {v} is not one of submission, confirmation, observation, disabled"
                )))
            }
        }
    }

    pub fn to_proto(self) -> pb::ParticipantPermission {
        match self {
            Self::Submission => pb::ParticipantPermission::Submission,
            Self::Confirmation => pb::ParticipantPermission::Confirmation,
            Self::Observation => pb::ParticipantPermission::Observation,
            Self::Disabled => pb::ParticipantPermission::Disabled,
        }
    }
}

impl std::str::FromStr for Permission {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "submission" => Ok(Self::Submission),
            "confirmation" => Ok(Self::Confirmation),
            "observation" => Ok(Self::Observation),
            "disabled" => Ok(Self::Disabled),
            other => Err(TopologyError::Invalid(format!(
                "permission {other:?} is not one of submission, confirmation, observation, disabled"
            ))),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    Ordinary,
    Vip,
}

impl TrustLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ordinary => "ordinary",
            Self::Vip => "vip",
        }
    }

    pub fn from_proto(v: i32) -> Result<Self, TopologyError> {
        match pb::TrustLevel::try_from(v) {
            Ok(pb::TrustLevel::Ordinary) => Ok(Self::Ordinary),
            Ok(pb::TrustLevel::Vip) => Ok(Self::Vip),
            Ok(pb::TrustLevel::Unspecified) | Err(_) => Err(TopologyError::Invalid(format!(
                "trust level {v} is not one of ordinary, vip"
            ))),
        }
    }

    pub fn to_proto(self) -> pb::TrustLevel {
        match self {
            Self::Ordinary => pb::TrustLevel::Ordinary,
            Self::Vip => pb::TrustLevel::Vip,
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Domain parameters, themselves changed through topology transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainParameters {
    pub participant_response_timeout: Duration,
    pub max_request_size: u64,
    pub topology_change_delay: Duration,
}

/// Smallest and largest accepted values, so a typo cannot brick the domain.
pub const MIN_MAX_REQUEST_SIZE: u64 = 1024;
pub const MAX_MAX_REQUEST_SIZE: u64 = 64 * 1024 * 1024;
pub const MAX_TOPOLOGY_CHANGE_DELAY: Duration = Duration::from_secs(60);
pub const MIN_RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for DomainParameters {
    /// What is in force before any parameters transaction (Canton's defaults:
    /// 30 s response timeout, 250 ms topology change delay).
    fn default() -> Self {
        Self {
            participant_response_timeout: Duration::from_secs(30),
            max_request_size: 1024 * 1024,
            topology_change_delay: Duration::from_millis(250),
        }
    }
}

impl DomainParameters {
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.participant_response_timeout < MIN_RESPONSE_TIMEOUT
            || self.participant_response_timeout > MAX_RESPONSE_TIMEOUT
        {
            return Err(TopologyError::Invalid(format!(
                "participant response timeout {:?} is outside {MIN_RESPONSE_TIMEOUT:?}..={MAX_RESPONSE_TIMEOUT:?}",
                self.participant_response_timeout
            )));
        }
        if !(MIN_MAX_REQUEST_SIZE..=MAX_MAX_REQUEST_SIZE).contains(&self.max_request_size) {
            return Err(TopologyError::Invalid(format!(
                "max request size {} is outside {MIN_MAX_REQUEST_SIZE}..={MAX_MAX_REQUEST_SIZE} bytes",
                self.max_request_size
            )));
        }
        if self.topology_change_delay > MAX_TOPOLOGY_CHANGE_DELAY {
            return Err(TopologyError::Invalid(format!(
                "topology change delay {:?} exceeds {MAX_TOPOLOGY_CHANGE_DELAY:?}",
                self.topology_change_delay
            )));
        }
        Ok(())
    }

    pub fn from_proto(p: &pb::DomainParameters) -> Result<Self, TopologyError> {
        let micros = |v: i64, what: &str| {
            u64::try_from(v)
                .map(Duration::from_micros)
                .map_err(|_| TopologyError::Invalid(format!("{what} must not be negative")))
        };
        let params = Self {
            participant_response_timeout: micros(
                p.participant_response_timeout_micros,
                "participant response timeout",
            )?,
            max_request_size: p.max_request_size,
            topology_change_delay: micros(p.topology_change_delay_micros, "topology change delay")?,
        };
        params.validate()?;
        Ok(params)
    }

    pub fn to_proto(&self) -> pb::DomainParameters {
        pb::DomainParameters {
            participant_response_timeout_micros: duration_micros(self.participant_response_timeout),
            max_request_size: self.max_request_size,
            topology_change_delay_micros: duration_micros(self.topology_change_delay),
        }
    }
}

fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What a topology transaction says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    Participant {
        participant: MemberId,
        permission: Permission,
        trust_level: TrustLevel,
        /// The key from the participant's verified identity file, when allowlisted from
        /// it: the sequencer binds exactly this key (docs/onboarding.md).
        public_key: Option<PublicKey>,
    },
    Mediator {
        mediator: MemberId,
        public_key: Option<PublicKey>,
    },
    Sequencer {
        sequencer: MemberId,
        public_key: Option<PublicKey>,
    },
    Parameters(DomainParameters),
}

impl Mapping {
    /// The key under which later transactions replace earlier ones.
    pub fn key(&self) -> String {
        match self {
            Self::Participant { participant, .. } => format!("participant/{participant}"),
            Self::Mediator { mediator, .. } => format!("mediator/{mediator}"),
            Self::Sequencer { sequencer, .. } => format!("sequencer/{sequencer}"),
            Self::Parameters(_) => "parameters".to_string(),
        }
    }

    /// Short kind name used in metrics labels and tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Participant { .. } => "participant_state",
            Self::Mediator { .. } => "mediator",
            Self::Sequencer { .. } => "sequencer",
            Self::Parameters(_) => "domain_parameters",
        }
    }

    /// The member this mapping is about, if any.
    pub fn member(&self) -> Option<&MemberId> {
        match self {
            Self::Participant { participant, .. } => Some(participant),
            Self::Mediator { mediator, .. } => Some(mediator),
            Self::Sequencer { sequencer, .. } => Some(sequencer),
            Self::Parameters(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Adds or replaces the mapping.
    Replace,
    /// Removes the mapping (a removed participant or mediator loses access).
    Remove,
}

/// A validated topology transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyTransaction {
    pub serial: u64,
    pub operation: Operation,
    pub mapping: Mapping,
}

fn parse_member(s: &str, role: MemberRole, what: &str) -> Result<MemberId, TopologyError> {
    let id =
        MemberId::parse(s).map_err(|e| TopologyError::Invalid(format!("{what} id {s:?}: {e}")))?;
    if id.role() != role {
        return Err(TopologyError::Invalid(format!(
            "{what} id {s:?} must start with {}::",
            role.prefix()
        )));
    }
    Ok(id)
}

fn parse_key(
    key: Option<&common_pb::PublicKey>,
    member: &MemberId,
) -> Result<Option<PublicKey>, TopologyError> {
    let Some(key) = key else { return Ok(None) };
    let key = domain_proto::identity::ed25519_key(key).map_err(|e| match e {
        domain_proto::identity::KeyConversionError::NotEd25519 => {
            TopologyError::Invalid(e.to_string())
        }
        domain_proto::identity::KeyConversionError::Key(e) => {
            TopologyError::Invalid(format!("public key of {member}: {e}"))
        }
    })?;
    if !member.matches_key(&key) {
        return Err(TopologyError::Invalid(format!(
            "public key {} does not match the fingerprint of {member}",
            key.fingerprint()
        )));
    }
    Ok(Some(key))
}

fn proto_key(key: &PublicKey) -> common_pb::PublicKey {
    common_pb::PublicKey::from(key)
}

impl TopologyTransaction {
    /// Transaction `serial` giving `participant` `permission` at ordinary trust, its key
    /// left as registered.
    pub fn replace_participant(
        serial: u64,
        participant: &MemberId,
        permission: Permission,
    ) -> Self {
        Self {
            serial,
            operation: Operation::Replace,
            mapping: Mapping::Participant {
                participant: participant.clone(),
                permission,
                trust_level: TrustLevel::Ordinary,
                public_key: None,
            },
        }
    }

    /// Decodes and validates the transaction a signed envelope carries, for domain
    /// `domain_id`. The signature is **not** checked: only for transactions verified before
    /// (e.g. reloaded from a store that holds verified ones). Anything received is checked
    /// with [`verify_signed`], by the sequencer and again by every member.
    pub fn from_signed(
        signed: &pb::SignedTopologyTransaction,
        domain_id: &str,
    ) -> Result<Self, TopologyError> {
        let tx = pb::TopologyTransaction::decode(signed.transaction.as_slice())
            .map_err(|e| TopologyError::Malformed(e.to_string()))?;
        Self::from_proto(&tx, domain_id)
    }

    /// [`Self::from_signed`] from the encoded envelope (as stored by members).
    pub fn from_signed_bytes(bytes: &[u8], domain_id: &str) -> Result<Self, TopologyError> {
        let signed = pb::SignedTopologyTransaction::decode(bytes)
            .map_err(|e| TopologyError::Malformed(e.to_string()))?;
        Self::from_signed(&signed, domain_id)
    }

    /// Validates a decoded transaction of domain `domain_id`.
    pub fn from_proto(
        tx: &pb::TopologyTransaction,
        domain_id: &str,
    ) -> Result<Self, TopologyError> {
        if tx.domain_id != domain_id {
            return Err(TopologyError::WrongDomain {
                expected: domain_id.to_string(),
                found: tx.domain_id.clone(),
            });
        }
        if tx.serial == 0 {
            return Err(TopologyError::Invalid("serial must be at least 1".into()));
        }
        let operation = match pb::TopologyOperation::try_from(tx.operation) {
            Ok(pb::TopologyOperation::Replace) => Operation::Replace,
            Ok(pb::TopologyOperation::Remove) => Operation::Remove,
            _ => {
                return Err(TopologyError::Invalid(format!(
                    "operation {} is not one of replace, remove",
                    tx.operation
                )));
            }
        };
        use pb::topology_transaction::Mapping as M;
        let mapping = match tx.mapping.as_ref() {
            None => return Err(TopologyError::Invalid("no mapping".into())),
            Some(M::ParticipantState(p)) => {
                let participant =
                    parse_member(&p.participant_id, MemberRole::Participant, "participant")?;
                let public_key = parse_key(p.public_key.as_ref(), &participant)?;
                Mapping::Participant {
                    participant,
                    permission: Permission::from_proto(p.permission)?,
                    trust_level: TrustLevel::from_proto(p.trust_level)?,
                    public_key,
                }
            }
            Some(M::Mediator(m)) => {
                let mediator = parse_member(&m.mediator_id, MemberRole::Mediator, "mediator")?;
                let public_key = parse_key(m.public_key.as_ref(), &mediator)?;
                Mapping::Mediator {
                    mediator,
                    public_key,
                }
            }
            Some(M::Sequencer(s)) => {
                let sequencer = parse_member(&s.sequencer_id, MemberRole::Sequencer, "sequencer")?;
                let public_key = parse_key(s.public_key.as_ref(), &sequencer)?;
                Mapping::Sequencer {
                    sequencer,
                    public_key,
                }
            }
            Some(M::DomainParameters(p)) => {
                if operation == Operation::Remove {
                    return Err(TopologyError::Invalid(
                        "domain parameters cannot be removed, only replaced".into(),
                    ));
                }
                Mapping::Parameters(DomainParameters::from_proto(p)?)
            }
        };
        Ok(Self {
            serial: tx.serial,
            operation,
            mapping,
        })
    }

    pub fn to_proto(&self, domain_id: &str) -> pb::TopologyTransaction {
        use pb::topology_transaction::Mapping as M;
        let mapping = match &self.mapping {
            Mapping::Participant {
                participant,
                permission,
                trust_level,
                public_key,
            } => M::ParticipantState(pb::ParticipantState {
                participant_id: participant.to_string(),
                permission: permission.to_proto() as i32,
                trust_level: trust_level.to_proto() as i32,
                public_key: public_key.as_ref().map(proto_key),
            }),
            Mapping::Mediator {
                mediator,
                public_key,
            } => M::Mediator(pb::MediatorRegistration {
                mediator_id: mediator.to_string(),
                public_key: public_key.as_ref().map(proto_key),
            }),
            Mapping::Sequencer {
                sequencer,
                public_key,
            } => M::Sequencer(pb::SequencerRegistration {
                sequencer_id: sequencer.to_string(),
                public_key: public_key.as_ref().map(proto_key),
            }),
            Mapping::Parameters(p) => M::DomainParameters(p.to_proto()),
        };
        pb::TopologyTransaction {
            domain_id: domain_id.to_string(),
            serial: self.serial,
            operation: match self.operation {
                Operation::Replace => pb::TopologyOperation::Replace as i32,
                Operation::Remove => pb::TopologyOperation::Remove as i32,
            },
            mapping: Some(mapping),
        }
    }

    /// Encodes and signs with the domain namespace key.
    pub fn sign(
        &self,
        domain_id: &DomainId,
        namespace_key: &SigningKeyPair,
    ) -> pb::SignedTopologyTransaction {
        let bytes = self.to_proto(&domain_id.to_string()).encode_to_vec();
        let sig = namespace_key.sign(SignaturePurpose::Topology, domain_id, &bytes);
        pb::SignedTopologyTransaction {
            transaction: bytes,
            signature: Some(common_pb::Signature::from_identity(
                &sig,
                SignaturePurpose::Topology,
            )),
        }
    }
}

/// Verifies the domain namespace signature and validates the content.
///
/// `namespace_key` must be the key whose fingerprint is the domain id's; the
/// function checks that too, so a caller cannot pass a member's key by mistake.
pub fn verify_signed(
    signed: &pb::SignedTopologyTransaction,
    domain_id: &DomainId,
    namespace_key: &PublicKey,
) -> Result<TopologyTransaction, TopologyError> {
    if !domain_id.matches_key(namespace_key) {
        return Err(TopologyError::BadSignature(format!(
            "key {} is not the namespace key of domain {domain_id}",
            namespace_key.fingerprint()
        )));
    }
    let sig = signed
        .signature
        .as_ref()
        .ok_or_else(|| TopologyError::BadSignature("missing signature".into()))?;
    if !sig.purpose_is(SignaturePurpose::Topology) {
        return Err(TopologyError::BadSignature(
            "signature purpose is not TOPOLOGY".into(),
        ));
    }
    let signature =
        Signature::try_from(sig).map_err(|e| TopologyError::BadSignature(e.to_string()))?;
    namespace_key
        .verify(
            SignaturePurpose::Topology,
            domain_id,
            &signed.transaction,
            &signature,
        )
        .map_err(|e| TopologyError::BadSignature(e.to_string()))?;
    TopologyTransaction::from_signed(signed, &domain_id.to_string())
}

/// The member id under which the domain manager sends topology transactions:
/// `DOM::<domain name>::<domain fingerprint>`, whose key is the namespace key.
pub fn domain_manager_member(domain_id: &DomainId) -> MemberId {
    MemberId::new(MemberRole::DomainManager, domain_id.uid().clone())
}

/// Message id of the submission carrying the transaction with `serial`, so a
/// resend (after a failover, or by another replica) is deduplicated.
pub fn message_id(serial: u64) -> String {
    format!("topology-{serial}")
}

/// One sequenced transaction with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedTopology {
    pub sequenced_ts: i64,
    pub effective_ts: i64,
    pub tx: TopologyTransaction,
}

/// The state a member derives from the sequenced topology transactions.
///
/// Time-indexed: queries take a sequencer timestamp and see exactly the
/// transactions effective at that time (effective_ts <= t).
#[derive(Debug, Clone, Default)]
pub struct TopologyState {
    /// All accepted transactions by serial.
    by_serial: BTreeMap<u64, SequencedTopology>,
}

/// Why a member ignored a topology transaction from its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Sent by another member than the domain manager.
    NotFromDomainManager,
    /// No valid namespace signature (or the namespace key is not known).
    BadSignature,
    /// Signed, but not a valid transaction for this domain.
    Invalid,
}

impl Ignored {
    /// The reason label members count ignored envelopes under.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFromDomainManager => "topology_not_from_domain_manager",
            Self::BadSignature => "topology_bad_signature",
            Self::Invalid => "invalid_topology",
        }
    }
}

/// A topology transaction a member accepted from its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub serial: u64,
    pub effective_ts: i64,
}

/// The state of one participant at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParticipantAttributes {
    pub permission: Permission,
    pub trust_level: TrustLevel,
}

impl TopologyState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a transaction sequenced at `sequenced_ts`. Returns its effective
    /// time, or `None` when the serial was seen before (ignored).
    pub fn add(&mut self, sequenced_ts: i64, tx: TopologyTransaction) -> Option<i64> {
        if self.by_serial.contains_key(&tx.serial) {
            return None;
        }
        let delay = self.parameters_at(sequenced_ts).topology_change_delay;
        let effective_ts = sequenced_ts.saturating_add(duration_micros(delay));
        self.by_serial.insert(
            tx.serial,
            SequencedTopology {
                sequenced_ts,
                effective_ts,
                tx,
            },
        );
        Some(effective_ts)
    }

    /// Applies a topology transaction a member read from its stream (sent by `sender`,
    /// sequenced at `sequenced_ts`). The sequencer checked sender and signature before
    /// sequencing, but a member does not take a sequencer's word for the topology: one whose
    /// key was not verified, or was stolen, must not be able to swap mediators or change the
    /// parameters. So only the domain manager's transactions with a valid namespace signature
    /// count; anything else is refused, logged and never applied. `Ok(None)`: the serial was
    /// seen before.
    pub fn apply_sequenced(
        &mut self,
        sender: &str,
        sequenced_ts: i64,
        signed: &pb::SignedTopologyTransaction,
        domain_id: &DomainId,
        namespace_key: Option<&PublicKey>,
    ) -> Result<Option<Accepted>, Ignored> {
        if sender != domain_manager_member(domain_id).to_string() {
            tracing::warn!(
                sender,
                event_ts = sequenced_ts,
                "ignored a topology transaction not sent by the domain manager"
            );
            return Err(Ignored::NotFromDomainManager);
        }
        let Some(namespace_key) = namespace_key else {
            tracing::error!(
                event_ts = sequenced_ts,
                "ignored a topology transaction: the namespace key is not known"
            );
            return Err(Ignored::BadSignature);
        };
        let tx = match verify_signed(signed, domain_id, namespace_key) {
            Ok(tx) => tx,
            Err(error @ TopologyError::BadSignature(_)) => {
                tracing::error!(event_ts = sequenced_ts, %error, "ignored a topology transaction without a valid namespace signature");
                return Err(Ignored::BadSignature);
            }
            Err(error) => {
                tracing::warn!(event_ts = sequenced_ts, %error, "ignored an invalid topology transaction");
                return Err(Ignored::Invalid);
            }
        };
        let serial = tx.serial;
        let kind = tx.mapping.kind();
        let Some(effective_ts) = self.add(sequenced_ts, tx) else {
            tracing::debug!(serial, "topology serial seen before; ignored");
            return Ok(None);
        };
        tracing::info!(
            serial,
            kind,
            sequenced_ts,
            effective_ts,
            "topology transaction accepted"
        );
        Ok(Some(Accepted {
            serial,
            effective_ts,
        }))
    }

    /// Inserts a transaction whose effective time was computed elsewhere
    /// (e.g. loaded from a store).
    pub fn insert(&mut self, entry: SequencedTopology) {
        self.by_serial.entry(entry.tx.serial).or_insert(entry);
    }

    pub fn len(&self) -> usize {
        self.by_serial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_serial.is_empty()
    }

    pub fn max_serial(&self) -> u64 {
        self.by_serial.keys().next_back().copied().unwrap_or(0)
    }

    /// The winning transaction per mapping key among those effective at `t`.
    fn effective_at(&self, t: i64) -> BTreeMap<String, &SequencedTopology> {
        let mut out: BTreeMap<String, &SequencedTopology> = BTreeMap::new();
        // Ascending serials: later serials overwrite earlier ones.
        for entry in self.by_serial.values() {
            if entry.effective_ts <= t {
                out.insert(entry.tx.mapping.key(), entry);
            }
        }
        out
    }

    /// Parameters in force at `t`.
    pub fn parameters_at(&self, t: i64) -> DomainParameters {
        self.by_serial
            .values()
            .rev()
            .filter(|e| e.effective_ts <= t)
            .find_map(|e| match &e.tx.mapping {
                Mapping::Parameters(p) => Some(*p),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// A participant's attributes at `t`; `None` when never allowlisted or removed.
    pub fn participant_at(&self, participant: &str, t: i64) -> Option<ParticipantAttributes> {
        let key = format!("participant/{participant}");
        let entry = self
            .by_serial
            .values()
            .rev()
            .filter(|e| e.effective_ts <= t)
            .find(|e| e.tx.mapping.key() == key)?;
        match (&entry.tx.operation, &entry.tx.mapping) {
            (
                Operation::Replace,
                Mapping::Participant {
                    permission,
                    trust_level,
                    ..
                },
            ) => Some(ParticipantAttributes {
                permission: *permission,
                trust_level: *trust_level,
            }),
            _ => None,
        }
    }

    /// Participants effective at `t` (removed ones excluded).
    pub fn participants_at(&self, t: i64) -> Vec<(MemberId, ParticipantAttributes)> {
        self.effective_at(t)
            .into_values()
            .filter_map(|e| match (&e.tx.operation, &e.tx.mapping) {
                (
                    Operation::Replace,
                    Mapping::Participant {
                        participant,
                        permission,
                        trust_level,
                        ..
                    },
                ) => Some((
                    participant.clone(),
                    ParticipantAttributes {
                        permission: *permission,
                        trust_level: *trust_level,
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// Mediators registered at `t`.
    pub fn mediators_at(&self, t: i64) -> Vec<MemberId> {
        self.effective_at(t)
            .into_values()
            .filter_map(|e| match (&e.tx.operation, &e.tx.mapping) {
                (Operation::Replace, Mapping::Mediator { mediator, .. }) => Some(mediator.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every transaction not yet effective at `t`, by effective time.
    pub fn pending_after(&self, t: i64) -> Vec<&SequencedTopology> {
        let mut v: Vec<_> = self
            .by_serial
            .values()
            .filter(|e| e.effective_ts > t)
            .collect();
        v.sort_by_key(|e| (e.effective_ts, e.tx.serial));
        v
    }

    pub fn entries(&self) -> impl Iterator<Item = &SequencedTopology> {
        self.by_serial.values()
    }
}

#[cfg(test)]
mod tests;
