//! Smoke test of seqbench's phase 0b, the transport floor: real TLS, real gRPC, every
//! `Send` answered and its event delivered to a subscriber, and the ceiling it gives.
//! Nothing here asserts a performance figure.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_sends_and_delivers_over_tls_and_gives_a_ceiling() {
    let floor = domain_benches::floor::run(
        256,
        2,
        4,
        2,
        Duration::from_millis(300),
        Duration::from_secs(1),
    )
    .await
    .expect("the floor phase runs");
    assert!(floor.events_per_sec > 0.0, "{floor:?}");
    assert!(floor.cpu_micros_per_event > 0.0, "{floor:?}");
    assert_eq!((floor.connections, floor.subscribers), (2, 2));
    // The event carries the 256-byte envelope, the signed content and the proof.
    assert!(floor.event_bytes > floor.request_bytes, "{floor:?}");

    let ceiling = domain_benches::floor::Ceiling::of(&floor, 20.0, 40.0, 10.0);
    let per_event = floor.cpu_micros_per_event + 70.0;
    assert!((ceiling.floor_us_per_event - per_event).abs() < 1e-9);
    assert!(
        (ceiling.events_per_sec - ceiling.cores as f64 * 1e6 / per_event).abs() < 1e-6,
        "{ceiling:?}"
    );
}
