//! Memory and concurrency bounds of an instance, in bytes and calls rather than item
//! counts (issue 11 item 3): the writer queue's byte budget (with a share per sender)
//! and the load-shed layer in front of the public `SequencerService`. Whatever is over a
//! bound is refused at once with the retryable `SEQ_OVERLOADED`; nothing waits in
//! memory for room.

use crate::error::ServiceError as _;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::error::SequencerError;
use crate::metrics as m;

/// Bookkeeping overhead charged per submission on top of its bytes (ids, hashes, the
/// reply channel), so a flood of tiny submissions is bounded too.
pub const SUBMISSION_OVERHEAD: usize = 512;

/// Why a request was shed (label `reason` of `sequencer_load_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// `overload.max-concurrent-requests` calls were already being handled.
    Concurrency,
    /// The caller already had `overload.max-concurrent-requests-per-caller` calls in progress.
    CallerConcurrency,
    /// The writer queue held `writer.max-queue-bytes`.
    QueueBytes,
    /// The sender already held `writer.max-member-queue-bytes` of the queue.
    MemberQueueBytes,
    /// The writer queue held `writer.queue-size` submissions.
    QueueFull,
}

impl ShedReason {
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::Concurrency => "concurrency",
            ShedReason::CallerConcurrency => "caller_concurrency",
            ShedReason::QueueBytes => "queue_bytes",
            ShedReason::MemberQueueBytes => "member_queue_bytes",
            ShedReason::QueueFull => "queue_full",
        }
    }

    /// Counts the shed request and returns the error its caller gets.
    pub fn shed(self) -> SequencerError {
        metrics::counter!(m::LOAD_SHED, "reason" => self.label()).increment(1);
        SequencerError::Overloaded
    }
}

/// Byte budget of the writer queue: the submissions waiting for the writer *and* those in
/// the batch it is writing, since both are in memory until answered.
#[derive(Debug)]
pub struct QueueBudget {
    total_limit: usize,
    member_limit: usize,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    total: usize,
    per_member: HashMap<i32, usize>,
}

impl QueueBudget {
    pub fn new(total_limit: usize, member_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            total_limit,
            member_limit,
            state: Mutex::new(BudgetState::default()),
        })
    }

    /// Reserves `bytes` for `member`, or says which limit it would break. The reservation
    /// lasts until the returned charge is dropped (the submission was answered or dropped).
    pub fn try_charge(
        self: &Arc<Self>,
        member: i32,
        bytes: usize,
    ) -> Result<QueueCharge, ShedReason> {
        {
            // A poisoned lock only means a holder panicked between two plain additions.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let held = state.per_member.get(&member).copied().unwrap_or(0);
            if held.saturating_add(bytes) > self.member_limit {
                return Err(ShedReason::MemberQueueBytes);
            }
            if state.total.saturating_add(bytes) > self.total_limit {
                return Err(ShedReason::QueueBytes);
            }
            state.total += bytes;
            *state.per_member.entry(member).or_default() += bytes;
        }
        metrics::gauge!(m::WRITER_QUEUE_BYTES).increment(bytes as f64);
        Ok(QueueCharge {
            budget: self.clone(),
            member,
            bytes,
        })
    }

    /// Bytes currently charged.
    #[cfg(test)]
    pub fn charged(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// A submission's share of the writer queue's byte budget; released on drop.
#[derive(Debug)]
pub struct QueueCharge {
    budget: Arc<QueueBudget>,
    member: i32,
    bytes: usize,
}

impl Drop for QueueCharge {
    fn drop(&mut self) {
        {
            let mut state = self.budget.state.lock().unwrap_or_else(|e| e.into_inner());
            state.total = state.total.saturating_sub(self.bytes);
            if let Some(held) = state.per_member.get_mut(&self.member) {
                *held = held.saturating_sub(self.bytes);
                if *held == 0 {
                    state.per_member.remove(&self.member);
                }
            }
        }
        metrics::gauge!(m::WRITER_QUEUE_BYTES).decrement(self.bytes as f64);
    }
}

/// Calls in progress, in total and per caller.
#[derive(Debug)]
pub struct CallSlots {
    limit: usize,
    per_caller: usize,
    hasher: std::hash::RandomState,
    state: Mutex<(usize, HashMap<u64, usize>)>,
}

impl CallSlots {
    pub fn new(limit: usize, per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_caller,
            hasher: std::hash::RandomState::new(),
            state: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a slot for `caller` (any bytes that identify it), or says which limit is full.
    pub fn try_acquire(self: &Arc<Self>, caller: &[u8]) -> Result<CallSlot, ShedReason> {
        let key = self.hasher.hash_one(caller);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_caller) = &mut *state;
        let held = per_caller.get(&key).copied().unwrap_or(0);
        if held >= self.per_caller {
            return Err(ShedReason::CallerConcurrency);
        }
        if *total >= self.limit {
            return Err(ShedReason::Concurrency);
        }
        *total += 1;
        *per_caller.entry(key).or_default() += 1;
        Ok(CallSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Calls in progress.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// One call's slot; released on drop.
#[derive(Debug)]
pub struct CallSlot {
    slots: Arc<CallSlots>,
    key: u64,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_caller) = &mut *state;
        *total = total.saturating_sub(1);
        if let Some(held) = per_caller.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                per_caller.remove(&self.key);
            }
        }
    }
}

/// Who a call comes from, for the per-caller limit: its bearer token when it has one (a
/// member's token counts once over all its connections), else its connection (the
/// authentication calls).
fn caller_of(req: &http::Request<Body>) -> Vec<u8> {
    if let Some(token) = req.headers().get("authorization") {
        return token.as_bytes().to_vec();
    }
    let ext = req.extensions();
    let addr = ext
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|t| t.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|t| t.remote_addr()));
    match addr {
        Some(a) => a.to_string().into_bytes(),
        None => Vec::new(),
    }
}

/// Load-shed layer around the public `SequencerService`: at most
/// `overload.max-concurrent-requests` calls are handled at once, and at most
/// `overload.max-concurrent-requests-per-caller` of one caller; one more is answered at once
/// with `SEQ_OVERLOADED` (RESOURCE_EXHAUSTED, which clients retry with backoff) instead of
/// queueing, so the requests an instance holds in memory are bounded by the limit ×
/// `public-api.max-message-size`, and one member sending at full speed cannot take every
/// slot.
///
/// A call holds its slot until its handler returns the response. For `Subscribe` that is
/// when the stream is set up, not when it ends: open subscriptions hold no slot, so any
/// number of idle subscribers cannot block sends (subscriptions are bounded by the reader's
/// own limits instead). Health and reflection are not wrapped: a loaded instance must
/// still answer its probes.
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    slots: Arc<CallSlots>,
}

impl<S> LoadShed<S> {
    pub fn new(inner: S, limit: usize, per_caller: usize) -> Self {
        Self {
            inner,
            slots: CallSlots::new(limit, per_caller),
        }
    }
}

impl<S: NamedService> NamedService for LoadShed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for LoadShed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.slots.try_acquire(&caller_of(&req)) {
            Ok(slot) => {
                let call = self.inner.call(req);
                Box::pin(async move {
                    let response = call.await;
                    drop(slot);
                    response
                })
            }
            // The request (and its body, unread) is dropped here.
            Err(reason) => {
                let status = reason.shed().to_status();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_total_and_each_member_and_releases_on_drop() {
        let budget = QueueBudget::new(1000, 600);
        let a1 = budget.try_charge(1, 500).expect("first charge fits");
        assert_eq!(
            budget.try_charge(1, 101).err(),
            Some(ShedReason::MemberQueueBytes),
            "member 1 would hold 601 > 600"
        );
        let a2 = budget
            .try_charge(1, 100)
            .expect("member 1 up to exactly 600");
        let b1 = budget.try_charge(2, 400).expect("total up to exactly 1000");
        assert_eq!(
            budget.try_charge(3, 1).err(),
            Some(ShedReason::QueueBytes),
            "total would be 1001"
        );
        assert_eq!(budget.charged(), 1000);
        drop(a1);
        assert_eq!(budget.charged(), 500);
        let c = budget
            .try_charge(3, 500)
            .expect("room again after a release");
        drop((a2, b1, c));
        assert_eq!(budget.charged(), 0);
        assert!(
            budget
                .state
                .lock()
                .expect("not poisoned")
                .per_member
                .is_empty(),
            "released members leave no entries behind"
        );
    }

    #[test]
    fn call_slots_bound_total_and_each_caller() {
        let slots = CallSlots::new(3, 2);
        let a1 = slots.try_acquire(b"a").expect("free");
        let a2 = slots.try_acquire(b"a").expect("a's second");
        assert_eq!(
            slots.try_acquire(b"a").err(),
            Some(ShedReason::CallerConcurrency)
        );
        let b1 = slots.try_acquire(b"b").expect("b still gets a slot");
        assert_eq!(slots.try_acquire(b"c").err(), Some(ShedReason::Concurrency));
        drop(a1);
        let c1 = slots.try_acquire(b"c").expect("a slot was released");
        drop((a2, b1, c1));
        assert_eq!(slots.in_use(), 0);
        assert!(slots.state.lock().expect("not poisoned").1.is_empty());
    }
}
