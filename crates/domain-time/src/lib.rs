//! Sequencer time, typed: [`Timestamp`] is microseconds since the Unix epoch (UTC), the unit
//! of every timestamp on the wire and in the databases (`*_micros` fields, `bigint` columns).
//! [`now_micros`] is the one place the wall clock is read for it.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in sequencer time: microseconds since the Unix epoch.
///
/// Ordered like the integers it wraps; arithmetic with [`Duration`] saturates at the ends
/// of the range instead of wrapping (a forged far-future value from a peer must not turn
/// into a negative one).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The largest representable time.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// The timestamp `micros` microseconds after the epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The wall clock now.
    pub fn now() -> Self {
        Self(now_micros())
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_micros(d)))
    }

    /// `self - d`, saturating at the smallest value.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_micros(d)))
    }

    /// How long after `earlier` this is; `None` when it is not after it.
    pub fn duration_since(self, earlier: Timestamp) -> Option<Duration> {
        let micros = self.0.checked_sub(earlier.0)?;
        u64::try_from(micros).ok().map(Duration::from_micros)
    }
}

/// Whole microseconds of `d`, saturating at `i64::MAX`.
fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        self.saturating_sub(d)
    }
}

impl From<Timestamp> for i64 {
    fn from(t: Timestamp) -> i64 {
        t.0
    }
}

impl From<i64> for Timestamp {
    fn from(micros: i64) -> Timestamp {
        Timestamp(micros)
    }
}

impl fmt::Display for Timestamp {
    /// Microseconds, as in logs and error messages (`…at 1796621801823658`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The wall clock in microseconds since the Unix epoch (0 before the epoch, `i64::MAX` after
/// the year 294,000).
#[expect(
    clippy::disallowed_methods,
    reason = "the one wall-clock reading of sequencer time"
)]
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(feature = "postgres")]
mod sql {
    use bytes::BytesMut;
    use postgres_types::{FromSql, IsNull, ToSql, Type, accepts, to_sql_checked};

    use super::Timestamp;

    impl ToSql for Timestamp {
        fn to_sql(
            &self,
            ty: &Type,
            out: &mut BytesMut,
        ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
            self.0.to_sql(ty, out)
        }
        accepts!(INT8);
        to_sql_checked!();
    }

    impl<'a> FromSql<'a> for Timestamp {
        fn from_sql(
            ty: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            i64::from_sql(ty, raw).map(Timestamp)
        }
        accepts!(INT8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_orders() {
        let t = Timestamp::from_micros(1_000);
        assert_eq!((t + Duration::from_millis(2)).as_micros(), 3_000);
        assert_eq!((t - Duration::from_micros(1_500)).as_micros(), -500);
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(
            Timestamp::from_micros(i64::MIN) - Duration::from_secs(1),
            Timestamp::from_micros(i64::MIN)
        );
        assert!(t < t + Duration::from_micros(1));
        assert_eq!(
            (t + Duration::from_millis(5)).duration_since(t),
            Some(Duration::from_millis(5))
        );
        assert_eq!(t.duration_since(t + Duration::from_micros(1)), None);
    }

    #[test]
    fn now_is_after_2026_and_serde_is_a_bare_number() {
        assert!(Timestamp::now() > Timestamp::from_micros(1_767_225_600_000_000));
        let t = Timestamp::from_micros(42);
        assert_eq!(serde_json::to_string(&t).expect("serialize"), "42");
        assert_eq!(serde_json::from_str::<Timestamp>("42").expect("parse"), t);
        assert_eq!(t.to_string(), "42");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn sql_round_trip_as_bigint() {
        use postgres_types::{FromSql as _, ToSql as _, Type};
        let t = Timestamp::from_micros(1_796_621_801_823_658);
        let mut buf = bytes::BytesMut::new();
        t.to_sql(&Type::INT8, &mut buf).expect("encode");
        assert_eq!(Timestamp::from_sql(&Type::INT8, &buf).expect("decode"), t);
        assert!(!<Timestamp as postgres_types::ToSql>::accepts(&Type::TEXT));
    }
}
