//! Owns leader leases with fencing for active-passive components (mediator, domain
//! manager): exactly one replica is active at a time, a replacement takes over within
//! about `ttl + poll-interval` (2.25 s with the defaults) when the active dies, and a
//! paused or partitioned former active cannot get a single write accepted once its lease
//! has expired or been taken over.
//!
//! # The lease table
//!
//! Each component keeps its lease in its own PostgreSQL database, in this table (the
//! canonical text is `migrations/lease_template.sql`, also available as
//! [`LEASE_TABLE_DDL`]; components copy it into one of their own migrations):
//!
//! ```sql
//! CREATE TABLE leases (
//!     name text PRIMARY KEY,                  -- lease name, e.g. 'mediator'
//!     holder text NOT NULL,                   -- holder id of the holding process
//!     holder_address text NOT NULL DEFAULT '',-- what passive replicas tell clients
//!     epoch bigint NOT NULL,                  -- fencing token, +1 on every acquisition
//!     expires_at timestamptz NOT NULL,        -- database-clock expiry
//!     acquired_at timestamptz NOT NULL        -- database-clock time of the acquisition
//! );
//! ```
//!
//! # Protocol
//!
//! All lease times are taken and compared by the **database clock** (`clock_timestamp()`);
//! hosts never compare their own clocks with them.
//!
//! - **Acquire** (passive replicas, every `poll-interval`): read the row without locking;
//!   if it is absent, expired (`expires_at < clock_timestamp()`) or already ours, run a
//!   transaction that locks the row `SELECT ... FOR UPDATE` (waiting for fenced
//!   transactions in flight, see below) and then a conditional upsert that takes the row
//!   only under that same condition, evaluated on the locked latest version, so one
//!   contender wins. Before locking an expired row it ends the expired holder's fenced
//!   transactions still open (see *A holder paused inside a fenced transaction* below).
//!   Every acquisition sets `epoch = epoch + 1` (a new row starts at 1),
//!   including a re-acquisition by the same holder after it lost the lease.
//! - **Renew** (the active, every `renew-interval`):
//!   `UPDATE leases SET expires_at = clock_timestamp() + ttl WHERE name AND holder AND epoch
//!   AND expires_at > clock_timestamp()`. Zero rows means the lease is lost.
//! - **Local deadline**: the active records the monotonic instant at which it *sent* its
//!   last successful acquire or renew statement. The database set `expires_at` after that,
//!   so the lease is certainly valid until `sent + ttl`; the keeper acts as active only
//!   until `sent + ttl - ttl/10` (10% safety margin for clock-rate differences). When that
//!   deadline passes without a successful renewal (database slow or unreachable, process
//!   paused and resumed), it turns passive at once, without waiting for the database.
//!   [`LeaseHandle::fence`] applies the deadline itself, so even a stalled keeper task
//!   cannot make a handle hand out a fence too late. Any renewal failure (error, timeout,
//!   zero rows) also turns it passive. Every database operation is bounded by
//!   `op-timeout`.
//! - **Release** (graceful shutdown of the active): turn passive, then set
//!   `expires_at = clock_timestamp()`, so a standby takes over at its next poll instead of
//!   waiting for the expiry. The takeover still increments the epoch.
//!
//! # Fencing
//!
//! A process can be paused (GC, `SIGSTOP`, VM migration) right after checking that it is
//! active, and then write. So the check must happen inside the writing transaction, with a
//! lock that conflicts with the takeover: every state-changing transaction of the active
//! starts with [`Fence::check`], which runs
//!
//! ```sql
//! SELECT epoch FROM leases
//!  WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()
//!    FOR KEY SHARE
//! ```
//!
//! and fails with [`LeaseError::Fenced`] when no row matches. Every takeover locks the
//! row `FOR UPDATE` before changing it, which waits for all `FOR KEY SHARE` holders, so
//! every write either commits before the takeover or is rejected (a fence check that comes
//! after the takeover's lock waits for it and then finds the new holder and epoch). Rows
//! may additionally be stamped with [`Fence::epoch`] so downstream readers can reject lower
//! epochs. [`fenced_transaction`] wraps the pattern:
//!
//! ```no_run
//! # async fn example(pool: deadpool_postgres::Pool, handle: domain_lease::LeaseHandle)
//! #     -> Result<(), domain_lease::LeaseError> {
//! let Some(fence) = handle.fence() else { return Ok(()) }; // passive: do not write
//! let mut client = pool.get().await?;
//! domain_lease::fenced_transaction(&mut client, &fence, async |tx| {
//!     tx.execute("UPDATE pending SET done = true WHERE id = $1", &[&7_i64]).await?;
//!     Ok::<_, domain_lease::LeaseError>(())
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Without the helper: `let tx = client.transaction().await?; fence.check(&tx).await?;`
//! then the writes, then `tx.commit()`.
//!
//! **Why `FOR KEY SHARE` and not `FOR SHARE`.** `FOR SHARE` would also conflict with the
//! active's renewal (an `UPDATE` of the row), and PostgreSQL lets new `FOR SHARE` lockers
//! overtake a waiting `UPDATE`: with 8 concurrent writers doing fenced transactions
//! back to back, renewals starved past `op-timeout` and the active lost the lease twice in
//! 8 s (16 writers: five times; measured on the development machine). `FOR KEY SHARE`
//! does not conflict with the renewal (a non-key update) but does with the takeover's
//! explicit `FOR UPDATE`, which is all fencing needs. Takeovers cannot be starved the same
//! way: once the lease has expired, new fence checks match no row and take no lock.
//!
//! **A holder paused inside a fenced transaction.** A takeover waits for every fenced
//! transaction that passed its check. If the holder is paused (`SIGSTOP`, VM pause) or
//! cut off while one is open, PostgreSQL keeps that transaction and its lock for as long
//! as the pause lasts (a stopped process's kernel still answers TCP keepalives). So a
//! passing check also tags its session, for that transaction only, with the
//! `application_name` `lease-fence:<epoch>:<name>`, and a contender that finds the lease
//! expired by the database clock first terminates (`pg_terminate_backend`) every session
//! of this database so tagged with the expired epoch whose transaction and backend
//! started before the expiry, then locks the row. Those transactions roll back: the
//! paused holder's write is rejected, as if its check had come after the takeover. This
//! needs contenders and holder to connect as the same database role (or the contender to
//! have `pg_signal_backend` and `pg_read_all_stats`); otherwise the takeover waits for
//! the transaction to end, as it did before. A fenced transaction that is merely slow is
//! terminated the same way once the lease expired, so keep them well shorter than `ttl`.
//!
//! # Use
//!
//! ```no_run
//! # async fn example(pool: deadpool_postgres::Pool) -> Result<(), domain_lease::LeaseError> {
//! use domain_lease::{LeaseConfig, LeaseKeeper};
//! use tokio_util::sync::CancellationToken;
//!
//! let config = LeaseConfig {
//!     holder_address: "https://mediator-1.example:4402".into(),
//!     ..LeaseConfig::new("mediator")
//! };
//! let keeper = LeaseKeeper::new(pool, config)?;
//! let handle = keeper.handle(); // give clones to request handlers
//! let mut status = keeper.subscribe(); // drive health / start-stop of the active work
//! let shutdown = CancellationToken::new();
//! let task = tokio::spawn(keeper.run(shutdown.clone()));
//! while status.changed().await.is_ok() {
//!     let now = status.borrow_and_update().clone();
//!     // Active: SERVING, start processing (load state, then fenced writes).
//!     // Passive: NOT_SERVING, stop processing, answer UNAVAILABLE naming
//!     // now.holder_address.
//! #   let _ = now;
//! }
//! shutdown.cancel(); // on SIGTERM: releases the lease
//! let _ = task.await;
//! # let _ = handle;
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! All carry the label `lease` (the lease name); descriptions are registered by
//! [`describe_metrics`].
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `lease_active` | gauge | 1 while this process is active, else 0 |
//! | `lease_renew_seconds` | histogram | round-trip time of successful renewals |
//! | `lease_takeovers_total` | counter | acquisitions by this process (each a new epoch) |
//! | `lease_losses_total` | counter | times this process stopped being active without releasing (deadline passed, renewal failed or timed out, lease taken) |
//! | `lease_epoch` | gauge | the lease's epoch as last seen by this process |
//! | `lease_expired_transactions_terminated_total` | counter | sessions this process terminated, when taking over, because they were still inside a fenced transaction of the expired lease |
//!
//! # Limits
//!
//! - The local deadline uses the monotonic clock (`CLOCK_MONOTONIC` on Linux), which
//!   does not advance while the whole machine is suspended. Fencing still rejects every
//!   write after a takeover; only the self-demotion is late in that case.
//! - The lease row lives in one database; if that database fails over to a replica that
//!   lost recent commits, the lease may be granted twice. Use synchronous replication.

mod config;
mod error;
mod fence;
mod keeper;
pub mod metrics;
mod running;

pub use config::{LeaseConfig, generate_holder};
pub use error::LeaseError;
pub use fence::{Fence, fenced_transaction};
pub use keeper::{LeaseHandle, LeaseKeeper, LeaseStatus, Role};
pub use metrics::describe_metrics;
pub use running::{RunningLease, StartError};

/// The canonical `CREATE TABLE leases` statement (`migrations/lease_template.sql`).
/// Components copy it into their own migrations; tests apply it to fresh databases.
pub const LEASE_TABLE_DDL: &str = include_str!("../../../migrations/lease_template.sql");
