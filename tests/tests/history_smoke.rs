//! The history recorder and checker (`domain_e2e::history`, issue 16) on a healthy
//! two-instance domain: load through `DomainClient`s plus raw per-instance readers, then every
//! invariant must hold. The fault scenarios (fault_*.rs) use the same recorder; this test
//! keeps the checker honest about what a fault-free run looks like (an invariant that fires
//! here would be a checker bug, not a finding).

use std::time::Duration;

use domain_e2e::history::{CheckOptions, LoadOptions, Recorder, check, record_instance_stream};
use domain_e2e::{checks::keep_logs_on_error, connect, load_clients};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::ClientOptions;
use domain_testkit::pg::PgCluster;
use domain_testkit::process::TestLogs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_domain_history_passes_every_invariant() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    keep_logs_on_error(&logs.clone(), async move {
        let db = PgCluster::shared().create_database("history").await;
        let cluster = SequencerCluster::start(logs, db, 2, "").await?;
        let clients = load_clients(&cluster, 3, ClientOptions::default()).await?;
        let recorder = Recorder::new();
        // One member's stream read straight from each instance: I3/I4 compare them.
        let watched = (
            clients[0].member().id.clone(),
            clients[0].member().key.clone(),
        );
        let mut raw = Vec::new();
        for i in 0..cluster.nodes.len() {
            let conn = connect(&cluster, i, &watched).await?;
            raw.push(record_instance_stream(
                conn,
                watched.0.clone(),
                format!("raw-seq-{i}"),
                recorder.clone(),
            ));
        }
        let load =
            domain_e2e::history::start_load(clients, recorder.clone(), LoadOptions::default());
        let members = load.members().to_vec();
        tokio::time::sleep(Duration::from_secs(3)).await;
        load.stop(Duration::from_secs(10)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for r in raw {
            r.abort();
        }
        let history = recorder.snapshot();
        let report = check(
            &history,
            &CheckOptions::new(&members, Some(Duration::from_secs(2))),
        );
        println!("{report}");
        report.ensure_ok()?;
        anyhow::ensure!(
            report.ops_ok >= 20,
            "too little load to check anything: {report}"
        );
        let raw_seen = history
            .deliveries
            .iter()
            .filter(|d| d.endpoint.starts_with("raw-"))
            .count();
        anyhow::ensure!(raw_seen > 0, "the raw readers recorded nothing");
        Ok(())
    })
    .await
}
