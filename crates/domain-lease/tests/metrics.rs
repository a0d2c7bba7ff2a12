//! The keeper's metrics, read back through the Prometheus recorder (installed globally:
//! this test binary has this one test). Also covers a renewal that finds the lease taken.

mod common;

use std::time::Duration;

use common::{fresh_db_with_admin, lease_config, start_active, wait_status};
use domain_lease::Role;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

/// Returns the value of the sample line starting with `series` (name and labels).
fn sample(rendered: &str, series: &str) -> Option<f64> {
    rendered
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Asserts the value of each `(metric, value)` for the test lease in `rendered`.
fn assert_samples(rendered: &str, expected: &[(&str, f64)]) {
    let lease = format!("{{lease=\"{}\"}}", common::LEASE);
    for (metric, value) in expected {
        assert_eq!(
            sample(rendered, &format!("{metric}{lease}")),
            Some(*value),
            "{metric}: {rendered}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_track_takeover_renewals_and_loss() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).expect("first recorder of this process");
    domain_lease::describe_metrics();

    let (db, admin) = fresh_db_with_admin("lease_metrics").await;
    let shutdown = CancellationToken::new();
    let ((a, mut a_rx, task), _) = start_active(&db, lease_config("replica-a"), &shutdown).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;

    let lease = format!("{{lease=\"{}\"}}", common::LEASE);
    let text = prometheus.render();
    assert_samples(
        &text,
        &[
            ("lease_active", 1.0),
            ("lease_epoch", 1.0),
            ("lease_takeovers_total", 1.0),
        ],
    );
    let renewals = sample(&text, &format!("lease_renew_seconds_count{lease}")).unwrap_or(0.0);
    assert!(renewals >= 2.0, "{text}");
    assert!(text.contains("# HELP lease_active"), "{text}");

    // Someone else takes the row (as a takeover would): A's next renewal matches no row.
    admin
        .execute(
            "UPDATE leases SET holder = 'intruder', epoch = epoch + 1, \
             expires_at = clock_timestamp() + interval '1 minute' WHERE name = $1",
            &[&common::LEASE],
        )
        .await
        .expect("steal the lease");
    let (status, took) = wait_status(&mut a_rx, Duration::from_secs(2), "A passive", |s| {
        !s.is_active()
    })
    .await;
    assert!(a.fence().is_none());
    assert!(
        took < Duration::from_millis(700),
        "renewal noticed the loss after {took:?}"
    );
    let (status, _) = if status.holder.is_none() {
        wait_status(
            &mut a_rx,
            Duration::from_secs(2),
            "A sees the intruder",
            |s| s.holder.as_deref() == Some("intruder"),
        )
        .await
    } else {
        (status, took)
    };
    assert_eq!(status.role, Role::Passive);
    assert_eq!(status.epoch, 2);

    let text = prometheus.render();
    assert_samples(
        &text,
        &[
            ("lease_active", 0.0),
            ("lease_losses_total", 1.0),
            ("lease_epoch", 2.0),
        ],
    );
    println!("A noticed the stolen lease {took:?} later; metrics:\n{text}");

    shutdown.cancel();
    task.await.expect("keeper");
}
