//! The participant's database (`migrations/participant/`): stream position, topology,
//! pending requests, committed transactions and the response outbox. Every processed
//! batch is one transaction ([`commit`]).

use domain_proto::sequencer::v1 as pb;
use domain_topology::{SequencedTopology, TopologyTransaction};
use prost::Message as _;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row as _, Transaction};

use crate::protocol::{Changes, Outgoing, PendingRequest, Restored};

/// Advisory lock key held by the running node (one process per database).
pub const INSTANCE_LOCK_KEY: i64 = domain_storage::locks::PARTICIPANT_INSTANCE;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "this database belongs to {found_participant} on domain {found_domain}, not {participant} on {domain}; use another database"
    )]
    Foreign {
        participant: String,
        domain: String,
        found_participant: String,
        found_domain: String,
    },
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

/// What a session loads at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub restored: Restored,
    /// The last processed event, to resume after (fork detection).
    pub last_event: Option<pb::SequencedEvent>,
    pub outbox: Vec<Outgoing>,
}

/// Records which participant and domain this database belongs to (first connection), or
/// checks it.
pub async fn claim(pool: &PgPool, participant: &str, domain: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO par_state (participant_id, domain_id) VALUES ($1, $2) ON CONFLICT (singleton) DO NOTHING",
    )
    .bind(participant)
    .bind(domain)
    .execute(pool)
    .await?;
    let row = sqlx::query("SELECT participant_id, domain_id FROM par_state")
        .fetch_one(pool)
        .await?;
    let (p, d): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    if p != participant || d != domain {
        return Err(StoreError::Foreign {
            participant: participant.to_owned(),
            domain: domain.to_owned(),
            found_participant: p,
            found_domain: d,
        });
    }
    Ok(())
}

/// The domain this database belongs to, if any.
pub async fn domain_of(pool: &PgPool) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT domain_id FROM par_state")
        .fetch_optional(pool)
        .await?)
}

/// Loads everything a session needs.
pub async fn load(pool: &PgPool, domain_id: &str) -> Result<Loaded, StoreError> {
    let row = sqlx::query("SELECT last_counter, last_ts, last_event FROM par_state")
        .fetch_one(pool)
        .await?;
    let last_counter: i64 = row.try_get(0)?;
    let last_ts: i64 = row.try_get(1)?;
    let last_event: Option<Vec<u8>> = row.try_get(2)?;
    let last_event = last_event
        .map(|b| pb::SequencedEvent::decode(b.as_slice()))
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            table: "par_state",
            reason: format!("last_event: {e}"),
        })?;
    let mut topology = Vec::new();
    for r in sqlx::query(
        "SELECT serial, sequenced_ts, effective_ts, signed FROM par_topology ORDER BY serial",
    )
    .fetch_all(pool)
    .await?
    {
        let signed: Vec<u8> = r.try_get(3)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            table: "par_topology",
            reason,
        };
        let tx = TopologyTransaction::from_signed_bytes(&signed, domain_id)
            .map_err(|e| corrupt(e.to_string()))?;
        topology.push(SequencedTopology {
            sequenced_ts: r.try_get(1)?,
            effective_ts: r.try_get(2)?,
            tx,
        });
    }
    // Columns named as the fields (`FromRow`).
    let pending = sqlx::query_as::<_, PendingRequest>(
        "SELECT request_id, submitter, informees, confirmers, mediator, root_hash, payload, message_id
         FROM par_pending_requests ORDER BY request_id",
    )
    .fetch_all(pool)
    .await?;
    let outbox = sqlx::query_as::<_, Outgoing>(
        "SELECT message_id, send_request, max_sequencing_micros, approve FROM par_outbox ORDER BY created_at",
    )
    .fetch_all(pool)
    .await?;
    Ok(Loaded {
        restored: Restored {
            last_counter,
            last_ts,
            topology,
            pending,
        },
        last_event,
        outbox,
    })
}

/// Persists one processed batch and the new position, atomically.
pub async fn commit(pool: &PgPool, changes: &Changes) -> Result<(), StoreError> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    for t in &changes.topology {
        sqlx::query(
            "INSERT INTO par_topology (serial, sequenced_ts, effective_ts, signed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (serial) DO NOTHING",
        )
        .bind(i64::try_from(t.serial).unwrap_or(i64::MAX))
        .bind(t.sequenced_ts)
        .bind(t.effective_ts)
        .bind(&t.signed)
        .execute(&mut *tx)
        .await?;
    }
    for p in &changes.new_pending {
        sqlx::query(
            "INSERT INTO par_pending_requests
               (request_id, submitter, informees, confirmers, mediator, root_hash, payload, message_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(p.request_id)
        .bind(&p.submitter)
        .bind(&p.informees)
        .bind(&p.confirmers)
        .bind(&p.mediator)
        .bind(&p.root_hash)
        .bind(&p.payload)
        .bind(&p.message_id)
        .execute(&mut *tx)
        .await?;
    }
    for c in &changes.committed {
        sqlx::query(
            "INSERT INTO par_transactions
               (request_id, root_hash, submitter, payload, verdict, signed_verdict, sequenced_ts)
             VALUES ($1, $2, $3, $4, 'approved', $5, $6) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(c.request_id)
        .bind(&c.root_hash)
        .bind(&c.submitter)
        .bind(&c.payload)
        .bind(&c.signed_verdict)
        .bind(c.sequenced_ts)
        .execute(&mut *tx)
        .await?;
    }
    if !changes.removed_pending.is_empty() {
        sqlx::query("DELETE FROM par_pending_requests WHERE request_id = ANY($1)")
            .bind(&changes.removed_pending)
            .execute(&mut *tx)
            .await?;
    }
    for o in &changes.outbox {
        sqlx::query(
            "INSERT INTO par_outbox (message_id, send_request, max_sequencing_micros, approve) VALUES ($1, $2, $3, $4)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&o.message_id)
        .bind(&o.send_request)
        .bind(o.max_sequencing_micros)
        .bind(o.approve)
        .execute(&mut *tx)
        .await?;
    }
    if changes.events > 0 {
        let updated = sqlx::query(
            "UPDATE par_state SET last_counter = $1, last_ts = $2, last_event = $3, updated_at = now()
             WHERE last_counter < $1",
        )
        .bind(changes.last_counter)
        .bind(changes.last_ts)
        .bind(&changes.last_event)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Corrupt {
                table: "par_state",
                reason: format!(
                    "processed counter did not advance to {} (another process on this database?)",
                    changes.last_counter
                ),
            });
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Removes a sent (or expired) response from the outbox.
pub async fn outbox_done(pool: &PgPool, message_id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM par_outbox WHERE message_id = $1")
        .bind(message_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Number of committed transactions.
pub async fn committed_count(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM par_transactions")
        .fetch_one(pool)
        .await?)
}

/// The last processed counter (-1 before the first event or without a domain).
pub async fn last_counter(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT last_counter FROM par_state")
        .fetch_optional(pool)
        .await?
        .unwrap_or(-1))
}
