//! Fencing tokens and the in-transaction check.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

use crate::LeaseError;

/// The fence check: the row must still name this holder at this epoch and be unexpired
/// by the database clock. The `FOR KEY SHARE` row lock conflicts with the `FOR UPDATE`
/// lock every takeover takes first, so a takeover waits until the checking transaction
/// ends; it does not conflict with the active's own renewals (a plain `UPDATE` of a
/// non-key column), so fenced writes never delay or starve them.
const FENCE_SQL: &str = "SELECT epoch FROM leases \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp() \
     FOR KEY SHARE";

/// A fencing token: proof that lease `name` was held by `holder` at `epoch`.
///
/// Obtain it from [`LeaseHandle::fence`](crate::LeaseHandle::fence) while active, and call
/// [`check`](Self::check) as the **first statement** of every state-changing transaction
/// (or use [`fenced_transaction`]). Holding a `Fence` proves nothing by itself: a paused
/// process may wake up with a stale one; only the check inside the transaction counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The lease name.
    pub name: String,
    /// The holder id of the process the lease was granted to.
    pub holder: String,
    /// The epoch of the grant; written rows may be stamped with it.
    pub epoch: i64,
}

impl Fence {
    /// Checks, inside `tx`, that the lease is still held at this epoch, and locks the lease
    /// row (`FOR KEY SHARE`) until `tx` ends.
    ///
    /// Every takeover first locks the row `FOR UPDATE`, which conflicts with this lock, so
    /// a write in `tx` either commits before any takeover or is rejected here: a takeover
    /// that committed first changed the holder and epoch, and one that starts later waits
    /// for `tx` to end. Call it as the first statement of the transaction. The lock does
    /// not block the active's renewals.
    ///
    /// Returns [`LeaseError::Fenced`] when the lease is not held at this epoch (expired,
    /// released or taken over); roll back and stop acting as active. Under
    /// `REPEATABLE READ` or `SERIALIZABLE`, a concurrent takeover may instead surface as a
    /// serialization failure ([`LeaseError::Postgres`]); either way nothing is written.
    pub async fn check(&self, tx: &Transaction<'_>) -> Result<(), LeaseError> {
        let row = tx
            .query_typed_opt(
                FENCE_SQL,
                &[
                    (&self.name, Type::TEXT),
                    (&self.holder, Type::TEXT),
                    (&self.epoch, Type::INT8),
                ],
            )
            .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(LeaseError::Fenced {
                name: self.name.clone(),
                epoch: self.epoch,
            }),
        }
    }
}

/// Runs `body` in a transaction that starts with [`Fence::check`] and commits if `body`
/// returns `Ok`; any error rolls it back.
///
/// `client` is any tokio-postgres client; a pooled `deadpool_postgres::Client` coerces
/// with `&mut client`. `body` is an async closure receiving the transaction. The error
/// type `E` must convert from [`LeaseError`] (which itself converts from
/// `tokio_postgres::Error`, so `E = LeaseError` is the simplest choice).
///
/// ```no_run
/// # async fn example(pool: deadpool_postgres::Pool, handle: domain_lease::LeaseHandle)
/// #     -> Result<(), domain_lease::LeaseError> {
/// use domain_lease::{LeaseError, fenced_transaction};
///
/// let Some(fence) = handle.fence() else {
///     return Ok(()); // passive: do not write
/// };
/// let mut client = pool.get().await?;
/// let id: i32 = fenced_transaction(&mut client, &fence, async |tx| {
///     let row = tx
///         .query_one(
///             "INSERT INTO verdicts (request, epoch) VALUES ($1, $2) RETURNING id",
///             &[&"r1", &fence.epoch],
///         )
///         .await?;
///     Ok::<_, LeaseError>(row.get(0))
/// })
/// .await?;
/// # let _ = id;
/// # Ok(())
/// # }
/// ```
pub async fn fenced_transaction<T, E, F>(
    client: &mut Client,
    fence: &Fence,
    body: F,
) -> Result<T, E>
where
    F: AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    E: From<LeaseError>,
{
    let tx = client.transaction().await.map_err(LeaseError::from)?;
    fence.check(&tx).await?;
    let value = body(&tx).await?;
    tx.commit().await.map_err(LeaseError::from)?;
    Ok(value)
}
