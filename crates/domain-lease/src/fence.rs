//! Fencing tokens and the in-transaction check.

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

use crate::LeaseError;

/// The fence check: the row must still name this holder at this epoch and be unexpired
/// by the database clock. The `FOR KEY SHARE` row lock conflicts with the `FOR UPDATE`
/// lock every takeover takes first, so a takeover waits until the checking transaction
/// ends; it does not conflict with the active's own renewals (a plain `UPDATE` of a
/// non-key column), so fenced writes never delay or starve them.
///
/// A check that passes also tags the session, for the rest of the transaction only
/// (`set_config(.., true)` is `SET LOCAL`), with [`fence_tag`] as its `application_name`,
/// which every session can see in `pg_stat_activity`: that is how a contender finds the
/// transactions of an expired holder that still hold the row lock (a holder paused
/// inside one would otherwise block the takeover for as long as the pause lasts) and
/// ends them. The CTE makes the tag apply only to a row that was actually locked.
const FENCE_SQL: &str = "WITH held AS (SELECT epoch FROM leases \
     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp() \
     FOR KEY SHARE) \
     SELECT epoch, set_config('application_name', $4, true) FROM held";

/// Longest `application_name` PostgreSQL keeps (`NAMEDATALEN - 1` bytes); longer values
/// are truncated, so a tag must fit.
const MAX_TAG_BYTES: usize = 63;

/// The `application_name` a fenced transaction of lease `name` at `epoch` carries while it
/// is open: `lease-fence:<epoch>:<name>`, or `lease-fence:<epoch>:#<hash of name>` when
/// the name is not printable ASCII or the tag would not fit in 63 bytes (PostgreSQL
/// rewrites other characters and truncates longer values, and the contender must match
/// the tag exactly). The hash is a fixed FNV-1a, the same in every build.
pub(crate) fn fence_tag(name: &str, epoch: i64) -> String {
    let plain = format!("lease-fence:{epoch}:{name}");
    if plain.len() <= MAX_TAG_BYTES && name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return plain;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lease-fence:{epoch}:#{hash:016x}")
}

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
    /// While `tx` is open, the session's `application_name` reads
    /// `lease-fence:<epoch>:<name>`: once the lease has expired by the database clock, a
    /// standby taking over terminates the sessions so tagged (a paused holder must not
    /// hold up the failover), so `tx` then fails instead of committing. Keep fenced
    /// transactions well shorter than the lease `ttl`.
    ///
    /// Returns [`LeaseError::Fenced`] when the lease is not held at this epoch (expired,
    /// released or taken over); roll back and stop acting as active. Under
    /// `REPEATABLE READ` or `SERIALIZABLE`, a concurrent takeover may instead surface as a
    /// serialization failure ([`LeaseError::Postgres`]); either way nothing is written.
    pub async fn check(&self, tx: &Transaction<'_>) -> Result<(), LeaseError> {
        let tag = fence_tag(&self.name, self.epoch);
        let row = tx
            .query_typed_opt(
                FENCE_SQL,
                &[
                    (&self.name, Type::TEXT),
                    (&self.holder, Type::TEXT),
                    (&self.epoch, Type::INT8),
                    (&tag, Type::TEXT),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_tags_fit_and_stay_distinct() {
        assert_eq!(fence_tag("mediator", 7), "lease-fence:7:mediator");
        assert_eq!(
            fence_tag("domain-manager", i64::MAX),
            "lease-fence:9223372036854775807:domain-manager"
        );
        for name in ["médiateur", "a\nb", &"x".repeat(60)] {
            let tag = fence_tag(name, i64::MAX);
            assert!(tag.len() <= MAX_TAG_BYTES, "{tag}");
            assert!(tag.bytes().all(|b| (0x20..0x7f).contains(&b)), "{tag}");
            assert!(
                tag.starts_with("lease-fence:9223372036854775807:#"),
                "{tag}"
            );
        }
        assert_ne!(fence_tag(&"x".repeat(60), 1), fence_tag(&"y".repeat(60), 1));
        assert_ne!(fence_tag("mediator", 1), fence_tag("mediator", 2));
    }
}
