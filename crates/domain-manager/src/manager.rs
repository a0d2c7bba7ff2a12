//! The topology logic of the active replica: activation (bootstrap and resend
//! of pending transactions), serialized writes through the sequencer, and the
//! decisions that make admin writes idempotent.
//!
//! All writes go through one `tokio::sync::Mutex` holding the [`ActiveState`]
//! of the current lease epoch. Under it, a write
//! 1. (re)loads the state if the epoch changed, and resends pending rows;
//! 2. decides (possibly a no-op, without sending anything);
//! 3. allocates `serial = max + 1` and inserts the signed transaction as
//!    pending in a fenced transaction;
//! 4. sends it through the sequencer (retrying across endpoints until the
//!    request deadline; on failure the row stays pending and is resent later);
//! 5. marks it sequenced with its sequencing and effective time (fenced).
//!
//! Every send carries the max sequencing time fixed with its message id when the row
//! was written (`max-sequencing-window` after that), and every resend repeats both. So a
//! resend is either deduplicated (answering the original timestamp) or refused as past
//! its deadline; then the domain manager's own event stream tells whether the original
//! was sequenced (its timestamp is recorded: the one members see) or not (only then is
//! the transaction sent again, under a new message id). A transaction is never
//! sequenced twice, and the store never records another timestamp than the members'.
//!
//! A new serial is only allocated once no row is pending, so serial order is
//! sequencing order and the in-memory [`TopologyState`] mirror computes the
//! same effective times as every member.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use domain_identity::{DomainId, MemberId, PublicKey, SigningKeyPair};
use domain_lease::{Fence, LeaseHandle, LeaseStatus};
use domain_topology::{
    DomainParameters, Mapping, Operation, Permission, SequencedTopology, TopologyState, TrustLevel,
};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::DomainManagerError;
use crate::gateway::{Gateway, SendOutcome, Sequenced, TopologySend};
use crate::metrics as m;
use crate::store::{self, StoreError, TopologyRecord};

/// Settings of the core, from the configuration.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Deadline of one admin write (and one activation attempt).
    pub send_deadline: Duration,
    /// Max sequencing time of a topology transaction's message id, from when the id was
    /// chosen (`max-sequencing-window`).
    pub max_sequencing_window: Duration,
    /// Genesis mediators (validated ids).
    pub genesis_mediators: Vec<MemberId>,
    /// Genesis domain parameters (validated).
    pub genesis_parameters: DomainParameters,
    /// Name of the lease row (to name the active replica when the keeper does not
    /// know it yet).
    pub lease_name: String,
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    pub serial: u64,
    pub effective_ts: i64,
    /// False when the requested state was already in place (nothing sent).
    pub changed: bool,
}

/// What a write request amounts to, given the latest state of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per admin call
pub enum Decision {
    /// Already in place: answer with the existing row.
    NoOp { serial: u64, effective_ts: i64 },
    /// Sign and sequence a new transaction.
    Send {
        operation: Operation,
        mapping: Mapping,
    },
}

impl Decision {
    /// Sequence `operation` on the participant mapping with these attributes.
    fn send_participant(
        operation: Operation,
        participant: &MemberId,
        permission: Permission,
        trust_level: TrustLevel,
        public_key: Option<PublicKey>,
    ) -> Self {
        Self::Send {
            operation,
            mapping: Mapping::Participant {
                participant: participant.clone(),
                permission,
                trust_level,
                public_key,
            },
        }
    }

    /// Nothing to do: `entry`, the latest row of the key, already says it.
    fn in_place(entry: &SequencedTopology) -> Self {
        Self::NoOp {
            serial: entry.tx.serial,
            effective_ts: entry.effective_ts,
        }
    }
}

fn unknown_participant(participant: &MemberId) -> DomainManagerError {
    DomainManagerError::UnknownParticipant(participant.to_string())
}

/// Validates a participant id: `PAR::name::1220…`.
pub fn parse_participant_id(s: &str) -> Result<MemberId, DomainManagerError> {
    MemberId::parse_participant(s, false)
        .map(|(id, _)| id)
        .map_err(|e| DomainManagerError::InvalidArgument(format!("participant id {s:?}: {e}")))
}

/// Parses a proto permission; UNSPECIFIED or unknown values are invalid.
pub fn parse_permission(v: i32) -> Result<Permission, DomainManagerError> {
    Permission::from_proto(v).map_err(|e| DomainManagerError::InvalidArgument(e.to_string()))
}

/// Parses a proto trust level; UNSPECIFIED or unknown values are invalid.
pub fn parse_trust_level(v: i32) -> Result<TrustLevel, DomainManagerError> {
    TrustLevel::from_proto(v).map_err(|e| DomainManagerError::InvalidArgument(e.to_string()))
}

fn participant_attrs(entry: &SequencedTopology) -> Option<(Permission, TrustLevel)> {
    match (&entry.tx.operation, &entry.tx.mapping) {
        (
            Operation::Replace,
            Mapping::Participant {
                permission,
                trust_level,
                ..
            },
        ) => Some((*permission, *trust_level)),
        _ => None,
    }
}

/// The key recorded with the latest participant mapping, if any.
fn participant_key(entry: &SequencedTopology) -> Option<&PublicKey> {
    match &entry.tx.mapping {
        Mapping::Participant { public_key, .. } => public_key.as_ref(),
        _ => None,
    }
}

/// SetParticipantState: a no-op when the latest transaction of the participant is a
/// replace with the same permission, trust level and key. A key recorded earlier (from an
/// identity file) is kept when the request carries none, so a later permission change does
/// not drop the binding.
pub fn decide_set_state(
    latest: Option<&SequencedTopology>,
    participant: &MemberId,
    permission: Permission,
    trust_level: TrustLevel,
    public_key: Option<PublicKey>,
) -> Decision {
    let previous_key = latest.and_then(participant_key).cloned();
    let public_key = public_key.or_else(|| previous_key.clone());
    if let Some(entry) = latest
        && participant_attrs(entry) == Some((permission, trust_level))
        && public_key == previous_key
    {
        return Decision::in_place(entry);
    }
    Decision::send_participant(
        Operation::Replace,
        participant,
        permission,
        trust_level,
        public_key,
    )
}

/// How a participant is taken out of the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// DisableParticipant: [`decide_disable`].
    Disable,
    /// RemoveParticipant: [`decide_remove`].
    Remove,
}

impl Retirement {
    /// What happened to the participant, for logs.
    pub fn done(self) -> &'static str {
        match self {
            Self::Disable => "participant disabled",
            Self::Remove => "participant removed",
        }
    }
}

/// DisableParticipant: permission disabled, trust level kept. Unknown (never set, or
/// removed) participants are refused.
pub fn decide_disable(
    latest: Option<&SequencedTopology>,
    participant: &MemberId,
) -> Result<Decision, DomainManagerError> {
    let (_, trust_level) = latest
        .and_then(participant_attrs)
        .ok_or_else(|| unknown_participant(participant))?;
    Ok(decide_set_state(
        latest,
        participant,
        Permission::Disabled,
        trust_level,
        None,
    ))
}

/// RemoveParticipant: a remove transaction; a no-op when already removed; refused for
/// participants never set.
pub fn decide_remove(
    latest: Option<&SequencedTopology>,
    participant: &MemberId,
) -> Result<Decision, DomainManagerError> {
    let entry = latest.ok_or_else(|| unknown_participant(participant))?;
    match (&entry.tx.operation, &entry.tx.mapping) {
        (Operation::Remove, _) => Ok(Decision::in_place(entry)),
        (
            Operation::Replace,
            Mapping::Participant {
                permission,
                trust_level,
                public_key,
                ..
            },
            // The wire format requires valid attributes even on a removal.
        ) => Ok(Decision::send_participant(
            Operation::Remove,
            participant,
            *permission,
            *trust_level,
            public_key.clone(),
        )),
        _ => Err(DomainManagerError::Internal(format!(
            "latest transaction of {participant} is not a participant mapping"
        ))),
    }
}

/// SetParameters: a no-op when the same parameters are already the latest.
pub fn decide_parameters(
    latest: Option<&SequencedTopology>,
    parameters: DomainParameters,
) -> Decision {
    if let Some(entry) = latest
        && entry.tx.mapping == Mapping::Parameters(parameters)
    {
        return Decision::in_place(entry);
    }
    Decision::Send {
        operation: Operation::Replace,
        mapping: Mapping::Parameters(parameters),
    }
}

/// The latest sequenced transaction of `key` in `state`.
pub fn latest_for_key<'a>(state: &'a TopologyState, key: &str) -> Option<&'a SequencedTopology> {
    state
        .entries()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|e| e.tx.mapping.key() == key)
}

use domain_time::now_micros;

/// `ts` + the topology change delay in force at `ts`, as [`TopologyState::add`] computes it.
pub fn effective_time(state: &TopologyState, ts: i64) -> i64 {
    let delay = state.parameters_at(ts).topology_change_delay;
    ts.saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
}

/// In-memory state of the active term.
#[derive(Debug)]
pub struct ActiveState {
    epoch: i64,
    /// Every sequenced transaction.
    mirror: TopologyState,
    /// Whether pending rows may exist in the store.
    pending: bool,
    /// Whether the genesis bootstrap completed in this term.
    bootstrapped: bool,
}

impl ActiveState {
    fn is_ready(&self, epoch: i64) -> bool {
        self.epoch == epoch && self.bootstrapped && !self.pending
    }
}

/// Shared state of one domain-manager replica.
pub struct Core {
    pub domain_id: DomainId,
    key: Arc<SigningKeyPair>,
    pool: deadpool_postgres::Pool,
    lease: LeaseHandle,
    gateway: Gateway,
    settings: CoreSettings,
    state: Mutex<Option<ActiveState>>,
    /// Epoch whose bootstrap completed (0: none); readable without the lock.
    ready_epoch: AtomicI64,
    /// Whether pending rows may exist; readable without the lock.
    has_pending: AtomicBool,
    fatal: CancellationToken,
    fatal_reason: StdMutex<Option<String>>,
}

impl Core {
    pub fn new(
        domain_id: DomainId,
        key: Arc<SigningKeyPair>,
        pool: deadpool_postgres::Pool,
        lease: LeaseHandle,
        gateway: Gateway,
        settings: CoreSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            domain_id,
            key,
            pool,
            lease,
            gateway,
            settings,
            state: Mutex::new(None),
            ready_epoch: AtomicI64::new(0),
            has_pending: AtomicBool::new(false),
            fatal: CancellationToken::new(),
            fatal_reason: StdMutex::new(None),
        })
    }

    pub fn lease(&self) -> &LeaseHandle {
        &self.lease
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    pub fn send_deadline(&self) -> Duration {
        self.settings.send_deadline
    }

    /// The max sequencing time for a message id chosen now: `max-sequencing-window` from
    /// now (local clock; the window dwarfs any sane clock difference to the sequencer).
    fn new_max_sequencing_ts(&self) -> i64 {
        let window =
            i64::try_from(self.settings.max_sequencing_window.as_micros()).unwrap_or(i64::MAX);
        now_micros().saturating_add(window)
    }

    /// Deadline of an admin write: `send-deadline` from now, shortened to answer before
    /// the client's own `grpc-timeout` (if any) expires.
    pub fn request_deadline(&self, client_timeout: Option<Duration>) -> Instant {
        let mut budget = self.settings.send_deadline;
        if let Some(timeout) = client_timeout {
            // Leave time for the answer to travel back.
            let margin = (timeout / 10).min(Duration::from_millis(250));
            budget = budget.min(timeout.saturating_sub(margin));
        }
        Instant::now() + budget
    }

    /// Cancelled when the replica must stop (e.g. the database belongs to another domain).
    pub fn fatal(&self) -> &CancellationToken {
        &self.fatal
    }

    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_fatal(&self, reason: String) {
        tracing::error!(%reason, "stopping: unrecoverable error");
        *self
            .fatal_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.fatal.cancel();
    }

    /// The DM_NOT_ACTIVE error naming the active replica as far as known.
    pub fn not_active(&self) -> DomainManagerError {
        let LeaseStatus {
            holder,
            holder_address,
            ..
        } = self.lease.status();
        DomainManagerError::NotActive {
            holder,
            address: holder_address,
        }
    }

    fn fence(&self) -> Result<Fence, DomainManagerError> {
        self.lease.fence().ok_or_else(|| self.not_active())
    }

    /// Maps errors meaning "no longer active" to a DM_NOT_ACTIVE naming the active.
    fn refine(&self, e: DomainManagerError) -> DomainManagerError {
        match e {
            DomainManagerError::NotActive { .. } => self.not_active(),
            other => other,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DomainManagerError> {
        Ok(self.pool.get().await?)
    }

    async fn lock_until(
        &self,
        deadline: Instant,
    ) -> Result<MutexGuard<'_, Option<ActiveState>>, DomainManagerError> {
        tokio::time::timeout_at(deadline, self.state.lock())
            .await
            .map_err(|_| {
                DomainManagerError::SequencerUnavailable(
                    "timed out waiting for an earlier topology change to be sequenced".into(),
                )
            })
    }

    /// Whether this replica is active and bootstrapped at its current epoch (pending
    /// rows left by a failed send do not count against it: the next write or the
    /// retry loop resends them first).
    pub fn is_ready(&self) -> bool {
        self.lease
            .fence()
            .is_some_and(|f| f.epoch == self.ready_epoch.load(Ordering::SeqCst))
    }

    /// Whether pending rows may exist in the store (the retry loop resends them).
    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::SeqCst)
    }

    fn set_pending(&self, state: &mut ActiveState, pending: bool) {
        state.pending = pending;
        self.has_pending.store(pending, Ordering::SeqCst);
    }

    fn clear_state(&self, guard: &mut Option<ActiveState>) {
        *guard = None;
        self.ready_epoch.store(0, Ordering::SeqCst);
    }

    /// Resolves once this process no longer holds the lease at `epoch` (checked every
    /// 100 ms, local deadline included), so a send in flight stops with DM_NOT_ACTIVE.
    async fn lease_lost(&self, epoch: i64) {
        loop {
            if self.lease.fence().is_none_or(|f| f.epoch != epoch) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Brings the replica to the ready state for the current lease epoch: records the
    /// domain id, loads the store, resends pending transactions, writes the genesis
    /// topology. Idempotent; called by the activity loop and by every write.
    pub async fn activate(&self, deadline: Instant) -> Result<(), DomainManagerError> {
        let fence = self.fence()?;
        let mut guard = self.lock_until(deadline).await?;
        self.prepare(&mut guard, &fence, deadline).await.map(|_| ())
    }

    /// Resends pending transactions if any (activity loop, while active).
    pub async fn retry_pending(&self, deadline: Instant) -> Result<(), DomainManagerError> {
        self.activate(deadline).await
    }

    async fn prepare<'g>(
        &self,
        guard: &'g mut Option<ActiveState>,
        fence: &Fence,
        deadline: Instant,
    ) -> Result<&'g mut ActiveState, DomainManagerError> {
        let result = self.prepare_inner(guard, fence, deadline).await;
        if let Err(e) = &result
            && matches!(e, DomainManagerError::NotActive { .. })
        {
            self.clear_state(guard);
        }
        match result {
            Ok(()) => guard
                .as_mut()
                .ok_or_else(|| DomainManagerError::Internal("active state vanished".into())),
            Err(e) => Err(self.refine(e)),
        }
    }

    async fn prepare_inner(
        &self,
        guard: &mut Option<ActiveState>,
        fence: &Fence,
        deadline: Instant,
    ) -> Result<(), DomainManagerError> {
        if guard.as_ref().is_some_and(|s| s.is_ready(fence.epoch)) {
            return Ok(());
        }
        if guard.as_ref().is_none_or(|s| s.epoch != fence.epoch) {
            let mut client = self.client().await?;
            match store::ensure_domain(&mut client, fence, &self.domain_id).await {
                Err(e @ StoreError::DomainMismatch { .. }) => {
                    self.set_fatal(e.to_string());
                    return Err(DomainManagerError::Internal(e.to_string()));
                }
                other => other?,
            }
            let records = store::load(&**client, &self.domain_id, store::Rows::All).await?;
            let pending = records.iter().any(|r| r.sequenced().is_none());
            // The sequencer key our own latest registration names (pending ones count:
            // a resend of a registration goes to the key it registers).
            if let Some(key) = records
                .iter()
                .filter_map(|r| match (&r.tx.operation, &r.tx.mapping) {
                    (
                        Operation::Replace,
                        Mapping::Sequencer {
                            public_key: Some(key),
                            ..
                        },
                    ) => Some((r.serial(), key)),
                    _ => None,
                })
                .max_by_key(|(serial, _)| *serial)
                .map(|(_, key)| key)
            {
                self.gateway.trust_sequencer_key(key);
            }
            self.ready_epoch.store(0, Ordering::SeqCst);
            self.has_pending.store(pending, Ordering::SeqCst);
            *guard = Some(ActiveState {
                epoch: fence.epoch,
                mirror: store::state_of(&records),
                pending,
                bootstrapped: false,
            });
            tracing::info!(
                epoch = fence.epoch,
                transactions = records.len(),
                pending,
                "loaded topology store"
            );
        }
        let state = guard
            .as_mut()
            .ok_or_else(|| DomainManagerError::Internal("active state missing".into()))?;
        if state.pending {
            self.flush_pending(state, fence, deadline).await?;
        }
        if !state.bootstrapped {
            self.bootstrap(state, fence, deadline).await?;
            state.bootstrapped = true;
            self.ready_epoch.store(fence.epoch, Ordering::SeqCst);
            tracing::info!(epoch = fence.epoch, "bootstrap complete: accepting writes");
        }
        Ok(())
    }

    /// Resends every pending row in serial order and marks it sequenced.
    async fn flush_pending(
        &self,
        state: &mut ActiveState,
        fence: &Fence,
        deadline: Instant,
    ) -> Result<(), DomainManagerError> {
        let pending = {
            let client = self.client().await?;
            store::load(&**client, &self.domain_id, store::Rows::Pending).await?
        };
        for record in pending {
            tracing::info!(
                serial = record.serial(),
                kind = record.tx.mapping.kind(),
                "resending pending topology transaction"
            );
            self.sequence(state, fence, &record, deadline).await?;
        }
        self.set_pending(state, false);
        Ok(())
    }

    /// Sends one pending record and marks it sequenced; returns its effective time.
    async fn sequence(
        &self,
        state: &mut ActiveState,
        fence: &Fence,
        record: &TopologyRecord,
        deadline: Instant,
    ) -> Result<i64, DomainManagerError> {
        // Never send for a term we no longer hold (a resend by the new active is
        // deduplicated anyway, but a stale replica should stop as early as it can).
        if self.lease.fence().is_none_or(|f| f.epoch != fence.epoch) {
            return Err(self.not_active());
        }
        let serial = record.serial();
        let started = Instant::now();
        let mut message_id = record.message_id();
        let mut max_sequencing_ts = match record.max_sequencing_ts {
            Some(ts) => ts,
            None => {
                // Written before max sequencing times were stored: fix one now, for
                // this and every later resend (an earlier send without one may still be
                // answered by deduplication).
                let ts = self.new_max_sequencing_ts();
                self.set_send(fence, serial, &message_id, ts).await?;
                ts
            }
        };
        let sequenced = loop {
            let send = TopologySend {
                serial,
                message_id: &message_id,
                max_sequencing_ts,
                signed: &record.signed,
            };
            let outcome = tokio::select! {
                result = self.gateway.send_topology(send, deadline) => result?,
                () = self.lease_lost(fence.epoch) => return Err(self.not_active()),
            };
            match outcome {
                SendOutcome::Sequenced(sequenced) => break sequenced,
                SendOutcome::DeadlinePassed => {}
            }
            // Too late, and the sequencer keeps no deduplication record of it (pruned,
            // or never sequenced): our own stream says which, for good.
            // Serials are sequenced in order: this one after every one already settled.
            let sequenced_after = state
                .mirror
                .entries()
                .map(|e| e.sequenced_ts)
                .max()
                .unwrap_or(0);
            let lookup = self.gateway.find_receipt(
                &message_id,
                sequenced_after,
                max_sequencing_ts,
                deadline,
            );
            let found = tokio::select! {
                result = lookup => result?,
                () = self.lease_lost(fence.epoch) => return Err(self.not_active()),
            };
            if let Some(ts) = found {
                tracing::info!(
                    serial,
                    message_id,
                    sequencing_ts = ts,
                    "topology transaction was sequenced before its reply was lost; \
                     recording the timestamp from our own event stream"
                );
                break Sequenced {
                    sequencing_ts: ts,
                    deduplicated: true,
                };
            }
            // Never sequenced, and it never will be: send it again under a new message
            // id (the old one must stay unused) with a new max sequencing time.
            max_sequencing_ts = self.new_max_sequencing_ts();
            let previous = std::mem::replace(
                &mut message_id,
                format!(
                    "{}-{max_sequencing_ts}",
                    domain_topology::message_id(serial)
                ),
            );
            tracing::warn!(
                serial,
                previous_message_id = previous,
                message_id,
                "topology transaction was not sequenced before its max sequencing time; \
                 sending it again under a new message id"
            );
            self.set_send(fence, serial, &message_id, max_sequencing_ts)
                .await?;
        };
        metrics::histogram!(m::TOPOLOGY_SEND_SECONDS).record(started.elapsed().as_secs_f64());
        // The mirror holds every earlier serial, so this is the effective time every
        // member computes (`TopologyState::add`: ts + delay in force at ts).
        let effective_ts = effective_time(&state.mirror, sequenced.sequencing_ts);
        let mut client = self.client().await?;
        let (sequenced_ts, effective_ts) = store::mark_sequenced(
            &mut client,
            fence,
            serial,
            sequenced.sequencing_ts,
            effective_ts,
        )
        .await?;
        state.mirror.insert(SequencedTopology {
            sequenced_ts,
            effective_ts,
            tx: record.tx.clone(),
        });
        metrics::counter!(m::TOPOLOGY_TRANSACTIONS, "kind" => record.tx.mapping.kind())
            .increment(1);
        self.update_allowlist_gauge(&state.mirror);
        tracing::info!(
            serial,
            kind = record.tx.mapping.kind(),
            key = %record.tx.mapping.key(),
            sequenced_ts,
            effective_ts,
            deduplicated = sequenced.deduplicated,
            "topology transaction sequenced"
        );
        Ok(effective_ts)
    }

    /// Records the message id and max sequencing time of pending row `serial` (fenced).
    async fn set_send(
        &self,
        fence: &Fence,
        serial: u64,
        message_id: &str,
        max_sequencing_ts: i64,
    ) -> Result<(), DomainManagerError> {
        let mut client = self.client().await?;
        if store::set_send(&mut client, fence, serial, message_id, max_sequencing_ts).await? {
            Ok(())
        } else {
            Err(DomainManagerError::Internal(format!(
                "topology row {serial} is no longer pending"
            )))
        }
    }

    /// Inserts and sequences a new transaction. On a send failure the row stays pending.
    async fn write_new(
        &self,
        state: &mut ActiveState,
        fence: &Fence,
        operation: Operation,
        mapping: Mapping,
        deadline: Instant,
    ) -> Result<WriteOutcome, DomainManagerError> {
        // Set first: if this future is dropped (client gone) right after the insert
        // commits, the next write still resends the row before allocating a new serial.
        self.set_pending(state, true);
        let record = {
            let mut client = self.client().await?;
            store::insert_pending(
                &mut client,
                fence,
                &self.domain_id,
                &self.key,
                operation,
                mapping,
                self.new_max_sequencing_ts(),
            )
            .await?
        };
        let effective_ts = self.sequence(state, fence, &record, deadline).await?;
        self.set_pending(state, false);
        Ok(WriteOutcome {
            serial: record.serial(),
            effective_ts,
            changed: true,
        })
    }

    /// Registers discovered sequencers and genesis mediators not yet known, and writes
    /// the genesis parameters if none exist.
    async fn bootstrap(
        &self,
        state: &mut ActiveState,
        fence: &Fence,
        deadline: Instant,
    ) -> Result<(), DomainManagerError> {
        let has_sequencer = state
            .mirror
            .entries()
            .any(|e| matches!(e.tx.mapping, Mapping::Sequencer { .. }));
        match self.gateway.discover_sequencers(deadline).await {
            Ok(found) => {
                for s in found {
                    let key = format!("sequencer/{}", s.sequencer_id);
                    if latest_for_key(&state.mirror, &key).is_some() {
                        continue;
                    }
                    tracing::info!(sequencer = %s.sequencer_id, "registering sequencer");
                    // What we register is what we trust (discovered over the CA-checked
                    // channel of our own configuration).
                    self.gateway.trust_sequencer_key(&s.public_key);
                    self.write_new(
                        state,
                        fence,
                        Operation::Replace,
                        Mapping::Sequencer {
                            sequencer: s.sequencer_id,
                            public_key: Some(s.public_key),
                        },
                        deadline,
                    )
                    .await?;
                }
            }
            // Registrations exist already: an unreachable sequencer must not keep the
            // domain manager from serving.
            Err(e) if has_sequencer => {
                tracing::warn!(error = %e, "sequencer discovery failed; keeping existing registrations");
            }
            Err(e) => return Err(e),
        }
        for mediator in self.settings.genesis_mediators.clone() {
            let key = format!("mediator/{mediator}");
            if latest_for_key(&state.mirror, &key).is_some() {
                continue;
            }
            tracing::info!(%mediator, "registering genesis mediator");
            self.write_new(
                state,
                fence,
                Operation::Replace,
                Mapping::Mediator {
                    mediator,
                    public_key: None,
                },
                deadline,
            )
            .await?;
        }
        if latest_for_key(&state.mirror, "parameters").is_none() {
            tracing::info!(parameters = ?self.settings.genesis_parameters, "writing genesis domain parameters");
            self.write_new(
                state,
                fence,
                Operation::Replace,
                Mapping::Parameters(self.settings.genesis_parameters),
                deadline,
            )
            .await?;
        }
        Ok(())
    }

    /// Runs one admin write: activation if needed, the decision on the latest state of
    /// `key`, then the new transaction if any.
    /// `deadline` bounds the whole call (see [`Core::request_deadline`]).
    pub async fn submit(
        &self,
        key: &str,
        deadline: Instant,
        decide: impl FnOnce(Option<&SequencedTopology>) -> Result<Decision, DomainManagerError>,
    ) -> Result<WriteOutcome, DomainManagerError> {
        match self.submit_inner(key, deadline, decide).await {
            Err(DomainManagerError::NotActive { holder: None, .. }) => {
                Err(self.not_active_from_db().await)
            }
            other => other,
        }
    }

    /// DM_NOT_ACTIVE naming the live holder of the lease row, for when this process has
    /// just lost the lease and its keeper has not polled the row yet.
    async fn not_active_from_db(&self) -> DomainManagerError {
        let lookup = async {
            let client = self.pool.get().await.ok()?;
            let row = client
                .query_opt(
                    "SELECT holder, holder_address FROM leases \
                     WHERE name = $1 AND expires_at > clock_timestamp()",
                    &[&self.settings.lease_name],
                )
                .await
                .ok()??;
            let address: String = row.get(1);
            Some((row.get::<_, String>(0), address))
        };
        match tokio::time::timeout(Duration::from_millis(500), lookup).await {
            Ok(Some((holder, address))) => DomainManagerError::NotActive {
                holder: Some(holder),
                address: (!address.is_empty()).then_some(address),
            },
            _ => self.not_active(),
        }
    }

    async fn submit_inner(
        &self,
        key: &str,
        deadline: Instant,
        decide: impl FnOnce(Option<&SequencedTopology>) -> Result<Decision, DomainManagerError>,
    ) -> Result<WriteOutcome, DomainManagerError> {
        let fence = self.fence()?;
        let mut guard = self.lock_until(deadline).await?;
        let state = self.prepare(&mut guard, &fence, deadline).await?;
        let decision = decide(latest_for_key(&state.mirror, key))?;
        match decision {
            Decision::NoOp {
                serial,
                effective_ts,
            } => Ok(WriteOutcome {
                serial,
                effective_ts,
                changed: false,
            }),
            Decision::Send { operation, mapping } => {
                let result = self
                    .write_new(state, &fence, operation, mapping, deadline)
                    .await;
                if matches!(result, Err(DomainManagerError::NotActive { .. })) {
                    self.clear_state(&mut guard);
                }
                result.map_err(|e| self.refine(e))
            }
        }
    }

    pub async fn set_participant_state(
        &self,
        participant: &MemberId,
        permission: Permission,
        trust_level: TrustLevel,
        public_key: Option<PublicKey>,
        deadline: Instant,
    ) -> Result<WriteOutcome, DomainManagerError> {
        let key = format!("participant/{participant}");
        self.submit(&key, deadline, |latest| {
            Ok(decide_set_state(
                latest,
                participant,
                permission,
                trust_level,
                public_key.clone(),
            ))
        })
        .await
    }

    /// The namespace key, for signing connection bundles (only the active replica serves
    /// them, see `ExportConnection`).
    pub fn namespace_key(&self) -> &SigningKeyPair {
        &self.key
    }

    /// Disables or removes a known participant (see [`decide_disable`], [`decide_remove`]).
    pub async fn retire_participant(
        &self,
        participant: &MemberId,
        retirement: Retirement,
        deadline: Instant,
    ) -> Result<WriteOutcome, DomainManagerError> {
        let key = format!("participant/{participant}");
        self.submit(&key, deadline, |latest| match retirement {
            Retirement::Disable => decide_disable(latest, participant),
            Retirement::Remove => decide_remove(latest, participant),
        })
        .await
    }

    pub async fn set_parameters(
        &self,
        parameters: DomainParameters,
        deadline: Instant,
    ) -> Result<WriteOutcome, DomainManagerError> {
        self.submit("parameters", deadline, |latest| {
            Ok(decide_parameters(latest, parameters))
        })
        .await
    }

    /// Latest sequenced rows of `kind` (any replica, from the database).
    pub async fn latest(&self, kind: &str) -> Result<Vec<TopologyRecord>, DomainManagerError> {
        let client = self.client().await?;
        Ok(store::latest_sequenced(&**client, &self.domain_id, Some(kind)).await?)
    }

    /// Latest sequenced row of one key (any replica, from the database).
    pub async fn latest_for(
        &self,
        key: &str,
    ) -> Result<Option<TopologyRecord>, DomainManagerError> {
        let client = self.client().await?;
        Ok(store::latest_sequenced_for_key(&**client, &self.domain_id, key).await?)
    }

    /// Recomputes `dm_allowlist_size` from the database (any replica).
    pub async fn refresh_allowlist_gauge(&self) -> Result<(), DomainManagerError> {
        let latest = self.latest("participant_state").await?;
        metrics::gauge!(m::ALLOWLIST_SIZE).set(store::allowlist_size(&latest) as f64);
        Ok(())
    }

    fn update_allowlist_gauge(&self, mirror: &TopologyState) {
        let size = mirror
            .participants_at(i64::MAX)
            .iter()
            .filter(|(_, a)| a.permission.is_active())
            .count();
        metrics::gauge!(m::ALLOWLIST_SIZE).set(size as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_identity::{MemberRole, UniqueId};
    use domain_proto::error::ServiceError as _;
    use domain_topology::TopologyTransaction;

    fn participant() -> MemberId {
        let key = SigningKeyPair::from_seed(&[7; 32]);
        MemberId::new(
            MemberRole::Participant,
            UniqueId::new("alice", *key.fingerprint()).expect("valid"),
        )
    }

    fn entry(serial: u64, operation: Operation, permission: Permission) -> SequencedTopology {
        SequencedTopology {
            sequenced_ts: 1_000,
            effective_ts: 1_250,
            tx: TopologyTransaction {
                serial,
                operation,
                mapping: Mapping::Participant {
                    participant: participant(),
                    permission,
                    trust_level: TrustLevel::Ordinary,
                    public_key: None,
                },
            },
        }
    }

    #[test]
    fn set_state_is_idempotent() {
        let p = participant();
        let current = entry(4, Operation::Replace, Permission::Submission);
        assert_eq!(
            decide_set_state(
                Some(&current),
                &p,
                Permission::Submission,
                TrustLevel::Ordinary,
                None
            ),
            Decision::NoOp {
                serial: 4,
                effective_ts: 1_250
            }
        );
        assert!(matches!(
            decide_set_state(
                Some(&current),
                &p,
                Permission::Submission,
                TrustLevel::Vip,
                None
            ),
            Decision::Send {
                operation: Operation::Replace,
                ..
            }
        ));
        assert!(matches!(
            decide_set_state(
                Some(&current),
                &p,
                Permission::Observation,
                TrustLevel::Ordinary,
                None
            ),
            Decision::Send { .. }
        ));
        assert!(matches!(
            decide_set_state(None, &p, Permission::Submission, TrustLevel::Ordinary, None),
            Decision::Send { .. }
        ));
        // Re-adding a removed participant with its old attributes is a change.
        let removed = entry(5, Operation::Remove, Permission::Submission);
        assert!(matches!(
            decide_set_state(
                Some(&removed),
                &p,
                Permission::Submission,
                TrustLevel::Ordinary,
                None
            ),
            Decision::Send { .. }
        ));
    }

    #[test]
    fn disable_and_remove_need_a_known_participant() {
        let p = participant();
        assert_eq!(
            decide_disable(None, &p).expect_err("unknown").code(),
            "DM_UNKNOWN_PARTICIPANT"
        );
        assert_eq!(
            decide_remove(None, &p).expect_err("unknown").code(),
            "DM_UNKNOWN_PARTICIPANT"
        );
        let removed = entry(5, Operation::Remove, Permission::Submission);
        assert_eq!(
            decide_disable(Some(&removed), &p)
                .expect_err("removed")
                .code(),
            "DM_UNKNOWN_PARTICIPANT"
        );
        assert_eq!(
            decide_remove(Some(&removed), &p).expect("idempotent"),
            Decision::NoOp {
                serial: 5,
                effective_ts: 1_250
            }
        );

        let active = entry(4, Operation::Replace, Permission::Confirmation);
        match decide_disable(Some(&active), &p).expect("known") {
            Decision::Send {
                operation: Operation::Replace,
                mapping:
                    Mapping::Participant {
                        permission,
                        trust_level,
                        ..
                    },
            } => {
                assert_eq!(permission, Permission::Disabled);
                assert_eq!(trust_level, TrustLevel::Ordinary);
            }
            other => panic!("unexpected {other:?}"),
        }
        let disabled = entry(6, Operation::Replace, Permission::Disabled);
        assert!(matches!(
            decide_disable(Some(&disabled), &p),
            Ok(Decision::NoOp { serial: 6, .. })
        ));
        assert!(matches!(
            decide_remove(Some(&active), &p),
            Ok(Decision::Send {
                operation: Operation::Remove,
                ..
            })
        ));
    }

    #[test]
    fn parameters_are_idempotent() {
        let params = DomainParameters::default();
        let current = SequencedTopology {
            sequenced_ts: 10,
            effective_ts: 20,
            tx: TopologyTransaction {
                serial: 3,
                operation: Operation::Replace,
                mapping: Mapping::Parameters(params),
            },
        };
        assert_eq!(
            decide_parameters(Some(&current), params),
            Decision::NoOp {
                serial: 3,
                effective_ts: 20
            }
        );
        let other = DomainParameters {
            max_request_size: 2048,
            ..params
        };
        assert!(matches!(
            decide_parameters(Some(&current), other),
            Decision::Send { .. }
        ));
    }

    #[test]
    fn effective_time_matches_what_members_compute() {
        let mut members = TopologyState::new();
        let params = DomainParameters {
            topology_change_delay: Duration::from_millis(100),
            ..DomainParameters::default()
        };
        let tx = |serial, mapping| TopologyTransaction {
            serial,
            operation: Operation::Replace,
            mapping,
        };
        for (serial, ts, mapping) in [
            (1, 1_000_000, Mapping::Parameters(params)),
            // Before the new delay is effective: the default 250 ms applies.
            (
                2,
                1_100_000,
                Mapping::Parameters(DomainParameters::default()),
            ),
            (3, 2_000_000, Mapping::Parameters(params)),
            (4, 3_000_000, Mapping::Parameters(params)),
        ] {
            let ours = effective_time(&members, ts);
            let theirs = members.add(ts, tx(serial, mapping)).expect("new serial");
            assert_eq!(ours, theirs, "serial {serial}");
        }
        assert_eq!(effective_time(&members, 5_000_000), 5_100_000);
    }

    #[test]
    fn validates_ids_and_enums() {
        let p = participant();
        assert_eq!(
            parse_participant_id(&p.to_string()).expect("valid"),
            p.clone()
        );
        for bad in [
            "",
            "alice",
            "alice::1220",
            "PAR::alice::1221abcd",
            "PAR::al ice::1220",
            &p.to_string().replace("PAR::", "MED::"),
            &p.to_string().replace("PAR::", "XYZ::"),
        ] {
            let e = parse_participant_id(bad).expect_err(bad);
            assert_eq!(e.code(), "DM_INVALID_ARGUMENT", "{bad}");
        }
        assert_eq!(
            parse_permission(1).expect("submission"),
            Permission::Submission
        );
        assert_eq!(parse_permission(4).expect("disabled"), Permission::Disabled);
        assert_eq!(
            parse_permission(0).expect_err("unspecified").code(),
            "DM_INVALID_ARGUMENT"
        );
        assert!(parse_permission(17).is_err());
        assert_eq!(parse_trust_level(2).expect("vip"), TrustLevel::Vip);
        assert!(parse_trust_level(0).is_err());
        assert!(parse_trust_level(-1).is_err());
    }
}
