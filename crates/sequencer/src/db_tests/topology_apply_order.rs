//! Issue 11 item 7: the sequencer applies topology by the members' rule. Per member, among
//! the transactions effective at a time, the highest serial wins
//! (`domain_topology::TopologyState`), whatever order their effective times come in. They
//! come out of order after a decrease of the topology change delay: a disable sequenced
//! under the old 10 s delay can become effective *after* a later enable sequenced under
//! the new 0 s delay.

use crate::store::{self, AppliedTopology, TopologyPass};
use domain_time::Timestamp;

use super::migrated;

const P: &str = "PAR::p::1220aaaa";

async fn insert(
    client: &deadpool_postgres::Object,
    serial: i64,
    sequenced: i64,
    effective: i64,
    permission: &str,
) {
    client
        .execute(
            "INSERT INTO seq_topology (serial, sequenced_ts, effective_ts, kind, operation, member, permission, signed)
             VALUES ($1, $2, $3, 'participant_state', 'replace', $4, $5, ''::bytea)",
            &[&serial, &sequenced, &effective, &P, &permission],
        )
        .await
        .expect("insert topology row");
}

fn ts(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

async fn enabled(client: &deadpool_postgres::Object) -> Option<bool> {
    client
        .query_opt("SELECT enabled FROM seq_members WHERE member = $1", &[&P])
        .await
        .expect("query")
        .map(|r| r.get(0))
}

#[tokio::test]
async fn topology_apply_order_follows_the_highest_effective_serial() {
    let cfg = migrated("topo_order").await;
    let pool = domain_storage::hot_pool(&cfg).expect("pool");
    let mut client = pool.get().await.expect("connection");
    // Serial 5 allowlists P (effective at 50). Delay 10 s, then lowered to 0: serial 6
    // disables P at sequenced 1 s → effective 11 s; serial 7 enables P at sequenced 10.5 s
    // under the new delay → effective 10.5 s.
    insert(&client, 5, 40, 50, "submission").await;
    let pass = store::apply_due_topology(&mut client, ts(60))
        .await
        .expect("apply");
    assert_eq!(
        pass,
        TopologyPass {
            applied: vec![AppliedTopology {
                kind: "participant_state",
                member: Some(P.to_owned()),
                effect: "enabled",
            }],
            next_due: None,
        },
        "what one pass applied, read back as typed values"
    );
    assert_eq!(enabled(&client).await, Some(true), "allowlisted");
    insert(&client, 6, 1_000_000, 11_000_000, "disabled").await;
    insert(&client, 7, 10_500_000, 10_500_000, "submission").await;

    // Both due in one round.
    store::apply_due_topology(&mut client, ts(12_000_000))
        .await
        .expect("apply");
    assert_eq!(
        enabled(&client).await,
        Some(true),
        "serial 7 (enable) is the highest effective serial: members see P enabled, so must the sequencer"
    );

    // The same rows due in two rounds (7 first, 6 later).
    let cfg2 = migrated("topo_order2").await;
    let pool2 = domain_storage::hot_pool(&cfg2).expect("pool");
    let mut client2 = pool2.get().await.expect("connection");
    insert(&client2, 5, 40, 50, "submission").await;
    insert(&client2, 6, 1_000_000, 11_000_000, "disabled").await;
    insert(&client2, 7, 10_500_000, 10_500_000, "submission").await;
    let pass = store::apply_due_topology(&mut client2, ts(10_600_000))
        .await
        .expect("apply");
    assert_eq!(
        pass.next_due,
        Some(ts(11_000_000)),
        "serial 6 is due next, at its effective time"
    );
    assert_eq!(
        pass.applied.iter().map(|a| a.effect).collect::<Vec<_>>(),
        ["superseded", "enabled"],
        "serial 5 is superseded by serial 7, which enables"
    );
    assert_eq!(enabled(&client2).await, Some(true));
    let pass = store::apply_due_topology(&mut client2, ts(12_000_000))
        .await
        .expect("apply");
    assert_eq!(
        pass.applied.iter().map(|a| a.effect).collect::<Vec<_>>(),
        ["superseded"]
    );
    assert_eq!(
        enabled(&client2).await,
        Some(true),
        "serial 6 became effective after serial 7 but is superseded by it"
    );
}

/// Migration 0005: rows the writer could never produce are refused by the schema itself
/// (SQLSTATE 23514), like dm_topology's; a valid row still goes in.
#[tokio::test]
async fn seq_topology_refuses_rows_outside_its_column_domains() {
    let cfg = migrated("topo_checks").await;
    let pool = domain_storage::hot_pool(&cfg).expect("pool");
    let client = pool.get().await.expect("connection");
    let row = |serial: i64,
               seq: i64,
               eff: i64,
               kind: &str,
               op: &str,
               member: Option<&str>,
               perm: Option<&str>| {
        let (kind, op, member, perm) = (
            kind.to_owned(),
            op.to_owned(),
            member.map(str::to_owned),
            perm.map(str::to_owned),
        );
        let client = &client;
        async move {
            client
                .execute(
                    "INSERT INTO seq_topology (serial, sequenced_ts, effective_ts, kind, operation, member, permission, signed)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, ''::bytea)",
                    &[&serial, &seq, &eff, &kind, &op, &member, &perm],
                )
                .await
        }
    };
    // (case, serial, sequenced, effective, kind, operation, member, permission)
    let bad = [
        (
            "serial 0",
            0,
            1,
            1,
            "participant_state",
            "replace",
            Some(P),
            Some("submission"),
        ),
        ("unknown kind", 1, 1, 1, "bogus", "replace", Some(P), None),
        (
            "unknown operation",
            2,
            1,
            1,
            "mediator",
            "upsert",
            Some(P),
            None,
        ),
        (
            "unknown permission",
            3,
            1,
            1,
            "participant_state",
            "replace",
            Some(P),
            Some("root"),
        ),
        (
            "member on parameters",
            4,
            1,
            1,
            "domain_parameters",
            "replace",
            Some(P),
            None,
        ),
        (
            "no member on a mapping",
            5,
            1,
            1,
            "sequencer",
            "replace",
            None,
            None,
        ),
        (
            "effective before sequenced",
            6,
            10,
            9,
            "mediator",
            "replace",
            Some(P),
            None,
        ),
    ];
    for (case, serial, seq, eff, kind, op, member, perm) in bad {
        let err = row(serial, seq, eff, kind, op, member, perm)
            .await
            .expect_err(case);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{case}: {err}"
        );
    }
    row(
        7,
        1,
        2,
        "participant_state",
        "replace",
        Some(P),
        Some("observation"),
    )
    .await
    .expect("a valid row");
    row(8, 3, 3, "domain_parameters", "replace", None, None)
        .await
        .expect("a valid parameters row");
}
