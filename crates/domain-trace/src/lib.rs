//! The W3C trace context (`traceparent`) carried by requests and events: parsing,
//! formatting, new ids, and the context current on a task. A leaf crate so the client library
//! propagates traces without the service runtime (log set-up and span export live there).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::futures::TaskLocalFuture;
use tonic::metadata::MetadataMap;

/// Name of the W3C trace context header (also the gRPC metadata key).
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context: trace id, the id of the current span, and trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

/// A `traceparent` value that does not follow the W3C format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {0}")]
pub struct InvalidTraceparent(&'static str);

impl TraceContext {
    /// Creates a new trace (random trace and span ids, sampled flag set).
    pub fn generate() -> Self {
        let mut trace_id = [0u8; 16];
        fill_nonzero(&mut trace_id);
        Self {
            trace_id,
            span_id: new_span_id(),
            flags: 0x01,
        }
    }

    /// Returns a context for a child span: same trace id and flags, new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase).
    ///
    /// Follows the W3C rules: version `ff` and all-zero ids are invalid, version `00` must be
    /// exactly 55 characters, and later versions may append `-`-separated fields.
    pub fn parse_traceparent(value: &str) -> Result<Self, InvalidTraceparent> {
        let value = value.trim();
        if !value.is_ascii() {
            // Also keeps the byte-offset slicing below on character boundaries.
            return Err(InvalidTraceparent("not ascii"));
        }
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return Err(InvalidTraceparent("too short"));
        }
        let version = decode_hex::<1>(&value[0..2]).ok_or(InvalidTraceparent("bad version"))?[0];
        if version == 0xff {
            return Err(InvalidTraceparent("version ff is forbidden"));
        }
        if version == 0 && bytes.len() != 55 {
            return Err(InvalidTraceparent("version 00 must be 55 characters"));
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return Err(InvalidTraceparent("bad field separator"));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(InvalidTraceparent("bad field separator"));
        }
        let trace_id = decode_hex::<16>(&value[3..35]).ok_or(InvalidTraceparent("bad trace id"))?;
        let span_id = decode_hex::<8>(&value[36..52]).ok_or(InvalidTraceparent("bad parent id"))?;
        let flags = decode_hex::<1>(&value[53..55]).ok_or(InvalidTraceparent("bad flags"))?[0];
        if trace_id == [0; 16] {
            return Err(InvalidTraceparent("all-zero trace id"));
        }
        if span_id == [0; 8] {
            return Err(InvalidTraceparent("all-zero parent id"));
        }
        Ok(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A context from its parts (e.g. an exported span's ids).
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Self {
        Self {
            trace_id,
            span_id,
            flags,
        }
    }

    /// The trace id's 16 bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The span id's 8 bytes.
    pub fn span_id_bytes(&self) -> [u8; 8] {
        self.span_id
    }

    /// Formats as a version-00 `traceparent` value.
    pub fn to_traceparent(&self) -> String {
        self.to_string()
    }

    /// Returns the trace id as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Returns the span id as 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex::encode(self.span_id)
    }

    /// Returns the trace flags (bit 0 is "sampled").
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Returns the context of the request being handled on this task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|ctx| *ctx).ok()
    }

    /// Runs `f` with `self` as the current trace context (synchronous code, e.g. event
    /// processing that builds submissions).
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Runs `future` with `self` as the current trace context.
    pub fn scope<F: Future>(self, future: F) -> TaskLocalFuture<TraceContext, F> {
        CURRENT.scope(self, future)
    }

    /// Reads a valid `traceparent` from gRPC metadata.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        Self::from_headers(&metadata.clone().into_headers())
    }

    /// Reads a valid `traceparent` from HTTP headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let value = headers.get(TRACEPARENT)?.to_str().ok()?;
        Self::parse_traceparent(value).ok()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

impl FromStr for TraceContext {
    type Err = InvalidTraceparent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_traceparent(s)
    }
}

/// Decodes exactly `N` bytes of lowercase hex.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn new_span_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    fill_nonzero(&mut id);
    id
}

/// Fills `buf` with random bytes, never all zero (the W3C "invalid" value).
fn fill_nonzero(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // The OS RNG failing is not worth failing a request for: ids only need to be unique
        // enough to correlate logs, so fall back to a clock-seeded counter.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        #[expect(clippy::disallowed_methods, reason = "a seed, not a timestamp")]
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut state = nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        for chunk in buf.chunks_mut(8) {
            state = splitmix64(state);
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    if buf.iter().all(|b| *b == 0) {
        buf[buf.len() - 1] = 1;
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_traceparent() {
        let ctx = TraceContext::parse_traceparent(SAMPLE).expect("valid sample");
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id(), "00f067aa0ba902b7");
        assert_eq!(ctx.flags(), 1);
        assert_eq!(ctx.to_traceparent(), SAMPLE);
        assert_eq!(SAMPLE.parse::<TraceContext>(), Ok(ctx));
    }

    #[test]
    fn future_versions_may_carry_extra_fields() {
        let value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future";
        let ctx = TraceContext::parse_traceparent(value).expect("future version is accepted");
        assert_eq!(ctx.to_traceparent(), SAMPLE);
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                TraceContext::parse_traceparent(bad).is_err(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn generated_ids_are_fresh_and_valid() {
        let a = TraceContext::generate();
        let b = TraceContext::generate();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(TraceContext::parse_traceparent(&a.to_traceparent()), Ok(a));
        let child = a.child();
        assert_eq!(child.trace_id(), a.trace_id());
        assert_ne!(child.span_id(), a.span_id());
    }

    /// Collects everything the subscriber writes.
    #[test]
    fn fallback_ids_are_never_zero() {
        let mut buf = [0u8; 8];
        fill_nonzero(&mut buf);
        assert_ne!(buf, [0; 8]);
    }
}
