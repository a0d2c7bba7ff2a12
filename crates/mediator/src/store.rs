//! The mediator's database: loading the state at activation and persisting
//! each processed batch of events, fenced by the lease, in one transaction.

use std::collections::BTreeMap;

use domain_lease::{Fence, LeaseError, fenced_transaction};
use domain_time::Timestamp;
use domain_topology::{SequencedTopology, TopologyTransaction};
use futures::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

/// A statement parameter.
type P = dyn ToSql + Sync;

use crate::protocol::{
    Changes, DECIDED_RETENTION, DecidedDeadline, Decision, Request, ResponseRecord, Restored,
};

/// Embedded migrations of the mediator's database (`migrations/mediator/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/mediator");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The database belongs to another mediator or domain.
    #[error(
        "the database belongs to mediator {found_mediator} of domain {found_domain}, not to {mediator} of {domain}"
    )]
    Foreign {
        mediator: String,
        domain: String,
        found_mediator: String,
        found_domain: String,
    },
    /// A stored row cannot be decoded.
    #[error("corrupt stored state: {0}")]
    Corrupt(String),
    /// A write did not find the state it expected (a bug, or a second writer).
    #[error("state invariant violated: {0}")]
    Invariant(String),
}

impl StoreError {
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Lease(e) if e.is_fenced())
    }

    /// Label for `mediator_session_failures_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Lease(e) if e.is_fenced() => "fenced",
            StoreError::Invariant(_) | StoreError::Corrupt(_) | StoreError::Foreign { .. } => {
                "invariant"
            }
            _ => "database",
        }
    }
}

/// A decided verdict that still has to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutVerdict {
    pub request_id: i64,
    /// Encoded `SignedVerdict`.
    pub signed_verdict: Vec<u8>,
    pub recipients: Vec<String>,
    pub max_sequencing_ts: Timestamp,
}

/// Everything activation needs.
#[derive(Debug, Default)]
pub struct Loaded {
    pub restored: Restored,
    /// Decided verdicts whose send was never acknowledged, by request id.
    pub unsent: Vec<OutVerdict>,
}

/// Refuses a database that belongs to another mediator or domain (read only, at start-up).
pub async fn check_owner(client: &Client, mediator: &str, domain: &str) -> Result<(), StoreError> {
    let row = client
        .query_opt("SELECT mediator_id, domain_id FROM med_state", &[])
        .await?;
    match row {
        Some(row) => owner_matches(row.get(0), row.get(1), mediator, domain),
        None => Ok(()),
    }
}

fn owner_matches(
    found_mediator: String,
    found_domain: String,
    mediator: &str,
    domain: &str,
) -> Result<(), StoreError> {
    if found_mediator == mediator && found_domain == domain {
        Ok(())
    } else {
        Err(StoreError::Foreign {
            mediator: mediator.into(),
            domain: domain.into(),
            found_mediator,
            found_domain,
        })
    }
}

/// Loads the persisted state (creating the state row on first use), inside a
/// fenced transaction so the snapshot is the one this epoch continues from.
pub async fn load(
    client: &mut Client,
    fence: &Fence,
    mediator: &str,
    domain: &str,
) -> Result<Loaded, StoreError> {
    fenced_transaction(client, fence, async |tx: &Transaction<'_>| {
        tx.execute(
            "INSERT INTO med_state (singleton, mediator_id, domain_id, last_counter, last_ts, written_epoch) \
             VALUES (true, $1, $2, -1, 0, $3) ON CONFLICT (singleton) DO NOTHING",
            &[&mediator, &domain, &fence.epoch],
        )
        .await?;
        let row = tx
            .query_one("SELECT mediator_id, domain_id, last_counter, last_ts FROM med_state", &[])
            .await?;
        owner_matches(row.get(0), row.get(1), mediator, domain)?;
        let last_counter: i64 = row.get(2);
        let last_ts: i64 = row.get(3);

        let mut topology = Vec::new();
        for row in tx
            .query(
                "SELECT serial, sequenced_ts, effective_ts, signed FROM med_topology ORDER BY serial",
                &[],
            )
            .await?
        {
            let serial: i64 = row.get(0);
            let signed: Vec<u8> = row.get(3);
            let tx = decode_topology(&signed, domain)
                .map_err(|e| StoreError::Corrupt(format!("topology serial {serial}: {e}")))?;
            topology.push(SequencedTopology {
                sequenced_ts: row.get(1),
                effective_ts: row.get(2),
                tx,
            });
        }

        let mut pending: BTreeMap<i64, Request> = BTreeMap::new();
        for row in tx
            .query(
                "SELECT request_id, counter, submitter, informees, confirmers, recipients, root_hash, deadline_ts \
                 FROM med_requests WHERE state = 'pending'",
                &[],
            )
            .await?
        {
            let request_id: i64 = row.get(0);
            pending.insert(
                request_id,
                Request {
                    request_id,
                    counter: row.get(1),
                    submitter: row.get(2),
                    informees: row.get(3),
                    confirmers: row.get(4),
                    recipients: row.get(5),
                    root_hash: row.get(6),
                    deadline: row.get(7),
                    responses: BTreeMap::new(),
                },
            );
        }
        for row in tx
            .query(
                "SELECT r.request_id, r.participant, r.ts, r.decision, r.reason \
                 FROM med_responses r JOIN med_requests q USING (request_id) WHERE q.state = 'pending'",
                &[],
            )
            .await?
        {
            let request_id: i64 = row.get(0);
            let participant: String = row.get(1);
            let decision: String = row.get(3);
            let decision = Decision::parse(&decision)
                .ok_or_else(|| StoreError::Corrupt(format!("response decision {decision:?}")))?;
            let request = pending.get_mut(&request_id).ok_or_else(|| {
                StoreError::Corrupt(format!("response for unknown request {request_id}"))
            })?;
            request.responses.insert(
                participant.clone(),
                ResponseRecord {
                    participant,
                    ts: row.get(2),
                    decision,
                    reason: row.get(4),
                },
            );
        }

        let since = Timestamp::from_micros(last_ts) - DECIDED_RETENTION;
        let decided = tx
            .query(
                "SELECT request_id, deadline_ts FROM med_requests WHERE state = 'decided' AND deadline_ts >= $1",
                &[&since],
            )
            .await?
            .into_iter()
            .map(|row| DecidedDeadline {
                request_id: row.get(0),
                deadline: row.get(1),
            })
            .collect();

        let unsent = tx
            .query(
                "SELECT request_id, verdict, recipients, max_sequencing_ts FROM med_requests \
                 WHERE verdict_state = 'unsent' ORDER BY request_id",
                &[],
            )
            .await?
            .into_iter()
            .map(|row| OutVerdict {
                request_id: row.get(0),
                signed_verdict: row.get(1),
                recipients: row.get(2),
                max_sequencing_ts: row.get(3),
            })
            .collect();

        Ok::<_, StoreError>(Loaded {
            restored: Restored {
                last_counter,
                last_ts,
                topology,
                pending: pending.into_values().collect(),
                decided,
            },
            unsent,
        })
    })
    .await
}

fn decode_topology(signed: &[u8], domain: &str) -> Result<TopologyTransaction, String> {
    TopologyTransaction::from_signed_bytes(signed, domain).map_err(|e| e.to_string())
}

/// Prepared statements of the processing connection.
pub struct Statements {
    insert_request: Statement,
    insert_response: Statement,
    decide: Statement,
    receipt: Statement,
    insert_topology: Statement,
    advance: Statement,
}

const INSERT_REQUEST: &str = "INSERT INTO med_requests (request_id, counter, submitter, informees, confirmers, \
     recipients, root_hash, deadline_ts, state, written_epoch) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)";
const INSERT_RESPONSE: &str = "INSERT INTO med_responses (request_id, participant, ts, decision, reason, written_epoch) \
     VALUES ($1, $2, $3, $4, $5, $6)";
const DECIDE: &str = "UPDATE med_requests SET state = 'decided', outcome = $2, decided_ts = $3, verdict = $4, \
     max_sequencing_ts = $5, verdict_state = 'unsent', written_epoch = $6, \
     decided_at = clock_timestamp() \
     WHERE request_id = $1 AND state = 'pending'";
const RECEIPT: &str = "UPDATE med_requests SET verdict_state = 'sequenced', verdict_ts = $2, written_epoch = $3 \
     WHERE request_id = $1 AND state = 'decided'";
const INSERT_TOPOLOGY: &str = "INSERT INTO med_topology (serial, sequenced_ts, effective_ts, counter, signed, written_epoch) \
     VALUES ($1, $2, $3, $4, $5, $6)";
const ADVANCE: &str = "UPDATE med_state SET last_counter = $1, last_ts = $2, written_epoch = $3, \
     written_at = clock_timestamp() WHERE last_counter < $1";

impl Statements {
    /// Prepares the statements (pipelined on the one connection).
    pub async fn prepare(client: &Client) -> Result<Self, StoreError> {
        let (insert_request, insert_response, decide, receipt, insert_topology, advance) = tokio::try_join!(
            client.prepare(INSERT_REQUEST),
            client.prepare(INSERT_RESPONSE),
            client.prepare(DECIDE),
            client.prepare(RECEIPT),
            client.prepare(INSERT_TOPOLOGY),
            client.prepare(ADVANCE),
        )?;
        Ok(Self {
            insert_request,
            insert_response,
            decide,
            receipt,
            insert_topology,
            advance,
        })
    }
}

/// Persists one processed batch and the new processed counter in one fenced
/// transaction. Statements within a phase are pipelined.
pub async fn persist(
    client: &mut Client,
    stmts: &Statements,
    fence: &Fence,
    changes: &Changes,
) -> Result<(), StoreError> {
    let epoch = fence.epoch;
    fenced_transaction(client, fence, async |tx: &Transaction<'_>| {
        // Phase 1: new rows that later statements refer to.
        let serials: Vec<i64> = changes
            .topology
            .iter()
            .map(|t| i64::try_from(t.serial).unwrap_or(i64::MAX))
            .collect();
        let mut phase1: Vec<(&Statement, Vec<&P>)> = Vec::new();
        for r in &changes.new_requests {
            phase1.push((
                &stmts.insert_request,
                vec![
                    &r.request_id as &P,
                    &r.counter,
                    &r.submitter,
                    &r.informees,
                    &r.confirmers,
                    &r.recipients,
                    &r.root_hash,
                    &r.deadline,
                    &epoch,
                ],
            ));
        }
        for (t, serial) in changes.topology.iter().zip(&serials) {
            phase1.push((
                &stmts.insert_topology,
                vec![
                    serial as &P,
                    &t.sequenced_ts,
                    &t.effective_ts,
                    &t.counter,
                    &t.signed,
                    &epoch,
                ],
            ));
        }
        try_join_all(phase1.iter().map(|(s, p)| tx.execute(*s, p))).await?;

        // Phase 2: responses, decisions, receipts.
        let decisions: Vec<&str> = changes
            .responses
            .iter()
            .map(|(_, r)| r.decision.as_str())
            .collect();
        let responses: Vec<Vec<&P>> = changes
            .responses
            .iter()
            .zip(&decisions)
            .map(|((request_id, r), decision)| {
                vec![
                    request_id as &P,
                    &r.participant,
                    &r.ts,
                    decision,
                    &r.reason,
                    &epoch,
                ]
            })
            .collect();
        let labels: Vec<&str> = changes
            .decisions
            .iter()
            .map(|d| d.outcome.label())
            .collect();
        let decided: Vec<Vec<&P>> = changes
            .decisions
            .iter()
            .zip(&labels)
            .map(|(d, label)| {
                vec![
                    &d.request_id as &P,
                    label,
                    &d.decided_ts,
                    &d.signed_verdict,
                    &d.max_sequencing_ts,
                    &epoch,
                ]
            })
            .collect();
        let receipts: Vec<Vec<&P>> = changes
            .receipts
            .iter()
            .map(|r| vec![&r.request_id as &P, &r.sequenced_ts, &epoch])
            .collect();
        let (_, decided, receipts) = futures::try_join!(
            try_join_all(
                responses
                    .iter()
                    .map(|p| tx.execute(&stmts.insert_response, p))
            ),
            try_join_all(decided.iter().map(|p| tx.execute(&stmts.decide, p))),
            try_join_all(receipts.iter().map(|p| tx.execute(&stmts.receipt, p)))
        )?;
        for (d, n) in changes.decisions.iter().zip(decided) {
            if n != 1 {
                return Err(StoreError::Invariant(format!(
                    "request {} was not pending when deciding it",
                    d.request_id
                )));
            }
        }
        for (receipt, n) in changes.receipts.iter().zip(receipts) {
            if n != 1 {
                tracing::warn!(
                    request_id = receipt.request_id,
                    "receipt of a verdict this database never decided"
                );
            }
        }

        // Phase 3: the processed counter moves with everything above.
        if changes.events > 0 {
            let n = tx
                .execute(
                    &stmts.advance,
                    &[&changes.last_counter, &changes.last_ts, &epoch],
                )
                .await?;
            if n != 1 {
                return Err(StoreError::Invariant(format!(
                    "processed counter did not advance to {}",
                    changes.last_counter
                )));
            }
        }
        crate::fault::hold_fenced_transaction().await;
        Ok::<_, StoreError>(())
    })
    .await
}

/// Where a verdict's send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    Sent,
    Expired,
    Undeliverable,
}

impl SendState {
    pub fn as_str(self) -> &'static str {
        match self {
            SendState::Sent => "sent",
            SendState::Expired => "expired",
            SendState::Undeliverable => "undeliverable",
        }
    }
}

/// Records the end of verdict sends (fenced). Only `unsent` rows change: a
/// receipt processed meanwhile (`sequenced`) is never downgraded.
pub async fn mark_verdicts(
    client: &mut Client,
    fence: &Fence,
    marks: &[(i64, SendState)],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = marks.iter().map(|(id, _)| *id).collect();
    let states: Vec<&str> = marks.iter().map(|(_, s)| s.as_str()).collect();
    let epoch = fence.epoch;
    fenced_transaction(client, fence, async |tx: &Transaction<'_>| {
        tx.execute(
            "UPDATE med_requests q SET verdict_state = m.state, written_epoch = $3 \
             FROM unnest($1::bigint[], $2::text[]) AS m(request_id, state) \
             WHERE q.request_id = m.request_id AND q.verdict_state = 'unsent'",
            &[&ids, &states, &epoch],
        )
        .await?;
        Ok::<_, StoreError>(())
    })
    .await
}

/// Deletes up to `limit` decided requests whose verdict needs nothing more (`sent`,
/// `sequenced`, `expired`, `undeliverable`) and whose deadline is before `before_ts`
/// (sequencer time), with their responses, in one fenced transaction. Returns how many
/// requests were deleted. Pending requests and unsent verdicts are never touched.
pub async fn prune(
    client: &mut Client,
    fence: &Fence,
    before_ts: Timestamp,
    limit: i64,
) -> Result<u64, StoreError> {
    fenced_transaction(client, fence, async |tx: &Transaction<'_>| {
        let ids: Vec<i64> = tx
            .query(
                "SELECT request_id FROM med_requests \
                 WHERE deadline_ts < $1 AND state = 'decided' \
                   AND verdict_state IN ('sent', 'sequenced', 'expired', 'undeliverable') \
                 ORDER BY deadline_ts LIMIT $2",
                &[&before_ts, &limit],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            return Ok::<_, StoreError>(0);
        }
        tx.execute(
            "DELETE FROM med_responses WHERE request_id = ANY($1)",
            &[&ids],
        )
        .await?;
        let deleted = tx
            .execute(
                "DELETE FROM med_requests WHERE request_id = ANY($1)",
                &[&ids],
            )
            .await?;
        Ok(deleted)
    })
    .await
}

/// What a passive replica reports: (last processed counter, pending requests).
pub async fn status(client: &Client) -> Result<(i64, i64), StoreError> {
    let row = client
        .query_opt(
            "SELECT last_counter, (SELECT count(*) FROM med_requests WHERE state = 'pending') FROM med_state",
            &[],
        )
        .await?;
    Ok(row.map_or((-1, 0), |r| (r.get(0), r.get(1))))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
