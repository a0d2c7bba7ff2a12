//! Admission of a member by the sequencer instances (the allowlist tests of
//! domain_manager.rs and topology_enforcement.rs): refused tokens, waiting for admission,
//! streams ended by a disabling.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::{ClientError, SequencerConnection};
use tonic::{Code, Status};

use crate::checks::expect_status;
use crate::topology::Member;
use crate::{connect, now_micros};

/// The gRPC status of a connection attempt that must be refused.
pub fn refused_token(r: anyhow::Result<SequencerConnection>, case: &str) -> anyhow::Result<Status> {
    match r {
        Ok(_) => bail!("{case}: expected a refused token, got a connection"),
        Err(e) => match e.downcast::<ClientError>() {
            Ok(ClientError::Status(st)) => Ok(st),
            Ok(other) => bail!("{case}: expected a gRPC status, got {other}"),
            Err(other) => bail!("{case}: expected a gRPC status, got {other:#}"),
        },
    }
}

/// Every instance of the cluster refuses `member` a token with PERMISSION_DENIED and
/// `domain_code`; `when` names the moment in the messages ("{who}'s challenge on instance
/// {i} {when}").
pub async fn expect_refused_everywhere(
    cluster: &SequencerCluster,
    member: &Member,
    who: &str,
    domain_code: &str,
    when: &str,
) -> anyhow::Result<()> {
    for i in 0..cluster.nodes.len() {
        let st = refused_token(connect(cluster, i, member).await, when)?;
        expect_status(
            &st,
            Code::PermissionDenied,
            Some(domain_code),
            &format!("{who}'s challenge on instance {i} {when}"),
        )?;
    }
    Ok(())
}

/// Connects once the member is admitted; returns the connection and how long
/// after `effective` (sequencer time) that was.
pub async fn connect_when_admitted(
    cluster: &SequencerCluster,
    i: usize,
    member: &Member,
    effective: i64,
) -> anyhow::Result<(SequencerConnection, i64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(cluster, i, member).await {
            Ok(c) => return Ok((c, now_micros() - effective)),
            Err(e) if Instant::now() < deadline => {
                let text = format!("{e:#}");
                ensure!(
                    text.contains("not registered"),
                    "unexpected refusal on instance {i}: {text}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("instance {i} still refuses after 5 s: {e:#}"),
        }
    }
}

/// The statuses that ended `who`'s streams, one per instance in order, are
/// PERMISSION_DENIED with `SEQ_MEMBER_DISABLED`.
pub fn expect_streams_disabled(statuses: &[&Status], who: &str) -> anyhow::Result<()> {
    for (i, st) in statuses.iter().enumerate() {
        expect_status(
            st,
            Code::PermissionDenied,
            Some("SEQ_MEMBER_DISABLED"),
            &format!("{who}'s stream on instance {i}"),
        )?;
    }
    Ok(())
}
