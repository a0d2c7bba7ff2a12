//! Issue 11 item 3 (read side): a read page is bounded in bytes, not only in rows. Pages of
//! the shared reader and of a subscription's catch-up stop adding events once the events
//! before reach `reader.page-bytes`, always return at least one event (so reading makes
//! progress with events larger than the budget), and say whether they stopped at a limit.

use crate::store;
use domain_time::Timestamp;

use super::migrated;

const EVENT_BYTES: usize = 100 * 1024;
const EVENTS: i64 = 10;

/// Stores `EVENTS` events of about 100 KiB for one member at timestamps 1..=EVENTS.
async fn setup(prefix: &str) -> (deadpool_postgres::Pool, i32) {
    let cfg = migrated(prefix).await;
    let pool = domain_storage::hot_pool(&cfg).expect("pool");
    let client = pool.get().await.expect("connection");
    let member: i32 = client
        .query_one(
            "INSERT INTO seq_members (member, registered_ts) VALUES ('PAR::p::1220aaaa', 0) RETURNING id",
            &[],
        )
        .await
        .expect("member")
        .get(0);
    // One online instance whose watermark covers every event: the shared reader's safe
    // watermark.
    client
        .execute(
            "INSERT INTO seq_instances (instance_index, owner, online, watermark_ts, heartbeat_at)
             VALUES (0, gen_random_uuid(), true, $1, now())",
            &[&EVENTS],
        )
        .await
        .expect("instance");
    for ts in 1..=EVENTS {
        let submission = vec![ts as u8; EVENT_BYTES];
        client
            .execute(
                "INSERT INTO seq_events (ts, instance_index, sender, message_id, recipients, submission, content, signature)
                 VALUES ($1, 0, $2, $3, ARRAY[$2]::integer[], $4, '\\x0102'::bytea, '\\x03'::bytea)",
                &[&ts, &member, &format!("m-{ts}"), &submission],
            )
            .await
            .expect("event");
        client
            .execute(
                "INSERT INTO seq_recipients (member_id, ts) VALUES ($1, $2)",
                &[&member, &ts],
            )
            .await
            .expect("recipient");
    }
    (pool, member)
}

fn timestamps(page: &store::EventPage) -> Vec<i64> {
    page.events.iter().map(|e| e.ts.as_micros()).collect()
}

fn ts(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

/// A catch-up page of `member` (registered at 0) after `after`, up to the last event, with
/// a row limit of 1000 and a budget of `budget` bytes.
async fn catch_up(
    client: &tokio_postgres::Client,
    member: i32,
    after: i64,
    budget: i64,
) -> store::EventPage {
    store::member_events(
        client,
        member,
        ts(0),
        ts(after),
        ts(EVENTS),
        1000,
        ts(0),
        budget,
    )
    .await
    .expect("member_events")
}

/// The shared reader's page after `after` (its safe watermark and the online instances,
/// read in the same statement, checked on the way).
async fn shared_reader(
    client: &deadpool_postgres::Object,
    after: i64,
    limit: i64,
    budget: i64,
) -> store::EventPage {
    let read = store::read_deliverable(client, ts(after), limit, budget)
        .await
        .expect("read_deliverable");
    assert_eq!(read.safe, ts(EVENTS));
    assert_eq!(read.online, vec![(0, ts(EVENTS))]);
    read.page
}

#[tokio::test]
async fn read_pages_are_bounded_in_bytes_item_3() {
    let (pool, member) = setup("read_limits").await;
    let client = pool.get().await.expect("connection");
    let size = (EVENT_BYTES + 3) as i64;
    // (byte budget, events expected): an event is added while the ones before it stay
    // below the budget.
    let cases = [
        (1, 1),        // smaller than one event: still one, or reading stalls
        (size, 1),     // exactly one event
        (size + 1, 2), // one event and a byte: the second starts below the budget
        (3 * size - 1, 3),
        (100 * size, EVENTS), // everything, and the page says so
    ];
    for (budget, want) in cases {
        let global = shared_reader(&client, 0, 1000, budget).await;
        let mine = catch_up(&client, member, 0, budget).await;
        for (what, page) in [("shared reader", &global), ("catch-up", &mine)] {
            assert_eq!(
                timestamps(page),
                (1..=want).collect::<Vec<_>>(),
                "{what} page with a budget of {budget} bytes"
            );
            assert_eq!(
                page.truncated,
                want < EVENTS,
                "{what} page with a budget of {budget} bytes: truncated flag"
            );
            assert!(
                page.events
                    .iter()
                    .all(|e| e.submission.len() == EVENT_BYTES)
            );
        }
    }
    // The row limit still applies, and a page that hit it says so.
    let page = shared_reader(&client, 3, 2, i64::MAX).await;
    assert_eq!(timestamps(&page), vec![4, 5]);
    assert!(page.truncated);
    // Nothing above the safe watermark: an empty, complete page.
    let page = shared_reader(&client, EVENTS, 1000, i64::MAX).await;
    assert_eq!(timestamps(&page), Vec::<i64>::new());
    assert!(!page.truncated);
    // A page that ends exactly at the range's last event within the limits is complete.
    let page = catch_up(&client, member, 8, 2 * size).await;
    assert_eq!(timestamps(&page), vec![9, 10]);
    assert!(page.truncated, "the budget was reached, so more may follow");
    let page = catch_up(&client, member, 8, 3 * size).await;
    assert_eq!(timestamps(&page), vec![9, 10]);
    assert!(!page.truncated, "below both limits: the range is read");
}
