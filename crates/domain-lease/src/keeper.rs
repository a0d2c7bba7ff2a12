//! The lease keeper task and its handle.

use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::config::generate_holder;
use crate::fence::fence_tag;
use crate::metrics as names;
use crate::{Fence, LeaseConfig, LeaseError};

/// Reads the lease row without locking it. `live` is evaluated by the database clock.
const OBSERVE_SQL: &str = "SELECT holder, holder_address, epoch, expires_at > clock_timestamp() \
     FROM leases WHERE name = $1";

/// First statement of an acquisition transaction: locks the row (if any) `FOR UPDATE`,
/// which waits for every fenced transaction holding it `FOR KEY SHARE`. A plain upsert
/// would only take `FOR NO KEY UPDATE`, which does not conflict with those.
const LOCK_SQL: &str = "SELECT epoch FROM leases WHERE name = $1 FOR UPDATE";

/// Ends the transactions of an expired term that still hold the lease row: every session
/// whose `application_name` is the fence tag of `epoch` (set, transaction-locally, by a
/// passed [`Fence::check`]), provided the row is still at `epoch` and expired by the
/// database clock. Such a transaction passed its check before the expiry, so it started
/// before it and so did its backend; requiring both (`xact_start`, `backend_start` before
/// `expires_at`) keeps any later session out, a reused pid included. Terminating it rolls
/// it back (nothing it wrote commits) and releases its `FOR KEY SHARE` lock, which would
/// otherwise hold the takeover's `FOR UPDATE` for as long as the holder is paused.
/// Needs the same database role as the holder (or `pg_signal_backend` and
/// `pg_read_all_stats`); otherwise nothing matches and the takeover waits as before.
const TERMINATE_SQL: &str = "SELECT a.pid, pg_terminate_backend(a.pid) \
     FROM leases l JOIN pg_stat_activity a ON a.application_name = $3 \
     WHERE l.name = $1 AND l.epoch = $2 AND l.expires_at <= clock_timestamp() \
       AND a.datname = current_database() AND a.pid <> pg_backend_pid() \
       AND a.xact_start < l.expires_at AND a.backend_start < l.expires_at";

/// Takes the lease if the row is absent, expired, or already ours; every acquisition
/// starts a new epoch (a fresh row starts at 1). The WHERE clause is evaluated on the
/// latest (locked) row version, so of several contenders exactly one wins. `expires_at`
/// is computed after any lock wait.
const ACQUIRE_SQL: &str = "INSERT INTO leases AS l \
         (name, holder, holder_address, epoch, expires_at, acquired_at) \
     VALUES ($1, $2, $3, 1, clock_timestamp() + $4::int8 * interval '1 microsecond', \
             clock_timestamp()) \
     ON CONFLICT (name) DO UPDATE SET \
         holder = EXCLUDED.holder, \
         holder_address = EXCLUDED.holder_address, \
         epoch = l.epoch + 1, \
         expires_at = clock_timestamp() + $4::int8 * interval '1 microsecond', \
         acquired_at = clock_timestamp() \
     WHERE l.expires_at < clock_timestamp() OR l.holder = EXCLUDED.holder \
     RETURNING epoch";

/// Extends our own, still valid lease at our epoch. Zero rows: the lease is lost.
const RENEW_SQL: &str = "UPDATE leases \
     SET expires_at = clock_timestamp() + $4::int8 * interval '1 microsecond' \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()";

/// Ends our lease now, so a standby can take over at its next poll.
const RELEASE_SQL: &str = "UPDATE leases SET expires_at = clock_timestamp() \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()";

/// Whether this process is the active holder of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This process holds the lease at `epoch` and may write (through fenced
    /// transactions).
    Active {
        /// The epoch of this process's grant, i.e. its fencing token.
        epoch: i64,
    },
    /// This process does not hold the lease (or cannot be sure it does).
    Passive,
}

/// What a [`LeaseKeeper`] knows about its lease, published on a watch channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseStatus {
    /// This process's role.
    pub role: Role,
    /// The current holder: this process while active; while passive, the holder seen at
    /// the last poll if its lease was live then, `None` if the lease is free or unknown
    /// (database unreachable, just demoted).
    pub holder: Option<String>,
    /// The current holder's `holder-address` (e.g. its admin endpoint, to name it in
    /// `UNAVAILABLE` answers); `None` when unknown or not configured.
    pub holder_address: Option<String>,
    /// The lease's epoch as last seen (this process's own while active); 0 before the
    /// first successful poll of a lease that has never been acquired.
    pub epoch: i64,
}

impl LeaseStatus {
    /// The status before anything is known.
    fn unknown() -> Self {
        Self {
            role: Role::Passive,
            holder: None,
            holder_address: None,
            epoch: 0,
        }
    }

    /// Returns true while the role is [`Role::Active`].
    pub fn is_active(&self) -> bool {
        matches!(self.role, Role::Active { .. })
    }
}

/// The current active term: the fence and the local monotonic deadline after which the
/// process must consider the lease lost.
#[derive(Debug)]
struct Term {
    fence: Fence,
    until: Instant,
}

type SharedTerm = Arc<Mutex<Option<Term>>>;

fn lock_term(term: &SharedTerm) -> std::sync::MutexGuard<'_, Option<Term>> {
    // The guarded data is a plain value that is always left consistent.
    term.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A cloneable view of a [`LeaseKeeper`]'s state, for the component's request handlers.
///
/// Unlike the watch channel, which the keeper task updates, `status`, `is_active`,
/// `fence` and `active_until` also apply the keeper's local deadline themselves, so they
/// answer "passive" as soon as the deadline passes even if the keeper task has not run
/// (runtime stalled, process just resumed from a pause, keeper task aborted).
#[derive(Clone, Debug)]
pub struct LeaseHandle {
    status: watch::Receiver<LeaseStatus>,
    term: SharedTerm,
}

impl LeaseHandle {
    /// Returns the current status, demoted to passive if the local deadline has passed.
    pub fn status(&self) -> LeaseStatus {
        let status = self.status.borrow().clone();
        match status.role {
            Role::Active { epoch } if self.fence().is_none_or(|f| f.epoch != epoch) => {
                LeaseStatus {
                    role: Role::Passive,
                    holder: None,
                    holder_address: None,
                    epoch,
                }
            }
            _ => status,
        }
    }

    /// Returns true while this process holds the lease and its local deadline has not
    /// passed.
    pub fn is_active(&self) -> bool {
        self.fence().is_some()
    }

    /// Returns the fencing token of the current active term, or `None` when passive
    /// (including when the local deadline has passed).
    pub fn fence(&self) -> Option<Fence> {
        let term = lock_term(&self.term);
        term.as_ref()
            .filter(|t| Instant::now() < t.until)
            .map(|t| t.fence.clone())
    }

    /// Returns the local monotonic deadline of the current active term: act as active only
    /// before it. `None` when passive. The keeper extends it on every renewal.
    pub fn active_until(&self) -> Option<Instant> {
        let term = lock_term(&self.term);
        term.as_ref()
            .map(|t| t.until)
            .filter(|until| Instant::now() < *until)
    }

    /// Returns a receiver of status changes. It sees the keeper's updates (not the
    /// handle's own deadline check) and reports the channel closed once the keeper's
    /// [`run`](LeaseKeeper::run) has returned or its task was dropped.
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }
}

/// Result of one passive poll.
enum PollOutcome {
    /// We took the lease; `sent` is when the acquiring statement was sent.
    Acquired { epoch: i64, sent: Instant },
    /// We did not get it; the status to publish.
    Passive(LeaseStatus),
}

/// Why an active term ended.
enum TermEnd {
    Lost,
    Shutdown,
}

/// Keeps (or waits for) one leader lease and publishes the role on a watch channel.
///
/// Build it with [`new`](Self::new), take [`handle`](Self::handle)s for request handlers,
/// then spawn [`run`](Self::run). See the crate documentation for the protocol.
#[derive(Debug)]
pub struct LeaseKeeper {
    pool: Pool,
    config: LeaseConfig,
    status: watch::Sender<LeaseStatus>,
    handle: LeaseHandle,
}

impl LeaseKeeper {
    /// Validates `config` and builds a keeper using connections from `pool`.
    ///
    /// If `config.holder` is empty, a holder id is generated
    /// ([`generate_holder`](crate::generate_holder)). The pool should not be the one the
    /// component saturates with its own work (a renewal waiting for a pooled connection
    /// counts against `op-timeout`); a small separate pool of 2 connections is enough.
    pub fn new(pool: Pool, mut config: LeaseConfig) -> Result<Self, LeaseError> {
        config.validate()?;
        if config.holder.trim().is_empty() {
            config.holder = generate_holder(&config.name);
        }
        let (status, receiver) = watch::channel(LeaseStatus::unknown());
        Ok(Self {
            pool,
            config,
            status,
            handle: LeaseHandle {
                status: receiver,
                term: Arc::new(Mutex::new(None)),
            },
        })
    }

    /// Returns a cloneable handle on this keeper's state.
    pub fn handle(&self) -> LeaseHandle {
        self.handle.clone()
    }

    /// Returns a receiver of status changes (see [`LeaseHandle::subscribe`]).
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.subscribe()
    }

    /// Returns the fencing token while active (see [`LeaseHandle::fence`]).
    pub fn fence(&self) -> Option<Fence> {
        self.handle.fence()
    }

    /// Returns the holder id in use (generated if the config left it empty).
    pub fn holder(&self) -> &str {
        &self.config.holder
    }

    /// Returns the validated configuration, with the holder id in use.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Runs the keeper until `shutdown` is cancelled.
    ///
    /// Passive: every `poll-interval`, reads the lease row and, if it is absent, expired
    /// or ours, acquires it (new epoch). Active: renews every `renew-interval`, and turns
    /// passive at once when a renewal fails, times out, finds the lease gone, or the
    /// local deadline passes. On shutdown an active keeper first turns passive, then
    /// releases the lease so a standby takes over without waiting for expiry. Never
    /// returns an error: database trouble only makes it passive, and it keeps trying.
    pub async fn run(self, shutdown: CancellationToken) {
        self.set_active_gauge(false);
        let mut next_poll = Instant::now();
        let mut poll_failing = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(next_poll) => {}
            }
            next_poll = Instant::now() + self.config.poll_interval;
            match self.poll().await {
                Ok(PollOutcome::Acquired { epoch, sent }) => {
                    poll_failing = false;
                    match self.active_term(epoch, sent, &shutdown).await {
                        TermEnd::Shutdown => break,
                        TermEnd::Lost => next_poll = Instant::now() + self.config.poll_interval,
                    }
                }
                Ok(PollOutcome::Passive(status)) => {
                    poll_failing = false;
                    metrics::gauge!(names::EPOCH, "lease" => self.config.name.clone())
                        .set(status.epoch as f64);
                    self.publish(status);
                }
                Err(error) => {
                    if poll_failing {
                        tracing::debug!(lease = %self.config.name, %error, "lease poll failed");
                    } else {
                        tracing::warn!(lease = %self.config.name, %error, "lease poll failed");
                    }
                    poll_failing = true;
                    let epoch = self.status.borrow().epoch;
                    self.publish(LeaseStatus {
                        epoch,
                        ..LeaseStatus::unknown()
                    });
                }
            }
        }
        let epoch = self.status.borrow().epoch;
        self.publish(LeaseStatus {
            epoch,
            ..LeaseStatus::unknown()
        });
        tracing::debug!(lease = %self.config.name, "lease keeper stopped");
    }

    /// Acts as active from an acquisition sent at `sent` until the term ends.
    async fn active_term(
        &self,
        epoch: i64,
        sent: Instant,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let lifetime = self.config.ttl - self.config.safety_margin();
        let mut deadline = sent + lifetime;
        metrics::counter!(names::TAKEOVERS, "lease" => self.config.name.clone()).increment(1);
        metrics::gauge!(names::EPOCH, "lease" => self.config.name.clone()).set(epoch as f64);
        if Instant::now() >= deadline {
            // The acquisition took so long that its lease is nearly over; the next poll
            // re-acquires (the row is ours) with a fresh epoch.
            self.lose(epoch, "acquisition completed after the local deadline");
            return TermEnd::Lost;
        }
        *lock_term(&self.handle.term) = Some(Term {
            fence: Fence {
                name: self.config.name.clone(),
                holder: self.config.holder.clone(),
                epoch,
            },
            until: deadline,
        });
        self.publish(LeaseStatus {
            role: Role::Active { epoch },
            holder: Some(self.config.holder.clone()),
            holder_address: non_empty(&self.config.holder_address),
            epoch,
        });
        self.set_active_gauge(true);
        tracing::info!(
            lease = %self.config.name,
            holder = %self.config.holder,
            epoch,
            "acquired lease: now active"
        );

        let mut next_renew = sent + self.config.renew_interval;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.release(epoch).await;
                    return TermEnd::Shutdown;
                }
                () = sleep_until(deadline) => {
                    self.lose(epoch, "local deadline passed without a successful renewal");
                    return TermEnd::Lost;
                }
                () = sleep_until(next_renew) => {}
            }
            // Check before talking to the database: after a pause both timers may have
            // fired at once.
            if Instant::now() >= deadline {
                self.lose(epoch, "local deadline passed without a successful renewal");
                return TermEnd::Lost;
            }
            let sent = Instant::now();
            // Bounded by the local deadline too: when it passes mid-renewal, the statement
            // is abandoned (and cancelled on the server) at that very instant.
            let renewed = self.renew(epoch, deadline).await;
            if Instant::now() >= deadline {
                self.lose(epoch, "local deadline passed without a successful renewal");
                return TermEnd::Lost;
            }
            match renewed {
                Ok(true) => {
                    metrics::histogram!(names::RENEW_SECONDS, "lease" => self.config.name.clone())
                        .record(sent.elapsed().as_secs_f64());
                    deadline = sent + lifetime;
                    next_renew = sent + self.config.renew_interval;
                    if let Some(term) = lock_term(&self.handle.term).as_mut() {
                        term.until = deadline;
                    }
                }
                Ok(false) => {
                    self.lose(epoch, "renewal found the lease expired or taken over");
                    return TermEnd::Lost;
                }
                Err(error) => {
                    let reason = format!("renewal failed: {error}");
                    self.lose(epoch, &reason);
                    return TermEnd::Lost;
                }
            }
        }
    }

    /// Turns passive without releasing.
    fn lose(&self, epoch: i64, reason: &str) {
        self.demote(epoch);
        metrics::counter!(names::LOSSES, "lease" => self.config.name.clone()).increment(1);
        tracing::warn!(
            lease = %self.config.name,
            holder = %self.config.holder,
            epoch,
            reason,
            "lost lease: now passive"
        );
    }

    /// Clears the term (handles stop handing out fences) and publishes passive.
    fn demote(&self, epoch: i64) {
        *lock_term(&self.handle.term) = None;
        self.publish(LeaseStatus {
            epoch,
            ..LeaseStatus::unknown()
        });
        self.set_active_gauge(false);
    }

    /// Graceful end of an active term: passive first (no new fenced work starts), then
    /// expire the row. Fenced transactions still in flight may commit after the release,
    /// but not after a takeover: the standby's `FOR UPDATE` lock waits for them.
    async fn release(&self, epoch: i64) {
        self.demote(epoch);
        let result = self
            .bounded("releasing the lease", async |client| {
                let stmt = client.prepare_cached(RELEASE_SQL).await?;
                client
                    .execute(&stmt, &[&self.config.name, &self.config.holder, &epoch])
                    .await
            })
            .await;
        match result {
            Ok(1) => tracing::info!(
                lease = %self.config.name,
                holder = %self.config.holder,
                epoch,
                "released lease"
            ),
            Ok(_) => tracing::info!(
                lease = %self.config.name,
                epoch,
                "lease already expired or taken over at release"
            ),
            Err(error) => tracing::warn!(
                lease = %self.config.name,
                epoch,
                %error,
                "failed to release lease; a standby takes over when it expires"
            ),
        }
    }

    /// One passive poll: observe the row, and acquire it if it is free or ours.
    async fn poll(&self) -> Result<PollOutcome, LeaseError> {
        let ttl_micros = self.ttl_micros();
        self.bounded("polling the lease", async |client| {
            let observe = client.prepare_cached(OBSERVE_SQL).await?;
            let row = client.query_opt(&observe, &[&self.config.name]).await?;
            let mut seen_epoch = 0;
            if let Some(row) = row {
                let holder: String = row.try_get(0)?;
                let address: String = row.try_get(1)?;
                seen_epoch = row.try_get(2)?;
                let live: bool = row.try_get(3)?;
                if live && holder != self.config.holder {
                    return Ok(PollOutcome::Passive(LeaseStatus {
                        role: Role::Passive,
                        holder: Some(holder),
                        holder_address: non_empty(&address),
                        epoch: seen_epoch,
                    }));
                }
                if !live {
                    self.end_expired_transactions(client, seen_epoch, &holder)
                        .await?;
                }
            }
            let lock = client.prepare_cached(LOCK_SQL).await?;
            let acquire = client.prepare_cached(ACQUIRE_SQL).await?;
            let tx = client.transaction().await?;
            tx.query_opt(&lock, &[&self.config.name]).await?;
            let sent = Instant::now();
            let row = tx
                .query_opt(
                    &acquire,
                    &[
                        &self.config.name,
                        &self.config.holder,
                        &self.config.holder_address,
                        &ttl_micros,
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(match row {
                Some(row) => PollOutcome::Acquired {
                    epoch: row.try_get(0)?,
                    sent,
                },
                // Another contender won the race; the next poll sees who.
                None => PollOutcome::Passive(LeaseStatus {
                    epoch: seen_epoch,
                    ..LeaseStatus::unknown()
                }),
            })
        })
        .await
    }

    /// Terminates the sessions still inside a fenced transaction of the expired term
    /// `epoch` (see [`TERMINATE_SQL`]), so the acquisition that follows does not wait for
    /// them. A no-op when there are none (the holder crashed or released).
    async fn end_expired_transactions(
        &self,
        client: &mut ClientWrapper,
        epoch: i64,
        holder: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let terminate = client.prepare_cached(TERMINATE_SQL).await?;
        let tag = fence_tag(&self.config.name, epoch);
        let rows = client
            .query(&terminate, &[&self.config.name, &epoch, &tag])
            .await?;
        let pids: Vec<i32> = rows
            .iter()
            .filter(|r| r.try_get::<_, bool>(1).unwrap_or(false))
            .filter_map(|r| r.try_get(0).ok())
            .collect();
        if !pids.is_empty() {
            metrics::counter!(names::TERMINATED, "lease" => self.config.name.clone())
                .increment(pids.len() as u64);
            tracing::warn!(
                lease = %self.config.name,
                expired_holder = holder,
                epoch,
                ?pids,
                "terminated database sessions still inside fenced transactions of an expired \
                 lease (holder paused or cut off mid-transaction); they roll back"
            );
        }
        Ok(())
    }

    /// Extends the lease at `epoch`; `Ok(false)` when it is no longer ours. Gives up at
    /// `not_after` (the local deadline) if that comes before `op-timeout`.
    async fn renew(&self, epoch: i64, not_after: Instant) -> Result<bool, LeaseError> {
        let ttl_micros = self.ttl_micros();
        self.bounded_until(not_after, "renewing the lease", async |client| {
            let stmt = client.prepare_cached(RENEW_SQL).await?;
            let rows = client
                .execute(
                    &stmt,
                    &[&self.config.name, &self.config.holder, &epoch, &ttl_micros],
                )
                .await?;
            Ok(rows == 1)
        })
        .await
    }

    /// Runs `op` on a pooled connection, the whole (getting the connection included)
    /// bounded by `op-timeout`. On timeout the statement is cancelled on the server (best
    /// effort, so a late-running acquisition or renewal does not commit behind our back)
    /// and the connection is discarded rather than returned to the pool.
    async fn bounded<T>(
        &self,
        action: &'static str,
        op: impl AsyncFnOnce(&mut ClientWrapper) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, LeaseError> {
        self.bounded_until(Instant::now() + self.config.op_timeout, action, op)
            .await
    }

    /// [`bounded`](Self::bounded), giving up at `not_after` if that is earlier.
    async fn bounded_until<T>(
        &self,
        not_after: Instant,
        action: &'static str,
        op: impl AsyncFnOnce(&mut ClientWrapper) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, LeaseError> {
        let started = Instant::now();
        let limit = self.config.op_timeout;
        let deadline = (started + limit).min(not_after);
        let timed_out = LeaseError::Timeout {
            action,
            after: deadline.saturating_duration_since(started),
        };
        let mut client = match timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err(timed_out),
        };
        let result = timeout_at(deadline, op(&mut client)).await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.code().is_none() {
                    // Not an SQL error (I/O, protocol): do not reuse the connection.
                    drop(Object::take(client));
                }
                Err(error.into())
            }
            Err(_) => {
                let cancel = client.cancel_token();
                drop(Object::take(client));
                tokio::spawn(async move {
                    // Not NoTls: a token from a TLS session (sslmode=require or stricter)
                    // cannot be sent in plaintext.
                    let cancel_tls = domain_storage::cancel_connector();
                    let _ = tokio::time::timeout(limit, cancel.cancel_query(cancel_tls)).await;
                });
                Err(timed_out)
            }
        }
    }

    fn ttl_micros(&self) -> i64 {
        i64::try_from(self.config.ttl.as_micros()).unwrap_or(i64::MAX)
    }

    fn publish(&self, status: LeaseStatus) {
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    fn set_active_gauge(&self, active: bool) {
        metrics::gauge!(names::ACTIVE, "lease" => self.config.name.clone()).set(if active {
            1.0
        } else {
            0.0
        });
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
