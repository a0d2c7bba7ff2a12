//! Issue 17 (subscriber curve): the checkpointer probes only the members that received
//! events since its last round, not every registered member; a probed member's checkpoint
//! is counted from the rows exactly as when every member is probed.

use crate::store;
use domain_time::Timestamp;

use super::migrated;

async fn member(client: &deadpool_postgres::Object, name: &str) -> i32 {
    let id: i32 = client
        .query_one(
            "INSERT INTO seq_members (member, registered_ts) VALUES ($1, 0) RETURNING id",
            &[&name],
        )
        .await
        .expect("member")
        .get(0);
    // Registration writes counter -1 at the registration timestamp.
    client
        .execute(
            "INSERT INTO seq_checkpoints (member_id, counter, ts) VALUES ($1, -1, 0)",
            &[&id],
        )
        .await
        .expect("checkpoint");
    id
}

async fn event(client: &deadpool_postgres::Object, ts: i64, to: i32) {
    client
        .execute(
            "INSERT INTO seq_events (ts, instance_index, sender, message_id, recipients, submission, content, signature)
             VALUES ($1, 0, $2, $3, ARRAY[$2]::integer[], '\\x00'::bytea, '\\x01'::bytea, '\\x02'::bytea)",
            &[&ts, &to, &format!("m-{ts}")],
        )
        .await
        .expect("event");
    client
        .execute(
            "INSERT INTO seq_recipients (member_id, ts) VALUES ($1, $2)",
            &[&to, &ts],
        )
        .await
        .expect("recipient");
}

async fn checkpoints(client: &deadpool_postgres::Object, member: i32) -> Vec<(i64, i64)> {
    client
        .query(
            "SELECT counter, ts FROM seq_checkpoints WHERE member_id = $1 ORDER BY counter",
            &[&member],
        )
        .await
        .expect("checkpoints")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn only_the_touched_members_are_probed() {
    let cfg = migrated("seq_checkpoints_touched").await;
    let pool = domain_storage::hot_pool(&cfg).expect("pool");
    let mut client = pool.get().await.expect("connection");
    let a = member(&client, "PAR::a::1220aaaa").await;
    let b = member(&client, "PAR::b::1220bbbb").await;
    for ts in [10, 20, 30] {
        event(&client, ts, a).await;
    }
    for ts in [11, 21] {
        event(&client, ts, b).await;
    }
    let up_to = Timestamp::from_micros(100);

    // Only a is probed: a gets its checkpoint (3 events: counter 2 at 30), b none.
    let n = store::write_checkpoints(&mut client, up_to, 1, Some(&[a]))
        .await
        .expect("checkpoints");
    assert_eq!(n, Some(1));
    assert_eq!(checkpoints(&client, a).await, vec![(-1, 0), (2, 30)]);
    assert_eq!(checkpoints(&client, b).await, vec![(-1, 0)]);

    // Nobody touched: nothing is written.
    let n = store::write_checkpoints(&mut client, up_to, 1, Some(&[]))
        .await
        .expect("checkpoints");
    assert_eq!(n, Some(0));

    // Probing every member gives b the checkpoint it would always have had, and leaves a
    // alone (no event of a since its checkpoint).
    let n = store::write_checkpoints(&mut client, up_to, 1, None)
        .await
        .expect("checkpoints");
    assert_eq!(n, Some(1));
    assert_eq!(checkpoints(&client, a).await, vec![(-1, 0), (2, 30)]);
    assert_eq!(checkpoints(&client, b).await, vec![(-1, 0), (1, 21)]);

    // A later event of b, probed as touched, counts on from b's checkpoint.
    event(&client, 40, b).await;
    let n = store::write_checkpoints(&mut client, up_to, 1, Some(&[b]))
        .await
        .expect("checkpoints");
    assert_eq!(n, Some(1));
    assert_eq!(
        checkpoints(&client, b).await,
        vec![(-1, 0), (1, 21), (2, 40)]
    );
}
