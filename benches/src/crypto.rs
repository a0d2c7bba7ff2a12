//! Phase 0: what the per-event signatures cost on this machine. Every event costs
//! one ed25519 signature by the sender and one verification of it by the sequencer,
//! through the same `domain_identity` calls the real code paths use. The sequencer
//! signs once per batch and a recipient verifies that signature once per batch (batch
//! signatures, issue 17), which at the batch sizes of a loaded run is a small share of
//! an event and is left out.

use std::time::Instant;

use domain_identity::{SignaturePurpose, SigningKeyPair};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CryptoCost {
    pub message_bytes: usize,
    /// Best of several rounds, single thread, µs per operation.
    pub sign_us: f64,
    pub verify_us: f64,
    /// Events/s the whole machine could do if it did nothing but the signature
    /// work of each event (the sender's sign, the sequencer's verify), all cores.
    pub ceiling_events_per_sec: f64,
    /// Same, counting only the sequencer's share (1 verify per event).
    pub sequencer_only_ceiling_events_per_sec: f64,
}

pub fn measure(payload_bytes: usize) -> anyhow::Result<CryptoCost> {
    let key = SigningKeyPair::generate();
    let domain = "testdomain::1220aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let msg = vec![0x5au8; payload_bytes + 200];
    let n = 1000;
    let mut sign_us = f64::MAX;
    let mut verify_us = f64::MAX;
    let sig = key.sign_with_domain_str(SignaturePurpose::Submission, domain, &msg)?;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(key.sign_with_domain_str(
                SignaturePurpose::Submission,
                domain,
                std::hint::black_box(&msg),
            )?);
        }
        sign_us = sign_us.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            key.public_key().verify_with_domain_str(
                SignaturePurpose::Submission,
                domain,
                std::hint::black_box(&msg),
                &sig,
            )?;
        }
        verify_us = verify_us.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1) as f64;
    let per_event = sign_us + verify_us;
    Ok(CryptoCost {
        message_bytes: msg.len(),
        sign_us,
        verify_us,
        ceiling_events_per_sec: cores * 1e6 / per_event,
        sequencer_only_ceiling_events_per_sec: cores * 1e6 / verify_us,
    })
}
