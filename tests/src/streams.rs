//! Reading a member's event stream in the end-to-end tests.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::SequencerConnection;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// How long [`collect`] waits for the next event once the target count is known.
pub const IDLE_AFTER_TARGET: Duration = Duration::from_secs(10);

/// One subscription's events with their arrival instants.
pub struct Collected {
    pub events: Vec<pb::SequencedEvent>,
    pub arrivals: Vec<Instant>,
    pub resubscribes: usize,
}

/// Reads `conn`'s stream from `from_counter` until the target count is known and reached
/// (then listens `grace` longer for extra events). A broken stream is resumed at the next
/// counter on the same connection, counted in `resubscribes`. After the target is known,
/// [`IDLE_AFTER_TARGET`] without an event ends the reading early (the checks then name the
/// missing events).
pub async fn collect(
    conn: SequencerConnection,
    from_counter: i64,
    mut target: watch::Receiver<Option<usize>>,
    deadline: Instant,
    grace: Duration,
) -> anyhow::Result<Collected> {
    let mut c = Collected {
        events: Vec::new(),
        arrivals: Vec::new(),
        resubscribes: 0,
    };
    let who = conn.member.id.to_string();
    let mut stream = conn.subscribe(from_counter).await?;
    loop {
        if target.borrow().is_some_and(|t| c.events.len() >= t) {
            break;
        }
        let next = tokio::select! {
            m = stream.message() => m,
            changed = target.changed() => {
                changed.context("target sender dropped")?;
                continue;
            }
            _ = tokio::time::sleep_until(deadline.into()) => bail!(
                "{who}: timed out with {} events (target {:?})", c.events.len(), *target.borrow()
            ),
            // Once everything is acknowledged, a long silence means events will not come:
            // return what arrived, so the checks name the missing events.
            _ = tokio::time::sleep(IDLE_AFTER_TARGET), if target.borrow().is_some() => {
                println!("{who}: no event for {IDLE_AFTER_TARGET:?} with {} of {:?}; giving up",
                    c.events.len(), *target.borrow());
                break;
            }
        };
        match next {
            Ok(Some(resp)) => {
                c.arrivals.push(Instant::now());
                c.events.push(resp.event.context("response without event")?);
            }
            broken => {
                c.resubscribes += 1;
                let resume = from_counter + c.events.len() as i64;
                println!("{who}: stream broke ({broken:?}); resuming at counter {resume}");
                ensure!(c.resubscribes <= 10, "{who}: too many broken streams");
                stream = loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match conn.subscribe(resume).await {
                        Ok(s) => break s,
                        Err(e) if Instant::now() < deadline => {
                            println!("{who}: resubscribe failed: {e}")
                        }
                        Err(e) => return Err(e).context("resubscribe"),
                    }
                };
            }
        }
    }
    let until = Instant::now() + grace;
    while let Ok(Ok(Some(resp))) = tokio::time::timeout_at(until.into(), stream.message()).await {
        c.arrivals.push(Instant::now());
        c.events.push(resp.event.context("response without event")?);
    }
    Ok(c)
}

/// Identifies an event's signed part: (content, signature, signer), so that identical
/// signed bytes delivered to several members are verified once.
pub fn signed_key(event: &pb::SequencedEvent) -> anyhow::Result<[u8; 32]> {
    let sig = event.signature.as_ref().context("missing signature")?;
    let mut h = Sha256::new();
    h.update((event.content.len() as u64).to_le_bytes());
    h.update(&event.content);
    h.update(&sig.signature);
    h.update(sig.signer_fingerprint.as_bytes());
    Ok(h.finalize().into())
}
