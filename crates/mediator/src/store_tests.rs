//! Store tests against a real PostgreSQL (the testkit's shared cluster or
//! `DATABASE_URL`): what is persisted is what is loaded, and a stale epoch
//! writes nothing.

use std::sync::Arc;
use std::time::Duration;

use domain_identity::{DomainId, MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_lease::Fence;
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_testkit::pg::PgCluster;
use domain_time::Timestamp;
use domain_topology::{DomainParameters, Mapping, Operation, Permission};
use prost::Message as _;

use super::*;
use crate::protocol::tests::{allowlisted, member};
use crate::protocol::{Event, Processor, ProcessorSettings};

struct Fixture {
    client: Client,
    domain_key: SigningKeyPair,
    domain_id: DomainId,
    settings: ProcessorSettings,
    a: (MemberId, Arc<SigningKeyPair>),
    b: (MemberId, Arc<SigningKeyPair>),
}

async fn fixture(prefix: &str) -> Fixture {
    let db = PgCluster::shared().create_database(prefix).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("sqlx connect");
    MIGRATOR.run(&pool).await.expect("migrate");
    pool.close().await;
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO leases VALUES ('mediator', 'h1', '', 1, clock_timestamp() + interval '1 hour', clock_timestamp())",
            &[],
        )
        .await
        .expect("lease");
    let domain_key = SigningKeyPair::from_seed(&[1; 32]);
    let domain_id = DomainId::new(UniqueId::new("dom", *domain_key.fingerprint()).expect("id"));
    let mediator = member(MemberRole::Mediator, "med", 2);
    Fixture {
        client,
        settings: ProcessorSettings {
            mediator_id: mediator.0.clone(),
            domain_id: domain_id.clone(),
            key: mediator.1.clone(),
            verdict_ttl: std::time::Duration::from_secs(60),
            namespace_key: Some(domain_key.public_key().clone()),
        },
        domain_key,
        domain_id,
        a: member(MemberRole::Participant, "alice", 3),
        b: member(MemberRole::Participant, "bob", 4),
    }
}

fn fence(epoch: i64, holder: &str) -> Fence {
    Fence {
        name: "mediator".into(),
        holder: holder.into(),
        epoch,
    }
}

fn envelope(
    m: pb::domain_message::Message,
    recipients: Vec<String>,
    broadcast: bool,
) -> sequencer_pb::Envelope {
    sequencer_pb::Envelope {
        content: pb::DomainMessage { message: Some(m) }
            .encode_to_vec()
            .into(),
        recipients,
        broadcast,
    }
}

impl Fixture {
    fn ids(&self) -> (String, String) {
        (
            self.settings.mediator_id.to_string(),
            self.domain_id.to_string(),
        )
    }

    /// Topology (two participants, 1 s timeout), three requests: one approved,
    /// one with a single approval still pending, one decided and left unsent.
    fn events(&self) -> Vec<Event> {
        let t0 = 1_700_000_000_000_000i64;
        let dom = domain_topology::domain_manager_member(&self.domain_id).to_string();
        let med = self.settings.mediator_id.to_string();
        let mut events = Vec::new();
        let mut push = |ts: i64, sender: &str, envelopes: Vec<sequencer_pb::Envelope>| {
            events.push(Event {
                counter: events.len() as i64,
                ts,
                sender: sender.to_string(),
                message_id: String::new(),
                time_proof: false,
                envelopes,
            });
        };
        let mappings = [
            allowlisted(self.a.0.clone(), Permission::Submission),
            allowlisted(self.b.0.clone(), Permission::Confirmation),
            Mapping::Parameters(DomainParameters {
                participant_response_timeout: Duration::from_secs(1),
                ..DomainParameters::default()
            }),
        ];
        for (i, mapping) in mappings.into_iter().enumerate() {
            let tx = domain_topology::TopologyTransaction {
                serial: i as u64 + 1,
                operation: Operation::Replace,
                mapping,
            };
            let signed = tx.sign(&self.domain_id, &self.domain_key);
            push(
                t0 + i as i64,
                &dom,
                vec![envelope(
                    pb::domain_message::Message::Topology(signed),
                    vec![],
                    true,
                )],
            );
        }
        let (a, b) = (self.a.0.to_string(), self.b.0.to_string());
        for k in 0..3i64 {
            let req = pb::ConfirmationRequest {
                submitter: a.clone(),
                informees: vec![a.clone(), b.clone()],
                confirming_participants: vec![a.clone(), b.clone()],
                root_hash: vec![k as u8 + 1],
                payload: vec![],
                mediator: med.clone(),
            };
            let request_id = t0 + 1_000_000 + k * 10;
            push(
                request_id,
                &a,
                vec![envelope(
                    pb::domain_message::Message::ConfirmationRequest(req),
                    vec![med.clone(), a.clone(), b.clone()],
                    false,
                )],
            );
            let approvals: &[&(MemberId, Arc<SigningKeyPair>)] = match k {
                0 | 2 => &[&self.a, &self.b],
                _ => &[&self.a],
            };
            for (j, who) in approvals.iter().enumerate() {
                let signed: pb::SignedConfirmationResponse = domain_confirmation::sign(
                    &who.1,
                    &self.domain_id,
                    &pb::ConfirmationResponse {
                        request_id,
                        participant: who.0.to_string(),
                        root_hash: vec![k as u8 + 1],
                        decision: pb::ConfirmationDecision::Approve as i32,
                        reason: String::new(),
                        domain_id: self.domain_id.to_string(),
                    },
                );
                push(
                    request_id + 1 + j as i64,
                    &who.0.to_string(),
                    vec![envelope(
                        pb::domain_message::Message::ConfirmationResponse(signed),
                        vec![med.clone()],
                        false,
                    )],
                );
            }
        }
        // Our receipt for the verdict of the first request.
        events.push(Event {
            counter: events.len() as i64,
            ts: t0 + 1_000_100,
            sender: med.clone(),
            message_id: crate::protocol::verdict_message_id(t0 + 1_000_000),
            time_proof: false,
            envelopes: vec![],
        });
        events
    }
}

/// Every test's prologue: a migrated database with a fixture, the fence of epoch 1 held by
/// `h1`, what the empty store loads (checked by the caller), the prepared statements, a
/// processor restored from the empty store and the fixture's events.
struct Started {
    f: Fixture,
    mediator: String,
    domain: String,
    fence: Fence,
    loaded: Loaded,
    stmts: Statements,
    processor: Processor,
    events: Vec<Event>,
}

async fn start(prefix: &str) -> Started {
    let mut f = fixture(prefix).await;
    let (mediator, domain) = f.ids();
    let fence = fence(1, "h1");
    let loaded = load(&mut f.client, &fence, &mediator, &domain)
        .await
        .expect("load");
    let stmts = Statements::prepare(&f.client).await.expect("prepare");
    let processor = Processor::restore(f.settings.clone(), loaded.restored.clone());
    let events = f.events();
    Started {
        f,
        mediator,
        domain,
        fence,
        loaded,
        stmts,
        processor,
        events,
    }
}

/// The rows of `sql`, each mapped by `row`.
async fn query_all<T>(
    client: &Client,
    sql: &str,
    row: impl Fn(&tokio_postgres::Row) -> T,
) -> Vec<T> {
    client
        .query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(row)
        .collect()
}

/// Sets the verdict state of `request_id` (and its deadline, when given).
async fn set_verdict_state(client: &Client, request_id: i64, state: &str, deadline: Option<i64>) {
    client
        .execute(
            "UPDATE med_requests SET verdict_state = $2, deadline_ts = coalesce($3, deadline_ts) \
             WHERE request_id = $1",
            &[&request_id, &state, &deadline],
        )
        .await
        .expect("set verdict state");
}

/// Another replica (`h2`, epoch 2) takes the lease over.
async fn take_over(client: &Client) {
    client
        .execute(
            "UPDATE leases SET holder = 'h2', epoch = 2 WHERE name = 'mediator'",
            &[],
        )
        .await
        .expect("takeover");
}

fn assert_fenced<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    let err = result.expect_err(what);
    assert!(err.is_fenced(), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_batches_load_back_into_the_same_state() {
    let Started {
        mut f,
        mediator,
        domain,
        fence,
        loaded,
        stmts,
        mut processor,
        events,
    } = start("med_store_roundtrip").await;
    assert_eq!(loaded.restored.last_counter, -1);
    assert!(loaded.restored.pending.is_empty() && loaded.unsent.is_empty());

    let mut decided = Vec::new();
    for chunk in events.chunks(4) {
        let changes = processor.process_batch(chunk, 1_800_000_000_000_000);
        persist(&mut f.client, &stmts, &fence, &changes)
            .await
            .expect("persist");
        decided.extend(changes.decisions);
    }
    assert_eq!(decided.len(), 2);
    // The second verdict's send was acknowledged; the first one's receipt was seen.
    mark_verdicts(
        &mut f.client,
        &fence,
        &[
            (decided[0].request_id, SendState::Sent),
            (decided[1].request_id, SendState::Sent),
        ],
    )
    .await
    .expect("mark");
    let states: Vec<(i64, String)> = query_all(
        &f.client,
        "SELECT request_id, verdict_state FROM med_requests WHERE state = 'decided' ORDER BY 1",
        |r| (r.get(0), r.get(1)),
    )
    .await;
    assert_eq!(
        states,
        vec![
            (decided[0].request_id, "sequenced".to_string()),
            (decided[1].request_id, "sent".to_string())
        ],
        "a receipt is never downgraded by a later acknowledgement"
    );
    set_verdict_state(&f.client, decided[1].request_id, "unsent", None).await;

    let again = load(&mut f.client, &fence, &mediator, &domain)
        .await
        .expect("load");
    let r = &again.restored;
    assert_eq!(
        (r.last_counter, r.last_ts),
        (processor.last_counter(), processor.last_ts())
    );
    assert_eq!(r.topology.len(), 3);
    assert_eq!(r.pending.len(), 1);
    assert_eq!(
        Some(&r.pending[0]),
        processor.pending(r.pending[0].request_id),
        "pending request with its responses"
    );
    assert_eq!(r.pending[0].responses.len(), 1);
    let mut decided_ids: Vec<i64> = r.decided.iter().map(|d| d.request_id).collect();
    decided_ids.sort();
    assert_eq!(
        decided_ids,
        vec![decided[0].request_id, decided[1].request_id]
    );
    assert_eq!(
        again.unsent,
        vec![OutVerdict {
            request_id: decided[1].request_id,
            signed_verdict: decided[1].signed_verdict.clone(),
            recipients: decided[1].recipients.clone(),
            max_sequencing_ts: decided[1].max_sequencing_ts,
        }]
    );
    // A restored processor sees the same topology.
    let last_ts = r.last_ts;
    let restored = Processor::restore(f.settings.clone(), again.restored);
    assert_eq!(
        restored
            .topology()
            .parameters_at(last_ts)
            .participant_response_timeout,
        Duration::from_secs(1)
    );

    // Another mediator or domain is refused.
    let err = check_owner(&f.client, "MED::other::1220ab", &domain)
        .await
        .expect_err("foreign");
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    check_owner(&f.client, &mediator, &domain)
        .await
        .expect("own database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_writes_nothing() {
    let mut s = start("med_store_fence").await;
    let (f, old, stmts, processor, events) =
        (&mut s.f, &s.fence, &s.stmts, &mut s.processor, &s.events);
    let (mediator, domain) = (&s.mediator, &s.domain);
    let changes = processor.process_batch(&events[..5], 1_800_000_000_000_000);
    persist(&mut f.client, stmts, old, &changes)
        .await
        .expect("persist");

    // Another replica takes over.
    take_over(&f.client).await;
    let changes = processor.process_batch(&events[5..], 1_800_000_000_000_000);
    assert!(!changes.decisions.is_empty());
    assert_fenced(
        "persist",
        persist(&mut f.client, stmts, old, &changes).await,
    );
    assert_fenced(
        "mark verdicts",
        mark_verdicts(
            &mut f.client,
            old,
            &[(changes.decisions[0].request_id, SendState::Sent)],
        )
        .await,
    );
    assert_fenced("load", load(&mut f.client, old, mediator, domain).await);
    let row = f
        .client
        .query_one(
            "SELECT last_counter, (SELECT count(*) FROM med_requests WHERE state = 'decided'), \
             (SELECT max(written_epoch) FROM med_requests) FROM med_state",
            &[],
        )
        .await
        .expect("query");
    let (counter, decided, epoch): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (counter, decided, epoch),
        (4, 0, 1),
        "nothing of the stale batch was written"
    );

    // The new holder continues from the committed state and decides the same.
    let new = fence(2, "h2");
    let loaded = load(&mut f.client, &new, mediator, domain)
        .await
        .expect("load");
    assert_eq!(loaded.restored.last_counter, 4);
    let mut successor = Processor::restore(f.settings.clone(), loaded.restored);
    let replay = successor.process_batch(&events[5..], 1_800_000_000_000_000);
    assert_eq!(replay.decisions, changes.decisions);
    persist(&mut f.client, stmts, &new, &replay)
        .await
        .expect("persist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_only_finished_requests_past_the_retention() {
    let mut s = start("med_store_prune").await;
    let (f, current, stmts, processor) = (&mut s.f, &s.fence, &s.stmts, &mut s.processor);
    let changes = processor.process_batch(&s.events, 1_800_000_000_000_000);
    persist(&mut f.client, stmts, current, &changes)
        .await
        .expect("persist");
    let count = async |client: &Client, sql: &str| -> i64 {
        client.query_one(sql, &[]).await.expect("count").get(0)
    };
    let decided = count(
        &f.client,
        "SELECT count(*) FROM med_requests WHERE state = 'decided'",
    )
    .await;
    assert!(decided >= 2, "the fixture decides at least two requests");
    // One finished verdict per state that needs nothing more, one still unsent; and one
    // finished request whose deadline is recent.
    let ids: Vec<i64> = query_all(
        &f.client,
        "SELECT request_id FROM med_requests WHERE state = 'decided' ORDER BY request_id",
        |r| r.get(0),
    )
    .await;
    set_verdict_state(&f.client, ids[0], "sequenced", Some(10)).await;
    set_verdict_state(&f.client, ids[1], "unsent", Some(10)).await;
    let total = count(&f.client, "SELECT count(*) FROM med_requests").await;

    let deleted = prune(&mut f.client, current, Timestamp::from_micros(100), 5_000)
        .await
        .expect("prune");
    assert_eq!(deleted, 1);
    let left: Vec<i64> = query_all(&f.client, "SELECT request_id FROM med_requests", |r| {
        r.get(0)
    })
    .await;
    assert_eq!(left.len() as i64, total - 1);
    assert!(!left.contains(&ids[0]) && left.contains(&ids[1]));
    let orphans = count(
        &f.client,
        "SELECT count(*) FROM med_responses r WHERE NOT EXISTS \
         (SELECT 1 FROM med_requests q WHERE q.request_id = r.request_id)",
    )
    .await;
    assert_eq!(orphans, 0);
    // Nothing else is due; a stale epoch deletes nothing.
    assert_eq!(
        prune(&mut f.client, current, Timestamp::from_micros(100), 5_000)
            .await
            .expect("prune"),
        0
    );
    set_verdict_state(&f.client, ids[1], "sequenced", Some(10)).await;
    take_over(&f.client).await;
    assert_fenced(
        "prune",
        prune(&mut f.client, current, Timestamp::from_micros(100), 5_000).await,
    );
    assert_eq!(
        count(&f.client, "SELECT count(*) FROM med_requests").await,
        total - 1
    );
}
