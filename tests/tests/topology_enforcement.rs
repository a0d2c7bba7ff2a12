//! The sequencer enforces the domain manager's topology, with real `sequencer`
//! processes over one PostgreSQL and topology transactions signed with the
//! domain namespace key (the domain manager's part is covered by
//! domain_manager.rs; here the test plays the domain manager itself):
//!
//! - a participant that is not allowlisted is refused a token by every instance;
//!   once its allowlisting is effective it can authenticate, send and subscribe;
//!   when a disabling becomes effective its live subscriptions end within 1 s and
//!   new tokens are refused;
//! - only the domain manager may send topology transactions, only signed by the
//!   namespace key and for this domain; refused ones leave no trace;
//! - domain parameters take effect: the max request size and the topology change
//!   delay itself.

use domain_e2e::e2e_test;
use domain_e2e::seq_cluster::start_with_db;
use domain_e2e::seq_member::{send_to, send_within};
use std::time::Duration;

use anyhow::{bail, ensure};
use domain_e2e::checks::{content_of, expect_status, next_event, status_of, stream_end};
use domain_e2e::seq_auth::{
    connect_when_admitted, expect_refused_everywhere, expect_streams_disabled, refused_token,
};
use domain_e2e::seq_db;
use domain_e2e::topology::{
    domain_manager, new_participant, send_topology, set_state, sleep_until_micros,
    topology_envelope,
};
use domain_e2e::{connect, envelope, now_micros};
use domain_identity::{MemberRole, SigningKeyPair, UniqueId};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_sequencer_client::SequencerConnection;
use domain_testkit::process::TestLogs;
use domain_topology::{DomainParameters, Mapping, Operation, Permission, TopologyTransaction};
use prost::Message as _;
use tonic::Code;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Default topology change delay (no parameters transaction yet).
const DEFAULT_DELAY_MICROS: i64 = 250_000;

e2e_test! {
    serial allowlist_admits_and_disables_participants => allowlist_body
}

async fn allowlist_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, db) = start_with_db(logs, "topo_allowlist", 2, "", &[]).await?;
    let dave = new_participant("dave")?;

    // 1. Not allowlisted: no token from any instance.
    expect_refused_everywhere(
        &cluster,
        &dave,
        "dave",
        "SEQ_MEMBER_UNKNOWN",
        "before allowlisting",
    )
    .await?;

    // 2. Allowlisted with submission permission: admitted at the effective time.
    let dom = connect(&cluster, 0, &domain_manager(&cluster)).await?;
    let ts = send_topology(
        &cluster,
        &dom,
        &set_state(1, &dave.0, Permission::Submission),
    )
    .await?;
    let effective = ts + DEFAULT_DELAY_MICROS;
    if now_micros() < effective - 100_000 {
        let st = refused_token(connect(&cluster, 1, &dave).await, "before effective")?;
        expect_status(
            &st,
            Code::PermissionDenied,
            Some("SEQ_MEMBER_UNKNOWN"),
            "dave's challenge after sequencing but before the effective time",
        )?;
    }
    sleep_until_micros(effective).await;
    let (d0, lag0) = connect_when_admitted(&cluster, 0, &dave, effective).await?;
    let (d1, lag1) = connect_when_admitted(&cluster, 1, &dave, effective).await?;
    println!(
        "dave admitted {:.1} ms (instance 0) and {:.1} ms (instance 1) after the effective time",
        lag0 as f64 / 1000.0,
        lag1 as f64 / 1000.0
    );
    let mut stream = d1.subscribe(0).await?;
    send_to(&d0, "hello-self", b"dave to dave", &dave.0).await?;
    // His stream starts with the topology history (his own allowlisting, sent by
    // the domain manager member), then his own message.
    let first = next_event(&mut stream, "dave's stream").await?;
    let history = pb::DomainMessage::decode(content_of(&first).as_slice())
        .ok()
        .and_then(|m| m.message);
    ensure!(
        first.counter == 0 && matches!(history, Some(pb::domain_message::Message::Topology(_))),
        "dave's first event must be the topology history: counter {}",
        first.counter
    );
    let own = next_event(&mut stream, "dave's stream").await?;
    ensure!(
        own.counter == 1 && content_of(&own) == b"dave to dave",
        "dave's second event: counter {} content {:?}",
        own.counter,
        String::from_utf8_lossy(&content_of(&own))
    );

    // 3. Disabled: the live stream ends within 1 s of the effective time.
    let mut stream0 = d0.subscribe(2).await?;
    let ts = send_topology(&cluster, &dom, &set_state(2, &dave.0, Permission::Disabled)).await?;
    let effective = ts + DEFAULT_DELAY_MICROS;
    let (r1, r0) = tokio::join!(
        stream_end(stream, "dave on instance 1".into()),
        stream_end_micros(&mut stream0)
    );
    let (st1, _) = r1?;
    let (st0, ended0) = r0?;
    let end_lag = now_micros() - effective;
    println!(
        "dave's subscriptions ended: instance 0 {:.1} ms after the effective time; both by {:.1} ms",
        (ended0 - effective) as f64 / 1000.0,
        end_lag as f64 / 1000.0
    );
    expect_streams_disabled(&[&st0, &st1], "dave")?;
    ensure!(
        ended0 >= effective - 2_000,
        "the stream ended {} µs before the effective time",
        effective - ended0
    );
    ensure!(
        end_lag <= 1_000_000,
        "streams must end within 1 s of the effective time, took {end_lag} µs"
    );
    expect_refused_everywhere(
        &cluster,
        &dave,
        "dave",
        "SEQ_MEMBER_DISABLED",
        "after disabling",
    )
    .await?;
    for i in 0..2 {
        let old_token = status_of(
            send_to([&d0, &d1][i], &format!("after-{i}"), b"x", &dave.0).await,
            "send with the old token",
        )?;
        ensure!(
            matches!(
                old_token.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "old token on instance {i}: {old_token:?}"
        );
    }
    let (rows, applied, tokens): (i64, i64, i64) = seq_db::three(
        &db,
        "SELECT count(*), count(*) FILTER (WHERE applied), (SELECT count(*) FROM seq_tokens WHERE member = $1) FROM seq_topology",
        &[&dave.0.to_string()],
    )
    .await?;
    ensure!(
        rows == 2 && applied == 2 && tokens == 0,
        "topology rows {rows}, applied {applied}, dave's tokens {tokens}"
    );
    Ok(())
}

/// Like `stream_end`, returning the status and the sequencer-clock time it arrived.
async fn stream_end_micros(
    stream: &mut tonic::Streaming<sequencer_pb::SubscribeResponse>,
) -> anyhow::Result<(tonic::Status, i64)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => bail!("stream still open 10 s after disabling"),
            Ok(Err(st)) => return Ok((st, now_micros())),
            Ok(Ok(None)) => bail!("stream ended without a status"),
            Ok(Ok(Some(_))) => {}
        }
    }
}

e2e_test! {
    serial only_signed_domain_topology_is_accepted_and_parameters_apply => signed_topology_body
}

async fn signed_topology_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, db) = start_with_db(logs, "topo_signed", 1, "", &[]).await?;
    let alice = cluster.add_member(MemberRole::Participant, "alice").await?;
    let a = connect(&cluster, 0, &alice).await?;
    let dom = connect(&cluster, 0, &domain_manager(&cluster)).await?;
    let eve = new_participant("eve")?;
    let count = async || -> anyhow::Result<(i64, i64)> {
        seq_db::two(
            &db,
            "SELECT (SELECT count(*) FROM seq_topology), (SELECT count(*) FROM seq_events)",
            &[],
        )
        .await
    };
    let before = count().await?;

    let allow_eve = set_state(1, &eve.0, Permission::Submission);
    let other_domain =
        domain_identity::DomainId::new(UniqueId::new("other", *cluster.domain_key.fingerprint())?);
    let mut direct = topology_envelope(allow_eve.sign(&cluster.domain_id, &cluster.domain_key));
    direct.broadcast = false;
    direct.recipients = vec![alice.0.to_string()];
    // (case, sender, message id, envelope): every one refused as SEQ_TOPOLOGY_INVALID.
    let refused: [(&str, &SequencerConnection, &str, sequencer_pb::Envelope); 5] = [
        // A participant sends a correctly signed transaction: not its to send.
        (
            "participant sends topology",
            &a,
            "replay",
            topology_envelope(allow_eve.sign(&cluster.domain_id, &cluster.domain_key)),
        ),
        // The domain manager member sends one signed by another key.
        (
            "topology signed by another key",
            &dom,
            "topology-1",
            topology_envelope(allow_eve.sign(&cluster.domain_id, &SigningKeyPair::generate())),
        ),
        // For another domain.
        (
            "topology of another domain",
            &dom,
            "topology-1",
            topology_envelope(allow_eve.sign(&other_domain, &cluster.domain_key)),
        ),
        // Not broadcast, and not topology at all.
        ("topology not broadcast", &dom, "topology-1", direct),
        (
            "domain manager sends a non-topology payload",
            &dom,
            "chat",
            envelope(b"hello".to_vec(), &[&alice.0]),
        ),
    ];
    for (case, sender, message_id, env) in refused {
        let sent = sender
            .send(message_id, vec![env], now_micros() + 60_000_000)
            .await;
        expect_status(
            &status_of(sent, case)?,
            Code::InvalidArgument,
            Some("SEQ_TOPOLOGY_INVALID"),
            case,
        )?;
    }

    ensure!(
        count().await? == before,
        "refused transactions left a trace: {before:?} -> {:?}",
        count().await?
    );
    ensure!(
        refused_token(connect(&cluster, 0, &eve).await, "eve").is_ok(),
        "eve must still be refused"
    );

    // Parameters: a 2 KiB request limit and a 1 s change delay.
    let params = DomainParameters {
        max_request_size: 2048,
        topology_change_delay: Duration::from_secs(1),
        ..DomainParameters::default()
    };
    let tx = TopologyTransaction {
        serial: 1,
        operation: Operation::Replace,
        mapping: Mapping::Parameters(params),
    };
    let ts = send_topology(&cluster, &dom, &tx).await?;
    // 4 KiB passes before the change is effective...
    if now_micros() < ts + DEFAULT_DELAY_MICROS - 50_000 {
        send_to(&a, "big-before", &[7u8; 4096], &alice.0).await?;
    }
    sleep_until_micros(ts + DEFAULT_DELAY_MICROS + 50_000).await;
    // ... and not after.
    let st = status_of(
        send_to(&a, "big-after", &[7u8; 4096], &alice.0).await,
        "large send",
    )?;
    expect_status(
        &st,
        Code::ResourceExhausted,
        Some("SEQ_REQUEST_TOO_LARGE"),
        "4 KiB send under a 2 KiB limit",
    )?;
    send_to(&a, "small-after", &[7u8; 512], &alice.0).await?;
    // The next transaction takes effect after the new 1 s delay.
    let ts = send_topology(
        &cluster,
        &dom,
        &set_state(2, &eve.0, Permission::Observation),
    )
    .await?;
    let (seq, eff): (i64, i64) = seq_db::two(
        &db,
        "SELECT sequenced_ts, effective_ts FROM seq_topology WHERE serial = 2",
        &[],
    )
    .await?;

    ensure!(
        seq == ts && eff - seq == 1_000_000,
        "serial 2: sequenced {seq}, effective {eff}"
    );
    sleep_until_micros(eff).await;
    let (_eve, lag) = connect_when_admitted(&cluster, 0, &eve, eff).await?;
    println!(
        "eve (observation) admitted {:.1} ms after the 1 s delay",
        lag as f64 / 1000.0
    );
    Ok(())
}

e2e_test! {
    /// Issue 11 item 7: the review's timeline. The change delay goes 10 s → 0; a disable
    /// (sequenced under the old delay) becomes effective *after* a later enable (sequenced
    /// under the new one). The highest effective serial wins for the sequencer and for every
    /// member. And every effective time the sequencer stores is the one a member computes
    /// from its stream (`TopologyState::add`), also for a transaction sequenced right behind a
    /// parameters change in the same submission, which the instance's topology cache cannot
    /// have loaded yet (review L1).
    serial topology_timeline_after_a_delay_decrease_item_7 => topology_timeline_body
}

fn parameters(serial: u64, delay: Duration) -> TopologyTransaction {
    TopologyTransaction {
        serial,
        operation: Operation::Replace,
        mapping: Mapping::Parameters(DomainParameters {
            topology_change_delay: delay,
            ..DomainParameters::default()
        }),
    }
}

/// The topology state a member derives from its stream: every topology broadcast read
/// from `stream` up to sequencer time `until`, added in stream order.
async fn member_view(
    cluster: &SequencerCluster,
    stream: &mut tonic::Streaming<sequencer_pb::SubscribeResponse>,
    state: &mut domain_topology::TopologyState,
    until: i64,
) -> anyhow::Result<()> {
    let domain = cluster.domain_id.to_string();
    loop {
        let event = next_event(stream, "observer stream").await?;
        for delivered in &event.envelopes {
            let Some(env) = &delivered.envelope else {
                continue;
            };
            let Ok(pb::DomainMessage {
                message: Some(pb::domain_message::Message::Topology(signed)),
            }) = pb::DomainMessage::decode(env.content.as_ref())
            else {
                continue;
            };
            let tx = TopologyTransaction::from_signed(&signed, &domain)?;
            state.add(event.timestamp_micros, tx);
        }
        if event.timestamp_micros >= until {
            return Ok(());
        }
    }
}

async fn topology_timeline_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, db) = start_with_db(logs, "topo_timeline", 2, "", &[]).await?;
    let observer = cluster
        .add_member(MemberRole::Participant, "observer")
        .await?;
    let obs = connect(&cluster, 0, &observer).await?;
    let mut stream = obs.subscribe(0).await?;
    // Topology through both instances in turn: each one's cache lags the other's commits.
    let dom = [
        connect(&cluster, 0, &domain_manager(&cluster)).await?,
        connect(&cluster, 1, &domain_manager(&cluster)).await?,
    ];
    let p = new_participant("p")?;

    // P allowlisted under the default delay, then the delay raised to 10 s.
    let t = send_topology(
        &cluster,
        &dom[0],
        &set_state(1, &p.0, Permission::Submission),
    )
    .await?;
    sleep_until_micros(t + DEFAULT_DELAY_MICROS + 100_000).await;
    let t = send_topology(&cluster, &dom[1], &parameters(2, Duration::from_secs(10))).await?;
    sleep_until_micros(t + DEFAULT_DELAY_MICROS + 100_000).await;

    // t0: delay → 0 (effective t0 + 10 s); t0 + 1 s: disable P (effective t0 + 11 s);
    // t0 + 10.5 s: enable P, under the new delay effective at once.
    let t0 = send_topology(&cluster, &dom[0], &parameters(3, Duration::ZERO)).await?;
    sleep_until_micros(t0 + 1_000_000).await;
    send_topology(&cluster, &dom[1], &set_state(4, &p.0, Permission::Disabled)).await?;
    sleep_until_micros(t0 + 10_500_000).await;
    let t_enable = send_topology(
        &cluster,
        &dom[0],
        &set_state(5, &p.0, Permission::Submission),
    )
    .await?;
    ensure!(
        t_enable < t0 + 11_000_000,
        "the enable was sequenced at t0 + {} µs, after the disable became effective: the box is \
         too slow for this timeline",
        t_enable - t0
    );

    // One submission: the delay → 2 s, then Q allowlisted. Q's transaction is sequenced at
    // the instant the new delay takes effect, so members give it ts + 2 s.
    let q = new_participant("q")?;
    let both = vec![
        topology_envelope(
            parameters(6, Duration::from_secs(2)).sign(&cluster.domain_id, &cluster.domain_key),
        ),
        topology_envelope(
            set_state(7, &q.0, Permission::Submission)
                .sign(&cluster.domain_id, &cluster.domain_key),
        ),
    ];
    let t_both = dom[1]
        .send("topology-7", both, now_micros() + 60_000_000)
        .await?
        .sequencing_timestamp_micros;
    sleep_until_micros(t0 + 11_500_000).await;

    // Every member's view.
    let mut view = domain_topology::TopologyState::new();
    member_view(&cluster, &mut stream, &mut view, t_both).await?;
    let now = now_micros();
    let member_says = view
        .participant_at(&p.0.to_string(), now)
        .map(|a| a.permission);
    ensure!(
        member_says == Some(Permission::Submission),
        "members must see P enabled (serial 5 is the highest effective serial), see {member_says:?}"
    );
    // The sequencer's view: P authenticates, sends and is enabled in seq_members.
    let enabled: Option<bool> = db
        .query_opt(
            "SELECT enabled FROM seq_members WHERE member = $1",
            &[&p.0.to_string()],
        )
        .await?
        .map(|r| r.get(0));
    ensure!(
        enabled == Some(true),
        "the sequencer must have P enabled, has {enabled:?}"
    );
    for i in 0..2 {
        let via = connect(&cluster, i, &p).await?;
        send_within(
            &via,
            &format!("p-after-{i}"),
            b"still here",
            &observer.0,
            Duration::from_secs(10),
        )
        .await?;
    }

    // Stored effective times against the members' computation.
    let stored: Vec<(i64, i64)> = db
        .query(
            "SELECT serial, effective_ts FROM seq_topology ORDER BY serial",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let computed: Vec<(i64, i64)> = view
        .entries()
        .map(|e| (e.tx.serial as i64, e.effective_ts))
        .collect();
    ensure!(
        stored == computed,
        "seq_topology effective times differ from the members' computation:\n stored   {stored:?}\n \
         computed {computed:?}"
    );
    let q_effective = stored.iter().find(|(s, _)| *s == 7).map(|(_, e)| *e);
    ensure!(
        q_effective == Some(t_both + 2_000_000),
        "serial 7 was sequenced at {t_both} behind a delay change to 2 s in the same submission: \
         effective must be {}, is {q_effective:?}",
        t_both + 2_000_000
    );
    Ok(())
}
