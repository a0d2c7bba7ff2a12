//! The domain manager's database: the domain row and the topology store
//! (`migrations/domain-manager/`).
//!
//! Reads take any client. Every write takes a [`Fence`] and runs inside
//! [`fenced_transaction`], stamping `written_epoch` with the fence's epoch and
//! `written_at` with the database clock, so a replica that lost its lease gets
//! no write accepted.

use domain_identity::{DomainId, SigningKeyPair};
use domain_lease::{Fence, LeaseError, fenced_transaction};
use domain_proto::topology::v1 as pb;
use domain_topology::{Mapping, Operation, SequencedTopology, TopologyState, TopologyTransaction};
use prost::Message as _;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("postgres error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(
        "this database belongs to domain {stored}, not {ours}: check `domain-name`, \
         `namespace-key-file` and `database.url`"
    )]
    DomainMismatch { stored: String, ours: String },
    #[error("topology row {serial} is corrupt: {reason}")]
    Corrupt { serial: i64, reason: String },
}

impl From<StoreError> for crate::error::DomainManagerError {
    fn from(e: StoreError) -> Self {
        use crate::error::DomainManagerError as E;
        match e {
            StoreError::Lease(l) => l.into(),
            StoreError::Postgres(_) | StoreError::Pool(_) => E::Database(e.to_string()),
            StoreError::DomainMismatch { .. } | StoreError::Corrupt { .. } => {
                E::Internal(e.to_string())
            }
        }
    }
}

/// Row state of a topology transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    Pending,
    Sequenced {
        sequenced_ts: i64,
        effective_ts: i64,
    },
}

/// One row of `dm_topology`, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyRecord {
    pub tx: TopologyTransaction,
    pub signed: pb::SignedTopologyTransaction,
    pub state: RowState,
    pub written_epoch: i64,
    /// The message id the row is (re)sent under; `None`: the default
    /// `topology-<serial>` (see [`TopologyRecord::message_id`]).
    pub message_id: Option<String>,
    /// Max sequencing time (sequencer time, microseconds) of every send under
    /// `message_id`; `None` only in rows written before migration 0002 and not sent since.
    pub max_sequencing_ts: Option<i64>,
}

impl TopologyRecord {
    pub fn serial(&self) -> u64 {
        self.tx.serial
    }

    /// The message id the transaction is sent under.
    pub fn message_id(&self) -> String {
        self.message_id
            .clone()
            .unwrap_or_else(|| domain_topology::message_id(self.tx.serial))
    }

    /// The sequenced form, if sequenced.
    pub fn sequenced(&self) -> Option<SequencedTopology> {
        match self.state {
            RowState::Pending => None,
            RowState::Sequenced {
                sequenced_ts,
                effective_ts,
            } => Some(SequencedTopology {
                sequenced_ts,
                effective_ts,
                tx: self.tx.clone(),
            }),
        }
    }
}

const COLUMNS: &str = "serial, transaction, signed, state, sequenced_ts, effective_ts, \
     written_epoch, message_id, max_sequencing_ts";

fn operation_str(op: Operation) -> &'static str {
    match op {
        Operation::Replace => "replace",
        Operation::Remove => "remove",
    }
}

fn serial_i64(serial: u64) -> i64 {
    i64::try_from(serial).unwrap_or(i64::MAX)
}

fn decode_row(row: &Row, domain_id: &str) -> Result<TopologyRecord, StoreError> {
    let serial: i64 = row.try_get(0)?;
    let corrupt = |reason: String| StoreError::Corrupt { serial, reason };
    let transaction: Vec<u8> = row.try_get(1)?;
    let signed: Vec<u8> = row.try_get(2)?;
    let state: String = row.try_get(3)?;
    let sequenced_ts: Option<i64> = row.try_get(4)?;
    let effective_ts: Option<i64> = row.try_get(5)?;
    let written_epoch: i64 = row.try_get(6)?;
    let message_id: Option<String> = row.try_get(7)?;
    let max_sequencing_ts: Option<i64> = row.try_get(8)?;
    let proto = pb::TopologyTransaction::decode(transaction.as_slice())
        .map_err(|e| corrupt(format!("transaction does not decode: {e}")))?;
    let tx =
        TopologyTransaction::from_proto(&proto, domain_id).map_err(|e| corrupt(e.to_string()))?;
    if serial_i64(tx.serial) != serial {
        return Err(corrupt(format!("transaction carries serial {}", tx.serial)));
    }
    let signed = pb::SignedTopologyTransaction::decode(signed.as_slice())
        .map_err(|e| corrupt(format!("signed transaction does not decode: {e}")))?;
    let state = match (state.as_str(), sequenced_ts, effective_ts) {
        ("pending", _, _) => RowState::Pending,
        ("sequenced", Some(sequenced_ts), Some(effective_ts)) => RowState::Sequenced {
            sequenced_ts,
            effective_ts,
        },
        (other, _, _) => return Err(corrupt(format!("unexpected state {other:?}"))),
    };
    Ok(TopologyRecord {
        tx,
        signed,
        state,
        written_epoch,
        message_id,
        max_sequencing_ts,
    })
}

/// The domain id this database belongs to, if any replica ever became active on it.
pub async fn stored_domain_id(client: &impl GenericClient) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt("SELECT domain_id FROM dm_domain", &[])
        .await?
        .map(|r| r.get(0)))
}

/// Refuses a database that belongs to another domain.
pub async fn check_domain(
    client: &impl GenericClient,
    domain_id: &DomainId,
) -> Result<(), StoreError> {
    match stored_domain_id(client).await? {
        Some(stored) if stored != domain_id.to_string() => Err(StoreError::DomainMismatch {
            stored,
            ours: domain_id.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Records the domain id if the database has none yet (fenced); refuses another one.
pub async fn ensure_domain(
    client: &mut Client,
    fence: &Fence,
    domain_id: &DomainId,
) -> Result<(), StoreError> {
    let ours = domain_id.to_string();
    fenced_transaction(client, fence, async |tx| {
        tx.execute(
            "INSERT INTO dm_domain (domain_id, created_at) VALUES ($1, clock_timestamp()) \
             ON CONFLICT (singleton) DO NOTHING",
            &[&ours],
        )
        .await?;
        let stored: String = tx
            .query_one("SELECT domain_id FROM dm_domain", &[])
            .await?
            .get(0);
        if stored != ours {
            return Err(StoreError::DomainMismatch {
                stored,
                ours: ours.clone(),
            });
        }
        Ok(())
    })
    .await
}

/// Which topology rows [`load`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every row.
    All,
    /// The rows still pending.
    Pending,
}

/// The topology rows `which` selects, by serial.
pub async fn load(
    client: &impl GenericClient,
    domain_id: &DomainId,
    which: Rows,
) -> Result<Vec<TopologyRecord>, StoreError> {
    let filter = match which {
        Rows::All => "",
        Rows::Pending => "WHERE state = 'pending' ",
    };
    query_records(
        client,
        domain_id,
        &format!("SELECT {COLUMNS} FROM dm_topology {filter}ORDER BY serial"),
        &[],
    )
    .await
}

/// The latest sequenced row of every mapping key of `kind` (all kinds when `None`),
/// removals included, ordered by key.
pub async fn latest_sequenced(
    client: &impl GenericClient,
    domain_id: &DomainId,
    kind: Option<&str>,
) -> Result<Vec<TopologyRecord>, StoreError> {
    query_records(
        client,
        domain_id,
        &format!(
            "SELECT DISTINCT ON (mapping_key) {COLUMNS} FROM dm_topology \
             WHERE state = 'sequenced' AND ($1::text IS NULL OR kind = $1) \
             ORDER BY mapping_key, serial DESC"
        ),
        &[&kind],
    )
    .await
}

/// The topology rows `sql` selects (as [`COLUMNS`]), decoded, in the order it returns them.
async fn query_records(
    client: &impl GenericClient,
    domain_id: &DomainId,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<TopologyRecord>, StoreError> {
    let id = domain_id.to_string();
    client
        .query(sql, params)
        .await?
        .iter()
        .map(|r| decode_row(r, &id))
        .collect()
}

/// The latest sequenced row of one mapping key.
pub async fn latest_sequenced_for_key(
    client: &impl GenericClient,
    domain_id: &DomainId,
    mapping_key: &str,
) -> Result<Option<TopologyRecord>, StoreError> {
    let id = domain_id.to_string();
    client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM dm_topology \
                 WHERE state = 'sequenced' AND mapping_key = $1 \
                 ORDER BY serial DESC LIMIT 1"
            ),
            &[&mapping_key],
        )
        .await?
        .map(|r| decode_row(&r, &id))
        .transpose()
}

/// Allocates the next serial (max + 1), signs the transaction with the namespace key
/// and inserts it as pending, to be sent under message id `topology-<serial>` with max
/// sequencing time `max_sequencing_ts`, all in one fenced transaction.
pub async fn insert_pending(
    client: &mut Client,
    fence: &Fence,
    domain_id: &DomainId,
    namespace_key: &SigningKeyPair,
    operation: Operation,
    mapping: Mapping,
    max_sequencing_ts: i64,
) -> Result<TopologyRecord, StoreError> {
    fenced_transaction(client, fence, async |tx| {
        let max: i64 = tx
            .query_one("SELECT COALESCE(MAX(serial), 0) FROM dm_topology", &[])
            .await?
            .get(0);
        let serial = u64::try_from(max).unwrap_or(0) + 1;
        let topology = TopologyTransaction {
            serial,
            operation,
            mapping,
        };
        let signed = topology.sign(domain_id, namespace_key);
        let transaction = signed.transaction.clone();
        let message_id = domain_topology::message_id(serial);
        tx.execute(
            "INSERT INTO dm_topology (serial, mapping_key, kind, operation, transaction, signed, \
                 state, written_epoch, written_at, message_id, max_sequencing_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, clock_timestamp(), $8, $9)",
            &[
                &serial_i64(serial),
                &topology.mapping.key(),
                &topology.mapping.kind(),
                &operation_str(operation),
                &transaction,
                &signed.encode_to_vec(),
                &fence.epoch,
                &message_id,
                &max_sequencing_ts,
            ],
        )
        .await?;
        Ok(TopologyRecord {
            tx: topology,
            signed,
            state: RowState::Pending,
            written_epoch: fence.epoch,
            message_id: Some(message_id),
            max_sequencing_ts: Some(max_sequencing_ts),
        })
    })
    .await
}

/// Sets the message id and max sequencing time the pending row `serial` is sent under
/// from now on (fenced). Only for a row whose previous message id is known not to have
/// been sequenced (or that has no max sequencing time yet): each pair is used for one
/// message only. Returns false when the row is no longer pending.
pub async fn set_send(
    client: &mut Client,
    fence: &Fence,
    serial: u64,
    message_id: &str,
    max_sequencing_ts: i64,
) -> Result<bool, StoreError> {
    fenced_transaction(client, fence, async |tx| {
        let set = "message_id = $2, max_sequencing_ts = $3";
        Ok::<_, StoreError>(
            update_pending(tx, fence, serial, set, [&message_id, &max_sequencing_ts]).await?,
        )
    })
    .await
}

/// Sets two columns of row `serial` if it is still pending (`set` assigns them from `$2`
/// and `$3`), stamping the writing epoch and time; returns whether the row was updated.
async fn update_pending(
    tx: &impl GenericClient,
    fence: &Fence,
    serial: u64,
    set: &str,
    values: [&(dyn ToSql + Sync); 2],
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE dm_topology SET {set}, written_epoch = $4, written_at = clock_timestamp() \
         WHERE serial = $1 AND state = 'pending'"
    );
    let updated = tx
        .execute(
            &sql,
            &[&serial_i64(serial), values[0], values[1], &fence.epoch],
        )
        .await?;
    Ok(updated == 1)
}

/// Marks a pending row sequenced (fenced). Returns the row's final timing: the given
/// one, or the one already recorded if the row was sequenced before.
pub async fn mark_sequenced(
    client: &mut Client,
    fence: &Fence,
    serial: u64,
    sequenced_ts: i64,
    effective_ts: i64,
) -> Result<(i64, i64), StoreError> {
    fenced_transaction(client, fence, async |tx| {
        let set = "state = 'sequenced', sequenced_ts = $2, effective_ts = $3";
        if update_pending(tx, fence, serial, set, [&sequenced_ts, &effective_ts]).await? {
            return Ok((sequenced_ts, effective_ts));
        }
        let row = tx
            .query_opt(
                "SELECT sequenced_ts, effective_ts FROM dm_topology WHERE serial = $1",
                &[&serial_i64(serial)],
            )
            .await?;
        match row.map(|r| (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1))) {
            Some((Some(s), Some(e))) => Ok((s, e)),
            _ => Err(StoreError::Corrupt {
                serial: serial_i64(serial),
                reason: "row to mark sequenced does not exist".into(),
            }),
        }
    })
    .await
}

/// Builds the topology state of every sequenced row.
pub fn state_of(records: &[TopologyRecord]) -> TopologyState {
    let mut state = TopologyState::new();
    for r in records {
        if let Some(s) = r.sequenced() {
            state.insert(s);
        }
    }
    state
}

/// Participants whose latest sequenced transaction is a replace with a permission
/// other than disabled.
pub fn allowlist_size(latest: &[TopologyRecord]) -> usize {
    latest
        .iter()
        .filter(|r| {
            matches!(
                (&r.tx.operation, &r.tx.mapping),
                (Operation::Replace, Mapping::Participant { permission, .. }) if permission.is_active()
            )
        })
        .count()
}
