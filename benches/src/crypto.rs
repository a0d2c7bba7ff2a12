//! Phase 0: what the per-event signatures cost on this machine. Every event costs
//! one ed25519 signature by the sender, one verification of it by the sequencer,
//! one sequencer signature over the event, and one verification per recipient,
//! through the same `domain_identity` calls the real code paths use.

use std::time::Instant;

use domain_identity::{SignaturePurpose, SigningKeyPair};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CryptoCost {
    pub message_bytes: usize,
    /// Best of several rounds, single thread, µs per operation.
    pub sign_us: f64,
    pub verify_us: f64,
    /// Events/s the whole machine could do if it did nothing but the signature
    /// work of each event (2 signs + (1 + fanout) verifications), all cores.
    pub ceiling_events_per_sec: f64,
    /// Same, counting only the sequencer's share (1 verify + 1 sign per event).
    pub sequencer_only_ceiling_events_per_sec: f64,
}

pub fn measure(payload_bytes: usize, fanout: usize) -> anyhow::Result<CryptoCost> {
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
    let per_event = 2.0 * sign_us + (1.0 + fanout as f64) * verify_us;
    Ok(CryptoCost {
        message_bytes: msg.len(),
        sign_us,
        verify_us,
        ceiling_events_per_sec: cores * 1e6 / per_event,
        sequencer_only_ceiling_events_per_sec: cores * 1e6 / (sign_us + verify_us),
    })
}
