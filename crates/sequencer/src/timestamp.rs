//! Partitioned timestamp generation: instance `k` of `n` only issues timestamps
//! congruent to `k` modulo `n`, so instances never collide without coordinating.

use domain_time::Timestamp;

/// Issues strictly increasing microsecond timestamps in one residue class.
#[derive(Debug, Clone)]
pub struct PartitionedTimestampGenerator {
    index: i64,
    modulus: i64,
    last: i64,
}

impl PartitionedTimestampGenerator {
    /// Creates a generator for instance `index` of `modulus` that never issues
    /// a value at or below `floor` (the instance's watermark when it came online).
    pub fn new(index: u16, modulus: u16, floor: Timestamp) -> Self {
        debug_assert!(index < modulus, "instance index must be below the modulus");
        Self {
            index: i64::from(index),
            modulus: i64::from(modulus).max(1),
            last: floor.as_micros(),
        }
    }

    /// Returns the next timestamp: at least `clock`, above every value
    /// issued before, and congruent to the instance index.
    pub fn next(&mut self, clock: Timestamp) -> Timestamp {
        self.next_above(clock, self.last())
    }

    /// Like [`Self::next`], but also strictly above `at_least_above` (used to
    /// overtake another instance's watermark when readers wait on ours).
    ///
    /// Saturates instead of wrapping: a bound near `i64::MAX` (a forged or corrupt
    /// watermark; callers filter those, see `lib.rs` `plausible_peer_watermark`) yields
    /// the largest value of the residue class and never a negative timestamp.
    pub fn next_above(&mut self, clock: Timestamp, at_least_above: Timestamp) -> Timestamp {
        let lower = clock
            .as_micros()
            .max(self.last.saturating_add(1))
            .max(at_least_above.as_micros().saturating_add(1));
        // Round up to the next value congruent to `index` modulo `modulus`.
        let rem = lower.rem_euclid(self.modulus);
        let delta = (self.index - rem).rem_euclid(self.modulus);
        let ts = lower
            .checked_add(delta)
            .unwrap_or_else(|| lower - (self.modulus - delta));
        self.last = self.last.max(ts);
        Timestamp::from_micros(ts)
    }

    /// Returns the last issued timestamp (or the floor).
    pub fn last(&self) -> Timestamp {
        Timestamp::from_micros(self.last)
    }
}

/// Test-only offset of this instance's clock in microseconds (fault injection:
/// `SEQUENCER_FAULT_CLOCK_OFFSET_MS`); always 0 in a build without the feature.
static CLOCK_OFFSET_MICROS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Shifts this process's sequencer clock (fault injection only).
#[cfg(feature = "fault-injection")]
pub fn set_clock_offset(offset: std::time::Duration, ahead: bool) {
    let micros = i64::try_from(offset.as_micros()).unwrap_or(i64::MAX / 4);
    let signed = if ahead { micros } else { -micros };
    CLOCK_OFFSET_MICROS.store(signed, std::sync::atomic::Ordering::Relaxed);
}

/// This instance's sequencer clock: the wall clock ([`Timestamp::now`]) plus the
/// fault-injection offset (always 0 without the feature).
pub fn clock() -> Timestamp {
    Timestamp::from_micros(
        domain_time::now_micros()
            .saturating_add(CLOCK_OFFSET_MICROS.load(std::sync::atomic::Ordering::Relaxed)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn stays_in_residue_class_and_increases() {
        let mut g = PartitionedTimestampGenerator::new(3, 32, ts(1_000));
        let mut prev = ts(1_000);
        for now in [0, 5, 1_000, 1_000, 2_000, 1_500, 10_000].map(ts) {
            let t = g.next(now);
            assert_eq!(t.as_micros().rem_euclid(32), 3);
            assert!(t > prev, "{t} must exceed {prev}");
            assert!(t >= now);
            prev = t;
        }
    }

    #[test]
    fn a_bound_near_the_end_of_time_never_wraps() {
        let mut g = PartitionedTimestampGenerator::new(5, 32, ts(1_000));
        let t = g.next_above(ts(2_000), ts(i64::MAX - 3)).as_micros();
        assert!(t > 0, "{t} wrapped negative");
        assert_eq!(t.rem_euclid(32), 5);
        let again = g.next_above(ts(2_000), Timestamp::MAX).as_micros();
        assert!(again > 0 && again.rem_euclid(32) == 5);
    }

    #[test]
    fn instances_never_collide() {
        let mut a = PartitionedTimestampGenerator::new(0, 4, Timestamp::EPOCH);
        let mut b = PartitionedTimestampGenerator::new(1, 4, Timestamp::EPOCH);
        let mut seen = std::collections::HashSet::new();
        for now in (0..1000).map(ts) {
            assert!(seen.insert(a.next(now)));
            assert!(seen.insert(b.next(now)));
        }
    }

    #[test]
    fn next_above_overtakes() {
        let mut g = PartitionedTimestampGenerator::new(1, 2, Timestamp::EPOCH);
        let t = g.next_above(ts(10), ts(100));
        assert!(t > ts(100));
        assert_eq!(t.as_micros() % 2, 1);
        assert!(g.next(Timestamp::EPOCH) > t);
    }
}
