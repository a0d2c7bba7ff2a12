//! Issue 17: a batch of events is one call of `seq_write_batch` (migration 0006) instead of
//! six statements in an explicit transaction. Both paths stay in use (a batch with a
//! registration or a topology transaction takes the explicit one), so the same sequence of
//! batches runs through each and must leave the same rows and answers: fresh keys stored
//! with their recipients, a retry answered with the original timestamp, a key whose
//! deadline passed sequenced again, a fenced instance's batch rolled back whole, the
//! watermark advanced and announced.

use std::time::Duration;

use domain_identity::MemberId;
use domain_storage::DatabaseConfig;
use domain_time::Timestamp;

use crate::store::{
    self, BatchOutcome, FaultHooks, NewEvent, NewRegistration, StoreError, WriterStatements,
    uuid_like::Owner,
};

use super::migrated;

#[derive(Debug, Clone, Copy)]
enum Path {
    /// Events only: `seq_write_batch`.
    Function,
    /// Each batch also registers a member: the multi-statement transaction.
    Transaction,
}

fn event(ts: i64, sender: i32, message_id: &str, recipients: &[i32], mst: i64) -> NewEvent {
    NewEvent {
        ts: Timestamp::from_micros(ts),
        sender,
        message_id: message_id.into(),
        recipients: recipients.to_vec(),
        submission: format!("submission {message_id}@{ts}").into_bytes(),
        content: vec![1, 2, 3],
        signature: vec![4; 64],
        max_sequencing_ts: Timestamp::from_micros(mst),
        trace_context: None,
        topology: Vec::new(),
    }
}

struct Rig {
    cfg: DatabaseConfig,
    client: tokio_postgres::Client,
    stmts: WriterStatements,
    owner: Owner,
    index: i16,
    path: Path,
    registrations: usize,
    _task: domain_storage::ConnectionTask,
}

impl Rig {
    async fn new(path: Path) -> Self {
        let cfg = migrated(&format!("write_batch_{path:?}").to_lowercase()).await;
        let (mut client, task) = domain_storage::dedicated_connection(&cfg)
            .await
            .expect("connect");
        let owner = Owner::random();
        let claim = store::go_online(
            &mut client,
            32,
            owner.clone(),
            Timestamp::from_micros(1),
            "x",
            Some(0),
        )
        .await
        .expect("online");
        let stmts = WriterStatements::prepare(&client).await.expect("prepare");
        Self {
            cfg,
            client,
            stmts,
            owner,
            index: claim.index,
            path,
            registrations: 0,
            _task: task,
        }
    }

    async fn batch(
        &mut self,
        events: &[NewEvent],
        watermark: i64,
        faults: &FaultHooks,
    ) -> Result<BatchOutcome, StoreError> {
        let registrations = match self.path {
            Path::Function => Vec::new(),
            Path::Transaction => {
                self.registrations += 1;
                let member = format!("PAR::reg{}::1220{}", self.registrations, "ab".repeat(32));
                vec![NewRegistration {
                    member: MemberId::parse(&member).expect("member id"),
                    public_key: None,
                    ts: Timestamp::from_micros(watermark),
                }]
            }
        };
        store::commit_batch(
            &mut self.client,
            &self.stmts,
            self.index,
            &self.owner,
            events,
            &registrations,
            Timestamp::from_micros(watermark),
            "DOM::test::1220",
            faults,
        )
        .await
    }

    async fn rows(&self, sql: &str) -> Vec<String> {
        self.client
            .query(sql, &[])
            .await
            .expect("query")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    async fn events(&self) -> Vec<String> {
        self.rows(
            "SELECT ts || ' ' || sender || ' ' || message_id || ' ' || recipients::text || ' '
                    || convert_from(submission, 'UTF8')
             FROM seq_events ORDER BY ts",
        )
        .await
    }

    async fn recipients(&self) -> Vec<String> {
        self.rows("SELECT member_id || '@' || ts FROM seq_recipients ORDER BY ts, member_id")
            .await
    }

    async fn watermark(&self) -> i64 {
        self.client
            .query_one(
                "SELECT watermark_ts FROM seq_instances WHERE instance_index = $1",
                &[&self.index],
            )
            .await
            .expect("watermark")
            .get(0)
    }
}

fn duplicates(outcome: &BatchOutcome) -> Vec<(i32, String, i64)> {
    let mut d: Vec<_> = outcome
        .duplicates
        .iter()
        .map(|d| (d.sender, d.message_id.clone(), d.ts.as_micros()))
        .collect();
    d.sort();
    d
}

async fn same_results_on(path: Path) {
    let mut rig = Rig::new(path).await;
    let (listener, mut notes, _listen_task) =
        domain_storage::listen_connection(&rig.cfg, &["seq_watermark"])
            .await
            .expect("listen");
    let none = FaultHooks::default();

    // Two fresh keys: a message to member 2 and a broadcast.
    let first = rig
        .batch(
            &[
                event(100, 1, "m1", &[1, 2], 500),
                event(101, 1, "m2", &[-1], 150),
            ],
            101,
            &none,
        )
        .await
        .expect("first batch");
    assert!(first.duplicates.is_empty(), "{:?}", first.duplicates);
    assert_eq!(rig.watermark().await, 101);
    let note = tokio::time::timeout(Duration::from_secs(5), notes.recv())
        .await
        .expect("a watermark notification")
        .expect("listen connection open");
    assert_eq!(note.payload(), format!("{}:101:e", rig.index));

    // A retry of m1 inside its deadline is a duplicate with its first timestamp; m2's
    // deadline (150) passed, so it is sequenced again; m3 is new. Keys sorted as the
    // writer sorts them.
    let second = rig
        .batch(
            &[
                event(200, 1, "m1", &[1, 2], 900),
                event(201, 1, "m2", &[1], 900),
                event(202, 1, "m3", &[1, 3], 900),
            ],
            202,
            &none,
        )
        .await
        .expect("second batch");
    assert_eq!(duplicates(&second), vec![(1, "m1".to_string(), 100)]);
    assert_eq!(
        rig.events().await,
        [
            "100 1 m1 {1,2} submission m1@100",
            "101 1 m2 {-1} submission m2@101",
            "201 1 m2 {1} submission m2@201",
            "202 1 m3 {1,3} submission m3@202",
        ]
    );
    assert_eq!(
        rig.recipients().await,
        ["1@100", "2@100", "-1@101", "1@201", "1@202", "3@202"]
    );
    assert_eq!(rig.watermark().await, 202);

    // The fault-injection pauses (before the watermark update, after it) still commit.
    let held = FaultHooks {
        delay_before_commit: Some(Duration::from_millis(20)),
        delay_after_watermark: Some(Duration::from_millis(20)),
    };
    let third = rig
        .batch(&[event(300, 2, "m1", &[2], 900)], 300, &held)
        .await
        .expect("held batch");
    assert!(third.duplicates.is_empty());
    assert_eq!(rig.watermark().await, 300);

    // Fenced (another process took the index): nothing of the batch is visible, neither
    // the event nor its dedup row nor the watermark.
    listener
        .execute(
            "UPDATE seq_instances SET owner = gen_random_uuid() WHERE instance_index = $1",
            &[&rig.index],
        )
        .await
        .expect("take the index over");
    let fenced = rig
        .batch(&[event(400, 3, "m9", &[3], 900)], 400, &none)
        .await;
    assert!(
        matches!(fenced, Err(StoreError::Fenced { index }) if index == rig.index),
        "{fenced:?}"
    );
    assert_eq!(rig.events().await.len(), 5);
    assert_eq!(
        rig.rows("SELECT message_id FROM seq_dedup WHERE sender = 3")
            .await,
        Vec::<String>::new()
    );
    assert_eq!(rig.watermark().await, 300);
}

#[tokio::test]
async fn function_batch_commits_dedups_and_fences() {
    same_results_on(Path::Function).await;
}

#[tokio::test]
async fn transaction_batch_commits_dedups_and_fences() {
    same_results_on(Path::Transaction).await;
}
