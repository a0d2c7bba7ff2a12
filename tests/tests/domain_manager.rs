//! Acceptance tests of the domain manager with real processes: two
//! `domain-manager` replicas over one PostgreSQL in front of a two-instance
//! sequencer cluster, driven through the `domainctl` CLI.
//!
//! 1. allowlist flow: refused everywhere → `participants set-state` → admitted on
//!    every instance once effective → `participants disable` → live stream ends
//!    within 1 s of the effective time, new tokens refused;
//! 2. SIGKILL of the active replica: the other serves admin writes within 3 s and
//!    the lease epoch grows by exactly 1;
//! 3. split brain: the active is SIGSTOPped past its lease, the other takes over,
//!    the old one resumes, demotes itself, and no row carries its stale epoch;
//! 4. bad CLI input: clear errors, non-zero exit codes, nothing changed.
//! 5. a topology send whose reply is lost, with no reply for longer than its max
//!    sequencing time (issue 11 item 14): sequenced once, and the domain manager records
//!    the timestamp members see.

use domain_e2e::e2e_test;
use domain_e2e::seq_member::send_to;
use domain_e2e::seq_rpc::rejected;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_e2e::checks::{db_client, expect_status, stream_end};
use domain_e2e::now_micros;
use domain_e2e::seq_auth::{
    connect_when_admitted, expect_refused_everywhere, expect_streams_disabled,
};
use domain_e2e::seq_db;
use domain_e2e::topology::{new_participant, sleep_until_micros};
use domain_localnet::domain_managers::{DomainManagers, domainctl};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::manager::admin::v1 as manager_admin_pb;
use domain_proto::manager::admin::v1::domain_admin_service_client::DomainAdminServiceClient;
use domain_proto::topology::v1 as pb;
use domain_testkit::{pg::PgCluster, process::TestLogs};
use serde_json::Value;
use tonic::Code;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs domainctl and parses its JSON output; the call must succeed.
async fn ctl_json(dms: &DomainManagers, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = args.to_vec();
    full.extend(["--output", "json"]);
    let out = dms.domainctl(&full).await?;
    ensure!(
        out.status.success(),
        "domainctl {args:?} failed: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("domainctl {args:?} printed no JSON: {}", text(&out)))
}

fn field_i64(v: &Value, key: &str) -> anyhow::Result<i64> {
    v.get(key)
        .and_then(Value::as_i64)
        .with_context(|| format!("no integer {key:?} in {v}"))
}

/// `participants set-state <id> --permission <permission>`, then `extra`.
fn set_state_args<'a>(id: &'a str, permission: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["participants", "set-state", id, "--permission", permission];
    args.extend_from_slice(extra);
    args
}

async fn lease_epoch(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    seq_db::one(
        db,
        "SELECT epoch FROM leases WHERE name = 'domain-manager'",
        &[],
    )
    .await
}

async fn start_domain(
    logs: &TestLogs,
    prefix: &str,
) -> anyhow::Result<(SequencerCluster, DomainManagers)> {
    let seq_db = PgCluster::shared()
        .create_database(&format!("{prefix}_seq"))
        .await;
    let dm_db = PgCluster::shared()
        .create_database(&format!("{prefix}_dm"))
        .await;
    let cluster = SequencerCluster::start(logs.clone(), seq_db, 2, "").await?;
    let dms = DomainManagers::start(&cluster, dm_db, 2, "").await?;
    Ok((cluster, dms))
}

/// [`start_domain`], then waits (10 s at most) for an active domain manager replica:
/// returns the cluster, the replicas, a client of their database, the active replica and
/// the lease epoch.
async fn start_active(
    logs: &TestLogs,
    prefix: &str,
) -> anyhow::Result<(
    SequencerCluster,
    DomainManagers,
    tokio_postgres::Client,
    usize,
    i64,
)> {
    let (cluster, dms) = start_domain(logs, prefix).await?;
    let db = db_client(&dms.database.url).await?;
    let active = dms.wait_active(Duration::from_secs(10)).await?;
    let epoch = lease_epoch(&db).await?;
    Ok((cluster, dms, db, active, epoch))
}

e2e_test! {
    serial allowlist_through_domainctl => allowlist_body
}

async fn allowlist_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, dms) = start_domain(&logs, "dm_allow").await?;
    let erin = new_participant("erin")?;
    let erin_id = erin.0.to_string();

    expect_refused_everywhere(
        &cluster,
        &erin,
        "erin",
        "SEQ_MEMBER_UNKNOWN",
        "before set-state",
    )
    .await?;

    let set = ctl_json(
        &dms,
        &set_state_args(&erin_id, "submission", &["--trust-level", "ordinary"]),
    )
    .await?;
    println!("set-state: {set}");
    let effective = field_i64(&set, "effective_at_micros")?;
    ensure!(
        set.get("changed") == Some(&Value::Bool(true)),
        "first set-state changes: {set}"
    );
    // Idempotent: the same state again changes nothing.
    let again = ctl_json(&dms, &set_state_args(&erin_id, "submission", &[])).await?;
    ensure!(
        again.get("changed") == Some(&Value::Bool(false))
            && field_i64(&again, "serial")? == field_i64(&set, "serial")?,
        "repeated set-state must be a no-op: {again}"
    );

    sleep_until_micros(effective).await;
    let mut conns = Vec::new();
    for i in 0..2 {
        let (conn, lag) = connect_when_admitted(&cluster, i, &erin, effective).await?;
        println!(
            "erin admitted by instance {i} {:.1} ms after the effective time",
            lag as f64 / 1000.0
        );
        send_to(&conn, &format!("hello-{i}"), b"hi", &erin.0).await?;
        conns.push(conn);
    }
    let got = ctl_json(&dms, &["participants", "get", &erin_id]).await?;
    ensure!(
        got.get("permission").and_then(Value::as_str) == Some("submission"),
        "participants get: {got}"
    );
    let listed = ctl_json(&dms, &["participants", "list"]).await?;
    ensure!(
        listed.to_string().contains(&erin_id),
        "participants list: {listed}"
    );

    // Disable while a subscription is live on each instance.
    let s0 = conns[0].subscribe(0).await?;
    let s1 = conns[1].subscribe(0).await?;
    let dis = ctl_json(&dms, &["participants", "disable", &erin_id]).await?;
    let effective = field_i64(&dis, "effective_at_micros")?;
    let (r0, r1) = tokio::join!(
        stream_end(s0, "erin on instance 0".into()),
        stream_end(s1, "erin on instance 1".into())
    );
    let ((st0, _), (st1, _)) = (r0?, r1?);
    let lag = now_micros() - effective;
    println!(
        "erin's subscriptions ended {:.1} ms after the disabling's effective time",
        lag as f64 / 1000.0
    );
    expect_streams_disabled(&[&st0, &st1], "erin")?;
    ensure!(
        lag <= 1_000_000,
        "streams must end within 1 s of the effective time: {lag} µs"
    );
    expect_refused_everywhere(
        &cluster,
        &erin,
        "erin",
        "SEQ_MEMBER_DISABLED",
        "after disable",
    )
    .await?;

    // The read-only views answer too.
    let seqs = ctl_json(&dms, &["sequencers", "list"]).await?;
    println!("sequencers list: {seqs}");
    let status = ctl_json(&dms, &["status"]).await?;
    println!("status: {status}");
    let params = ctl_json(&dms, &["parameters", "get"]).await?;
    println!("parameters: {params}");
    Ok(())
}

e2e_test! {
    serial sigkill_active_domain_manager => sigkill_body
}

async fn set_state_once(
    endpoints: &[String],
    id: &str,
    permission: &str,
) -> anyhow::Result<Output> {
    domainctl(
        endpoints,
        &set_state_args(id, permission, &["--timeout", "1s"]),
    )
    .await
}

async fn sigkill_body(logs: TestLogs) -> anyhow::Result<()> {
    let (_cluster, mut dms, db, active, epoch_before) = start_active(&logs, "dm_kill").await?;
    let other = 1 - active;
    let p = new_participant("frank")?;
    let out = set_state_once(&dms.endpoints(), &p.0.to_string(), "observation").await?;
    ensure!(
        out.status.success(),
        "write before the kill: {}",
        text(&out)
    );

    let killed_at = Instant::now();
    dms.nodes[active].process()?.kill()?;
    // Only the surviving replica's endpoint: a write must be served by it.
    let survivor = vec![dms.nodes[other].admin_endpoint()];
    let mut attempts = 0;
    let served_after = loop {
        attempts += 1;
        let out = set_state_once(&survivor, &p.0.to_string(), "submission").await?;
        if out.status.success() {
            break killed_at.elapsed();
        }
        ensure!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no admin write served 10 s after the kill; last: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let epoch_after = lease_epoch(&db).await?;
    println!(
        "SIGKILL of the active domain manager: the other replica served an admin write {:.0} ms later ({attempts} attempts); lease epoch {epoch_before} -> {epoch_after}",
        served_after.as_secs_f64() * 1000.0
    );
    ensure!(
        served_after <= Duration::from_secs(3),
        "takeover took {served_after:?} (> 3 s)"
    );
    ensure!(
        epoch_after == epoch_before + 1,
        "epoch must grow by exactly 1"
    );
    let got = ctl_json(&dms, &["participants", "get", &p.0.to_string()]).await?;
    ensure!(
        got.get("permission").and_then(Value::as_str) == Some("submission"),
        "the write after the takeover is in place: {got}"
    );
    Ok(())
}

e2e_test! {
    serial split_brain_is_fenced => split_brain_body
}

async fn split_brain_body(logs: TestLogs) -> anyhow::Result<()> {
    let (_cluster, mut dms, db, old, old_epoch) = start_active(&logs, "dm_split").await?;
    let new = 1 - old;
    let new_endpoint = vec![dms.nodes[new].admin_endpoint()];
    let p = new_participant("gina")?;
    let pid = p.0.to_string();

    dms.nodes[old].process()?.pause()?;
    // A write reaches the paused active directly (no client-side redirect): it is
    // handled only after SIGCONT.
    let old_admin = dms.nodes[old].admin_endpoint();
    let pending_write = tokio::spawn({
        let ep = old_admin.clone();
        let pid = pid.clone();
        async move { raw_set_state(&ep, &pid, pb::ParticipantPermission::Confirmation).await }
    });
    // Past the lease (2 s TTL) and the other's takeover.
    let new_active = dms.wait_active(Duration::from_secs(8)).await?;
    ensure!(
        new_active == new,
        "replica {new} must take over, got {new_active}"
    );
    let new_epoch = lease_epoch(&db).await?;
    ensure!(
        new_epoch == old_epoch + 1,
        "takeover epoch {old_epoch} -> {new_epoch}"
    );
    let out = domainctl(&new_endpoint, &set_state_args(&pid, "submission", &[])).await?;
    ensure!(
        out.status.success(),
        "write through the new active: {}",
        text(&out)
    );

    dms.nodes[old].process()?.resume()?;
    let old_write = pending_write.await.context("write task")?;
    println!("write sent to the paused old active, answered after SIGCONT: {old_write:?}");
    let st = rejected(old_write, "the old active's write after its lease expired")?;
    expect_status(
        &st,
        Code::Unavailable,
        Some("DM_NOT_ACTIVE"),
        "write queued at the paused old active",
    )?;
    // It stays passive, keeps refusing writes, and names the new active.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !dms.nodes[old].is_ready().await,
        "old replica must report not ready"
    );
    let st = rejected(
        raw_set_state(&old_admin, &pid, pb::ParticipantPermission::Observation).await,
        "a write at the old replica",
    )?;

    expect_status(
        &st,
        Code::Unavailable,
        Some("DM_NOT_ACTIVE"),
        "write at the old replica",
    )?;
    let named = st
        .metadata()
        .get(domain_proto::error::ACTIVE_REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        named == dms.nodes[new].admin_endpoint(),
        "the refusal names the new active: {named:?}"
    );
    // Following the named active, domainctl still gets the write done with both endpoints.
    let out = dms.set_state(&pid, "observation", &[]).await?;
    ensure!(
        out.status.success(),
        "write via both endpoints: {}",
        text(&out)
    );

    // The database proof: nothing written with the stale epoch after the takeover.
    let (stale, fresh, acquired): (i64, i64, Option<String>) = seq_db::three(
        &db,
        "SELECT count(*) FILTER (WHERE written_epoch = $1 AND written_at >= l.acquired_at),
                count(*) FILTER (WHERE written_epoch = $2),
                min(l.acquired_at)::text
         FROM dm_topology, leases l WHERE l.name = 'domain-manager'",
        &[&old_epoch, &new_epoch],
    )
    .await?;
    println!(
        "rows written with stale epoch {old_epoch} after the takeover at {acquired:?}: {stale}; rows with epoch {new_epoch}: {fresh}"
    );
    ensure!(
        stale == 0,
        "{stale} rows carry the stale epoch after the takeover"
    );
    ensure!(
        fresh >= 2,
        "the new active's writes carry its epoch ({fresh} rows)"
    );
    let got = ctl_json(&dms, &["participants", "get", &pid]).await?;
    ensure!(
        got.get("permission").and_then(Value::as_str) == Some("observation"),
        "final state is the last accepted write: {got}"
    );
    Ok(())
}

/// SetParticipantState straight to one replica, without domainctl's redirects.
async fn raw_set_state(
    endpoint: &str,
    participant: &str,
    permission: pb::ParticipantPermission,
) -> Result<manager_admin_pb::SetParticipantStateResponse, tonic::Status> {
    let mut client = DomainAdminServiceClient::connect(endpoint.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect {endpoint}: {e}")))?;
    let mut req = tonic::Request::new(manager_admin_pb::SetParticipantStateRequest {
        participant_id: participant.to_string(),
        permission: permission as i32,
        trust_level: pb::TrustLevel::Ordinary as i32,
        public_key: None,
    });
    req.set_timeout(Duration::from_secs(20));
    client
        .set_participant_state(req)
        .await
        .map(tonic::Response::into_inner)
}

e2e_test! {
    serial bad_cli_input_changes_nothing => bad_cli_body
}

async fn bad_cli_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, dms) = start_domain(&logs, "dm_badcli").await?;
    let db = db_client(&dms.database.url).await?;
    let seq_db = db_client(&cluster.database.url).await?;
    let counts = async || -> anyhow::Result<(i64, i64)> {
        let a: i64 = seq_db::one(&db, "SELECT count(*) FROM dm_topology", &[]).await?;
        let b: i64 = seq_db::one(&seq_db, "SELECT count(*) FROM seq_topology", &[]).await?;
        Ok((a, b))
    };
    let before = counts().await?;
    let known = new_participant("hank")?.0.to_string();
    let ghost = new_participant("ghost")?.0.to_string();
    let mediator_id = known.replacen("PAR::", "MED::", 1);
    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "malformed id",
            set_state_args("alice", "submission", &[]),
            2,
            "invalid participant id",
        ),
        (
            "bad fingerprint",
            vec!["participants", "get", "PAR::alice::1220zz"],
            2,
            "invalid participant id",
        ),
        (
            "mediator id as participant",
            vec!["participants", "disable", &mediator_id],
            2,
            "invalid participant id",
        ),
        (
            "invalid permission",
            set_state_args(&known, "admin", &[]),
            2,
            "admin",
        ),
        (
            "invalid trust level",
            set_state_args(&known, "submission", &["--trust-level", "gold"]),
            2,
            "gold",
        ),
        (
            "unknown participant: disable",
            vec!["participants", "disable", &ghost],
            1,
            "DM_UNKNOWN_PARTICIPANT",
        ),
        (
            "unknown participant: remove",
            vec!["participants", "remove", &ghost],
            1,
            "DM_UNKNOWN_PARTICIPANT",
        ),
        (
            "unknown participant: get",
            vec!["participants", "get", &ghost],
            1,
            "DM_UNKNOWN_PARTICIPANT",
        ),
        (
            "parameters out of range",
            vec!["parameters", "set", "--max-request-size", "10"],
            1,
            "DM_INVALID_ARGUMENT",
        ),
    ];
    for (case, args, code, needle) in cases {
        let out = dms.domainctl(&args).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{case}: exit {:?}: {}", out.status.code(), stderr.trim());
        ensure!(
            out.status.code() == Some(code),
            "{case}: expected exit {code}: {}",
            text(&out)
        );
        ensure!(
            stderr.contains(needle),
            "{case}: stderr must mention {needle:?}: {stderr}"
        );
        ensure!(
            out.stdout.is_empty(),
            "{case}: nothing on stdout: {}",
            text(&out)
        );
    }
    // No replica reachable: exit 3.
    let out = domainctl(
        &["http://127.0.0.1:1".to_string()],
        &["participants", "list"],
    )
    .await?;
    println!(
        "unreachable: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    ensure!(
        out.status.code() == Some(3),
        "unreachable endpoint: {}",
        text(&out)
    );
    ensure!(
        counts().await? == before,
        "bad input changed topology: {before:?} -> {:?}",
        counts().await?
    );
    Ok(())
}

e2e_test! {
    /// Issue 11 item 14: the reply to a topology send is lost after the sequencer committed
    /// it, and the domain manager hears nothing back for longer than the send's max
    /// sequencing time (its replies keep being dropped until the sequencer has even pruned
    /// the deduplication row). The change must be sequenced exactly once, and the domain
    /// manager must record the timestamp members see (the sequencer's event and its topology
    /// table), not that of a second copy.
    serial item_14_resend_after_deadline_is_sequenced_once => resend_after_deadline_body
}

async fn resend_after_deadline_body(logs: TestLogs) -> anyhow::Result<()> {
    let seq_database = PgCluster::shared().create_database("dm_resend_seq").await;
    let dm_database = PgCluster::shared().create_database("dm_resend_dm").await;
    // Short windows so the outage can outlast them quickly: submissions without a max
    // sequencing time get 2 s, and expired deduplication rows are pruned within a second.
    let cluster = SequencerCluster::start(
        logs.clone(),
        seq_database,
        1,
        "[writer]\ndefault-max-sequencing = \"2s\"\n\n[pruning]\ninterval = \"1s\"\nretention = \"0s\"\n",
    )
    .await?;
    let dms = DomainManagers::start(
        &cluster,
        dm_database,
        1,
        "send-deadline = \"2s\"\nmax-sequencing-window = \"2s\"\nretry-interval = \"500ms\"",
    )
    .await?;
    let dm_db = db_client(&dms.database.url).await?;
    let seq_db = db_client(&cluster.database.url).await?;
    // A member that reads nothing holds the pruning bound below every later event, so
    // the domain manager's stream keeps them (its own acknowledgements do not count: the
    // sequencer does not wait for the domain manager). Deduplication rows are pruned
    // regardless, once past their max sequencing time.
    cluster
        .add_member(domain_identity::MemberRole::Participant, "laggard")
        .await?;
    let p = new_participant("grace")?;
    let pid = p.0.to_string();

    // Every reply is lost from now on: the write fails, its row stays pending.
    let drop_file = dms.drop_reply_file(0);
    std::fs::write(&drop_file, b"drop")?;
    let out = set_state_once(&dms.endpoints(), &pid, "submission").await?;
    ensure!(
        !out.status.success(),
        "the write succeeded although its reply was dropped: {}",
        text(&out)
    );
    let serial: i64 = seq_db::one(
        &dm_db,
        "SELECT serial FROM dm_topology WHERE mapping_key = $1",
        &[&format!("participant/{pid}")],
    )
    .await?;
    let message_id = format!("topology-{serial}");
    let copies = async || -> anyhow::Result<Vec<i64>> {
        Ok(seq_db
            .query(
                "SELECT ts FROM seq_events WHERE message_id = $1 OR message_id LIKE $2 \
                 ORDER BY ts",
                &[&message_id, &format!("{message_id}-%")],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    };
    let started = Instant::now();
    while copies().await?.is_empty() {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{message_id} was never sequenced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = copies().await?[0];
    println!("{message_id} sequenced at {first}; its replies are dropped");

    // No reply for longer than the max sequencing time, until the sequencer has pruned
    // the deduplication row (at most 20 s: a row that keeps being replaced by new copies
    // never goes).
    let dropped_since = Instant::now();
    loop {
        let dedup: i64 = seq_db::one(
            &seq_db,
            "SELECT count(*) FROM seq_dedup WHERE message_id = $1",
            &[&message_id],
        )
        .await?;
        if dedup == 0 && dropped_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        if dropped_since.elapsed() > Duration::from_secs(20) {
            println!("the deduplication row of {message_id} was still there after 20 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(&drop_file)?;
    let outage = dropped_since.elapsed();

    // The domain manager settles the row.
    let settled = Instant::now();
    let recorded: i64 = loop {
        let (state, sequenced): (String, Option<i64>) = seq_db::two(
            &dm_db,
            "SELECT state, sequenced_ts FROM dm_topology WHERE serial = $1",
            &[&serial],
        )
        .await?;
        if state == "sequenced" {
            break sequenced.context("a sequenced row without sequenced_ts")?;
        }
        ensure!(
            settled.elapsed() < Duration::from_secs(20),
            "row {serial} still pending 20 s after the replies came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all = copies().await?;
    let members: i64 = seq_db::one(
        &seq_db,
        "SELECT sequenced_ts FROM seq_topology WHERE serial = $1",
        &[&serial],
    )
    .await?;

    println!(
        "replies dropped for {:.1} s; {message_id} sequenced {} time(s) at {all:?}; the domain \
         manager recorded {recorded}, members see {members}",
        outage.as_secs_f64(),
        all.len()
    );
    ensure!(
        all.len() == 1,
        "{message_id} was sequenced {} times: {all:?}",
        all.len()
    );
    ensure!(
        recorded == all[0] && members == all[0],
        "the domain manager recorded {recorded}, the event is at {}, members see {members}",
        all[0]
    );
    // The refusal path was the one taken: the replies stayed dropped until the
    // deduplication row was pruned, so only the own event stream could settle it.
    ensure!(
        dms.nodes[0]
            .process
            .as_ref()
            .context("dm-0 process")?
            .read_log()
            .contains("sequenced before its reply was lost"),
        "the domain manager did not settle {message_id} from its own event stream"
    );

    // The next write goes through normally.
    let q = new_participant("heidi")?;
    let out = set_state_once(&dms.endpoints(), &q.0.to_string(), "submission").await?;
    ensure!(out.status.success(), "the next write: {}", text(&out));
    Ok(())
}
