//! Pruning: how far every member is done with its stream, moving the lower bound, deleting
//! below it, and the housekeeping of expired nonces, tokens and deduplication rows.
//!
//! # The bound
//!
//! A member lets pruning reach the timestamp just below its first event above its
//! acknowledgement (or the safe watermark when it has none): events it has acknowledged
//! are done, and events not addressed to it do not concern it. So an idle member never
//! holds pruning back, only one with unacknowledged events of its own. The domain
//! manager member and disabled members are not counted (the former never reads its
//! stream). Events go only below `min(every counted member's bound, safe watermark,
//! now − retention)`, unless an operator forces a bound.
//!
//! # Topology is never pruned
//!
//! Events that carry topology transactions stay (they grow with admin activity, not
//! traffic): a member admitted later starts its stream just before the first topology
//! transaction and derives the same topology state from it as everybody else. Below the
//! lower bound a member's stream therefore consists of exactly these retained events;
//! [`BELOW_BOUND_RULE`] states that rule once, and every query that counts or reads a
//! member's events applies it, so half-finished deletes are never visible in counters.

use std::time::Duration;

use domain_time::Timestamp;
use tokio_postgres::GenericClient;

use crate::store::StoreError;
use crate::timestamp::clock;

/// Session advisory lock held by whichever instance (or admin call) prunes.
pub const PRUNING_LOCK: i64 = domain_storage::locks::SEQ_PRUNING;

/// SQL predicate on a member event timestamp `ts` (a column named `ts` in scope) with the
/// lower bound as parameter `$L`: visible above the bound, and below it only when the event
/// carries topology. Callers substitute `$L`.
pub const BELOW_BOUND_RULE: &str = "(ts > $L OR ts IN (SELECT sequenced_ts FROM seq_topology))";

/// [`BELOW_BOUND_RULE`] with the lower bound as parameter number `n`.
pub fn below_bound_rule(n: usize) -> String {
    BELOW_BOUND_RULE.replace("$L", &format!("${n}"))
}

/// SQL that writes, for every member, a checkpoint at its newest event at or below `$1`
/// when at least `min_new` (SQL: a literal or a parameter) of its events lie between its
/// newest checkpoint at or below `$1` and `$1`. Events are counted under `rule` (a
/// [`BELOW_BOUND_RULE`] with the bound substituted), exactly as readers count them.
/// Deterministic, so a checkpoint two instances both write is the same row.
/// `members` is an SQL condition on `m` (a `seq_members` row) choosing the members to probe.
pub fn checkpoints_sql(rule: &str, min_new: &str, members: &str) -> String {
    format!(
        "INSERT INTO seq_checkpoints (member_id, counter, ts)
         SELECT m.id, cp.counter + x.n, x.max_ts
         FROM seq_members m
         CROSS JOIN LATERAL (SELECT counter, ts FROM seq_checkpoints c WHERE c.member_id = m.id AND c.ts <= $1
                             ORDER BY counter DESC LIMIT 1) cp
         CROSS JOIN LATERAL (
             SELECT count(*) AS n, max(u.ts) AS max_ts FROM (
                 SELECT r.ts FROM seq_recipients r WHERE r.member_id = m.id AND r.ts > cp.ts AND r.ts <= $1
                 UNION ALL
                 SELECT r.ts FROM seq_recipients r WHERE r.member_id = -1 AND r.ts > greatest(cp.ts, m.registered_ts)
                                                     AND r.ts <= $1) u
             WHERE {rule}) x
         WHERE x.n >= {min_new} AND ({members})
         ON CONFLICT DO NOTHING"
    )
}

/// Tables the pruner deletes from, in the order they are reported.
pub const TABLES: [&str; 7] = [
    "seq_events",
    "seq_recipients",
    "seq_checkpoints",
    "seq_dedup",
    "seq_nonces",
    "seq_tokens",
    "seq_topology",
];

/// One member's part in the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberBound {
    pub member: String,
    pub kind: &'static str,
    pub enabled: bool,
    pub acknowledged_ts: Option<Timestamp>,
    /// Whether the member holds pruning back at all (enabled, reads its stream).
    pub counted: bool,
    /// How far this member lets pruning go.
    pub bound: Timestamp,
}

/// Where pruning stands.
#[derive(Debug, Clone)]
pub struct PruningView {
    pub lower_bound: Timestamp,
    pub safe_watermark: Timestamp,
    pub now: Timestamp,
    pub retention: Duration,
    pub retention_bound: Timestamp,
    pub members: Vec<MemberBound>,
    /// Where a prune now would move the bound (never below `lower_bound`).
    pub candidate: Timestamp,
    /// The counted member whose bound is what limits pruning, if a member does.
    pub holding_back: Option<String>,
}

/// Member kind from the id prefix.
pub fn member_kind(member: &str) -> &'static str {
    match member.split("::").next() {
        Some("PAR") => "participant",
        Some("MED") => "mediator",
        Some("SEQ") => "sequencer",
        Some("DOM") => "domain-manager",
        _ => "unknown",
    }
}

/// `now − retention`, saturating at the epoch.
pub fn retention_bound(now: Timestamp, retention: Duration) -> Timestamp {
    (now - retention).max(Timestamp::EPOCH)
}

/// Computes the bound of every member and the candidate bound. Read-only.
pub async fn view(
    client: &impl GenericClient,
    retention: Duration,
) -> Result<PruningView, StoreError> {
    let lower_bound = crate::store::lower_bound(client).await?;
    let safe_watermark = crate::store::safe_watermark(client).await?;
    let now = clock();
    let retention_bound = retention_bound(now, retention);
    // A member's next event is the first one of its stream above its acknowledgement, by
    // the same visibility rule readers apply: below the lower bound only retained topology
    // events count. A member admitted with the topology history therefore holds pruning
    // until it has read (and acknowledged) that history; otherwise the checkpoint written
    // at the next bound would count those events as pruned and refuse its first counters.
    let rows = client
        .query(
            "SELECT m.member, m.enabled, m.acknowledged_ts,
                    (SELECT min(t) FROM (
                        (SELECT r.ts AS t FROM seq_recipients r
                          WHERE r.member_id = m.id AND r.ts > coalesce(m.acknowledged_ts, m.registered_ts)
                            AND (r.ts > $1 OR r.ts IN (SELECT sequenced_ts FROM seq_topology))
                          ORDER BY r.ts LIMIT 1)
                        UNION ALL
                        (SELECT r.ts FROM seq_recipients r
                          WHERE r.member_id = -1
                            AND r.ts > greatest(coalesce(m.acknowledged_ts, m.registered_ts), m.registered_ts)
                            AND (r.ts > $1 OR r.ts IN (SELECT sequenced_ts FROM seq_topology))
                          ORDER BY r.ts LIMIT 1)) x) AS next_event
             FROM seq_members m ORDER BY m.member",
            &[&lower_bound],
        )
        .await?;
    let mut members = Vec::with_capacity(rows.len());
    for r in &rows {
        let member: String = r.get(0);
        let enabled: bool = r.get(1);
        let acknowledged_ts: Option<Timestamp> = r.get(2);
        let next_event: Option<Timestamp> = r.get(3);
        let kind = member_kind(&member);
        let counted = enabled && kind != "domain-manager";
        let bound = match next_event {
            Some(next) if next <= safe_watermark => next - Duration::from_micros(1),
            _ => safe_watermark,
        };
        members.push(MemberBound {
            member,
            kind,
            enabled,
            acknowledged_ts,
            counted,
            bound,
        });
    }
    let time_limit = safe_watermark.min(retention_bound);
    let lowest = members
        .iter()
        .filter(|m| m.counted)
        .min_by(|a, b| a.bound.cmp(&b.bound).then_with(|| a.member.cmp(&b.member)));
    let holding_back = lowest
        .filter(|m| m.bound < time_limit)
        .map(|m| m.member.clone());
    let candidate = lowest
        .map_or(time_limit, |m| m.bound.min(time_limit))
        .max(lower_bound);
    Ok(PruningView {
        lower_bound,
        safe_watermark,
        now,
        retention,
        retention_bound,
        members,
        candidate,
        holding_back,
    })
}

/// Exact row counts of the tables pruning bounds.
pub async fn table_rows(client: &impl GenericClient) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        // Table names come from the constant above, never from input.
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        out.push((table.to_owned(), u64::try_from(n).unwrap_or(0)));
    }
    Ok(out)
}

/// What one pruning round did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    pub dry_run: bool,
    pub previous_bound: Timestamp,
    pub bound: Timestamp,
    /// Rows deleted per table (dry run: rows that would be deleted).
    pub deleted: Vec<(&'static str, u64)>,
}

impl PruneOutcome {
    pub fn deleted_from(&self, table: &str) -> u64 {
        self.deleted
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Limits of one pruning round.
#[derive(Debug, Clone, Copy)]
pub struct Housekeeping {
    /// Deduplication rows whose max sequencing time lies below this go.
    pub dedup_before: Timestamp,
    /// Rows per delete statement.
    pub batch: i64,
}

/// Moves the lower bound to `bound` (if above the current one) and deletes below it, then
/// deletes expired nonces, tokens and deduplication rows whether or not the bound moved.
/// The caller holds [`PRUNING_LOCK`] and has checked `bound` against the safe watermark.
pub async fn prune_to(
    client: &mut deadpool_postgres::Object,
    bound: Timestamp,
    limits: Housekeeping,
    dry_run: bool,
    respect_members: Option<Duration>,
) -> Result<PruneOutcome, StoreError> {
    let previous = crate::store::lower_bound(&***client).await?;
    let mut outcome = PruneOutcome {
        dry_run,
        previous_bound: previous,
        bound: bound.max(previous),
        deleted: Vec::new(),
    };
    let moves = bound > previous;
    let retained = "ts NOT IN (SELECT sequenced_ts FROM seq_topology)";
    if dry_run {
        let (events, recipients) = if moves {
            let r = client
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(sum(cardinality(recipients)), 0)::bigint
                         FROM seq_events WHERE ts <= $1 AND {retained}"
                    ),
                    &[&bound],
                )
                .await?;
            (r.get::<_, i64>(0), r.get::<_, i64>(1))
        } else {
            (0, 0)
        };
        // Approximate: the real run first adds a checkpoint at the bound, which can make
        // each member's current newest one deletable as well.
        let checkpoints: i64 = if moves {
            client
                .query_one(
                    "SELECT count(*) FROM seq_checkpoints c WHERE c.ts <= $1 AND c.counter <
                       (SELECT max(k.counter) FROM seq_checkpoints k WHERE k.member_id = c.member_id AND k.ts <= $1)",
                    &[&bound],
                )
                .await?
                .get(0)
        } else {
            0
        };
        // What housekeeping deletes, in one round trip.
        let expired = client
            .query_one(
                "SELECT (SELECT count(*) FROM seq_dedup WHERE max_sequencing_ts < $1),
                        (SELECT count(*) FROM seq_nonces WHERE expires_at < clock_timestamp()),
                        (SELECT count(*) FROM seq_tokens WHERE expires_at < clock_timestamp())",
                &[&limits.dedup_before],
            )
            .await?;
        let (dedup, nonces, tokens): (i64, i64, i64) =
            (expired.get(0), expired.get(1), expired.get(2));
        outcome.deleted = vec![
            ("seq_events", to_u64(events)),
            ("seq_recipients", to_u64(recipients)),
            ("seq_checkpoints", to_u64(checkpoints)),
            ("seq_dedup", to_u64(dedup)),
            ("seq_nonces", to_u64(nonces)),
            ("seq_tokens", to_u64(tokens)),
        ];
        return Ok(outcome);
    }

    let (mut events, mut recipients, mut checkpoints) = (0u64, 0u64, 0u64);
    if moves {
        // Checkpoints at the bound first (counted under the rule of the *current* bound,
        // exactly as readers count), then the bound itself, in one transaction: a reader's
        // snapshot sees either the old bound or the new bound with its checkpoints.
        let rule = below_bound_rule(2);
        let tx = client.transaction().await?;
        // The topology applier registers members (with the topology history, so below the
        // bound) under this lock: holding it, every registration is either visible to the
        // re-check below or happens after the commit, when readers already count it under
        // the new bound's rule.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&crate::store::TOPOLOGY_APPLY_LOCK],
        )
        .await?;
        let bound = match respect_members {
            Some(retention) => bound.min(view(&*tx, retention).await?.candidate),
            None => bound,
        };
        if bound <= previous {
            tx.commit().await?;
            outcome.bound = previous;
            return housekeep(client, limits, outcome).await;
        }
        outcome.bound = bound;
        tx.execute(&checkpoints_sql(&rule, "1", "true"), &[&bound, &previous])
            .await?;
        tx.execute(
            "UPDATE seq_lower_bound SET ts = greatest(ts, $1)",
            &[&bound],
        )
        .await?;
        tx.commit().await?;
        // Bounded deletes keep each transaction short; writers insert above the bound and
        // never touch these rows. An event's recipient rows are exactly its `recipients`
        // array, so they go by primary key in the same statement.
        loop {
            let r = client
                .query_one(
                    &format!(
                        "WITH e AS (
                           DELETE FROM seq_events WHERE ts IN (
                             SELECT ts FROM seq_events WHERE ts <= $1 AND {retained} ORDER BY ts LIMIT $2)
                           RETURNING ts, recipients),
                         r AS (
                           DELETE FROM seq_recipients r USING (SELECT e.ts, unnest(e.recipients) AS member_id FROM e) x
                           WHERE r.member_id = x.member_id AND r.ts = x.ts RETURNING 1)
                         SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM r)"
                    ),
                    &[&bound, &limits.batch],
                )
                .await?;
            let (e, rc): (i64, i64) = (r.get(0), r.get(1));
            events += to_u64(e);
            recipients += to_u64(rc);
            if e < limits.batch {
                break;
            }
        }
        // Every member keeps its newest checkpoint at or below the bound (readers and the
        // pruned-counter check start there); older ones are never read again.
        checkpoints = client
            .execute(
                "DELETE FROM seq_checkpoints c
                 USING (SELECT member_id, max(counter) AS keep FROM seq_checkpoints WHERE ts <= $1 GROUP BY member_id) k
                 WHERE c.member_id = k.member_id AND c.counter < k.keep",
                &[&bound],
            )
            .await?;
    }
    outcome.deleted = vec![
        ("seq_events", events),
        ("seq_recipients", recipients),
        ("seq_checkpoints", checkpoints),
    ];
    housekeep(client, limits, outcome).await
}

/// Expired deduplication rows, nonces and tokens, whether or not the bound moved.
async fn housekeep(
    client: &deadpool_postgres::Object,
    limits: Housekeeping,
    mut outcome: PruneOutcome,
) -> Result<PruneOutcome, StoreError> {
    for table in ["seq_events", "seq_recipients", "seq_checkpoints"] {
        if !outcome.deleted.iter().any(|(t, _)| *t == table) {
            outcome.deleted.push((table, 0));
        }
    }
    let dedup = delete_in_batches(
        client,
        "seq_dedup",
        "max_sequencing_ts < $1",
        Some(limits.dedup_before),
        limits.batch,
    )
    .await?;
    let nonces = delete_in_batches(
        client,
        "seq_nonces",
        "expires_at < clock_timestamp()",
        None,
        limits.batch,
    )
    .await?;
    let tokens = delete_in_batches(
        client,
        "seq_tokens",
        "expires_at < clock_timestamp()",
        None,
        limits.batch,
    )
    .await?;
    outcome.deleted.extend([
        ("seq_dedup", dedup),
        ("seq_nonces", nonces),
        ("seq_tokens", tokens),
    ]);
    Ok(outcome)
}

/// Deletes rows matching `predicate` (which may use `$1`) `batch` at a time, each batch
/// its own short transaction, so a writer inserting or retrying meanwhile waits at most
/// for one batch.
async fn delete_in_batches(
    client: &deadpool_postgres::Object,
    table: &'static str,
    predicate: &'static str,
    param: Option<Timestamp>,
    batch: i64,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let n = match param {
            Some(p) => {
                client
                    .execute(
                        &format!(
                            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                               SELECT ctid FROM {table} WHERE {predicate} LIMIT $2))"
                        ),
                        &[&p, &batch],
                    )
                    .await?
            }
            None => {
                client
                    .execute(
                        &format!(
                            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                               SELECT ctid FROM {table} WHERE {predicate} LIMIT $1))"
                        ),
                        &[&batch],
                    )
                    .await?
            }
        };
        total += n;
        if n < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// One regular pruning round: to the candidate bound, with housekeeping.
pub async fn prune_round(
    client: &mut deadpool_postgres::Object,
    retention: Duration,
    batch: i64,
    dry_run: bool,
) -> Result<(PruningView, PruneOutcome), StoreError> {
    let view = view(&***client, retention).await?;
    let limits = housekeeping(&view, batch);
    let outcome = prune_to(
        client,
        view.candidate,
        limits,
        dry_run,
        Some(view.retention),
    )
    .await?;
    Ok((view, outcome))
}

/// Housekeeping limits under `view`: deduplication rows stay for the retention window
/// past their max sequencing time, measured in sequencer time that has surely passed.
pub fn housekeeping(view: &PruningView, batch: i64) -> Housekeeping {
    Housekeeping {
        dedup_before: retention_bound(view.safe_watermark.min(view.now), view.retention),
        batch,
    }
}

/// Records a real (not dry) round in the metrics.
pub fn record(outcome: &PruneOutcome) {
    if outcome.dry_run {
        return;
    }
    for (table, n) in &outcome.deleted {
        if *n > 0 {
            metrics::counter!(crate::metrics::PRUNED_ROWS, "table" => *table).increment(*n);
        }
    }
    let events = outcome.deleted_from("seq_events");
    if events > 0 {
        metrics::counter!(crate::metrics::EVENTS_PRUNED).increment(events);
    }
}

/// Publishes the view's gauges: bound age, retention, and which member holds pruning
/// back (one series per member that ever did, 1 for the current one, else 0; bounded by
/// the member count).
pub fn publish(
    view: &PruningView,
    oldest_event: Option<Timestamp>,
    previous_holder: &mut Option<String>,
) {
    use crate::metrics as m;
    // Before the first prune the bound is 0; the data's age is then that of the oldest
    // stored event, which is what the stalled-pruning alert must see.
    let reference = if view.lower_bound > Timestamp::EPOCH {
        Some(view.lower_bound)
    } else {
        oldest_event
    };
    let age = reference.map_or(0.0, |r| seconds_after(view.now, r));
    metrics::gauge!(m::PRUNING_BOUND_AGE).set(age);
    metrics::gauge!(m::PRUNING_RETENTION).set(view.retention.as_secs_f64());
    let candidate_lag = seconds_after(view.now, view.candidate);
    metrics::gauge!(m::PRUNING_CANDIDATE_AGE).set(candidate_lag);
    if *previous_holder != view.holding_back {
        if let Some(old) = previous_holder.take() {
            metrics::gauge!(m::PRUNING_HOLDING_BACK, "member" => old).set(0.0);
        }
        if let Some(new) = &view.holding_back {
            metrics::gauge!(m::PRUNING_HOLDING_BACK, "member" => new.clone()).set(1.0);
        }
        previous_holder.clone_from(&view.holding_back);
    }
}

/// How many seconds `later` lies after `earlier` (0 when it does not).
fn seconds_after(later: Timestamp, earlier: Timestamp) -> f64 {
    later
        .duration_since(earlier)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Timestamp of the oldest stored event (a primary-key lookup).
pub async fn oldest_event(client: &impl GenericClient) -> Result<Option<Timestamp>, StoreError> {
    Ok(client
        .query_one("SELECT min(ts) FROM seq_events", &[])
        .await?
        .get(0))
}

/// Estimated live rows per pruned table from the statistics collector: cheap enough to
/// sample every few seconds (exact counts are in [`table_rows`]).
pub async fn estimated_rows(client: &impl GenericClient) -> Result<Vec<(String, f64)>, StoreError> {
    let rows = client
        .query(
            "SELECT relname::text, n_live_tup::float8 FROM pg_stat_user_tables
             WHERE relname = ANY($1::text[])",
            &[&TABLES.to_vec()],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Holds [`PRUNING_LOCK`] on a pooled connection; [`LockedClient::release`] unlocks, and a
/// connection whose unlock fails is taken out of the pool so the lock dies with it.
pub struct LockedClient {
    client: Option<deadpool_postgres::Object>,
}

impl LockedClient {
    /// Tries to take the lock once.
    pub async fn try_lock(
        client: deadpool_postgres::Object,
    ) -> Result<Option<LockedClient>, StoreError> {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNING_LOCK])
            .await?
            .get(0);
        Ok(locked.then_some(LockedClient {
            client: Some(client),
        }))
    }

    pub fn client(&mut self) -> &mut deadpool_postgres::Object {
        // Present until `release` consumes self.
        self.client
            .as_mut()
            .expect("LockedClient holds its connection until released")
    }

    pub async fn release(mut self) {
        if let Some(client) = self.client.take() {
            let unlocked = client
                .query_one("SELECT pg_advisory_unlock($1)", &[&PRUNING_LOCK])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false);
            if !unlocked {
                // Never hand a connection that may still hold the lock back to the pool.
                drop(deadpool_postgres::Object::take(client));
            }
        }
    }
}

impl Drop for LockedClient {
    fn drop(&mut self) {
        // Dropped without release (a cancelled future): the lock may still be held, so
        // the connection must not return to the pool.
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_kinds_from_prefix() {
        assert_eq!(member_kind("PAR::alice::1220ab"), "participant");
        assert_eq!(member_kind("MED::m::1220ab"), "mediator");
        assert_eq!(member_kind("DOM::d::1220ab"), "domain-manager");
        assert_eq!(member_kind("SEQ::s::1220ab"), "sequencer");
        assert_eq!(member_kind("garbage"), "unknown");
    }

    #[test]
    fn retention_bound_saturates() {
        let ts = Timestamp::from_micros;
        assert_eq!(
            retention_bound(ts(10_000_000), Duration::from_secs(3)),
            ts(7_000_000)
        );
        assert_eq!(
            retention_bound(ts(10), Duration::from_secs(3)),
            Timestamp::EPOCH
        );
        assert_eq!(retention_bound(ts(10), Duration::MAX), Timestamp::EPOCH);
        assert_eq!(retention_bound(ts(10), Duration::ZERO), ts(10));
    }

    #[test]
    fn rule_takes_its_parameter_number() {
        assert_eq!(
            below_bound_rule(6),
            "(ts > $6 OR ts IN (SELECT sequenced_ts FROM seq_topology))"
        );
    }
}
