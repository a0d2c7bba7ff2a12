//! Partitioned timestamp generation: instance `k` of `n` only issues timestamps
//! congruent to `k` modulo `n`, so instances never collide without coordinating.

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
    pub fn new(index: u16, modulus: u16, floor: i64) -> Self {
        debug_assert!(index < modulus, "instance index must be below the modulus");
        Self {
            index: i64::from(index),
            modulus: i64::from(modulus).max(1),
            last: floor,
        }
    }

    /// Returns the next timestamp: at least `now_micros`, above every value
    /// issued before, and congruent to the instance index.
    pub fn next(&mut self, now_micros: i64) -> i64 {
        self.next_above(now_micros, self.last)
    }

    /// Like [`Self::next`], but also strictly above `at_least_above` (used to
    /// overtake another instance's watermark when readers wait on ours).
    pub fn next_above(&mut self, now_micros: i64, at_least_above: i64) -> i64 {
        let lower = now_micros
            .max(self.last.saturating_add(1))
            .max(at_least_above.saturating_add(1));
        // Round up to the next value congruent to `index` modulo `modulus`.
        let rem = lower.rem_euclid(self.modulus);
        let delta = (self.index - rem).rem_euclid(self.modulus);
        let ts = lower + delta;
        self.last = ts;
        ts
    }

    /// Returns the last issued timestamp (or the floor).
    pub fn last(&self) -> i64 {
        self.last
    }
}

/// Returns the wall clock in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_residue_class_and_increases() {
        let mut g = PartitionedTimestampGenerator::new(3, 32, 1_000);
        let mut prev = 1_000;
        for now in [0, 5, 1_000, 1_000, 2_000, 1_500, 10_000] {
            let ts = g.next(now);
            assert_eq!(ts.rem_euclid(32), 3);
            assert!(ts > prev, "{ts} must exceed {prev}");
            assert!(ts >= now);
            prev = ts;
        }
    }

    #[test]
    fn instances_never_collide() {
        let mut a = PartitionedTimestampGenerator::new(0, 4, 0);
        let mut b = PartitionedTimestampGenerator::new(1, 4, 0);
        let mut seen = std::collections::HashSet::new();
        for now in 0..1000 {
            assert!(seen.insert(a.next(now)));
            assert!(seen.insert(b.next(now)));
        }
    }

    #[test]
    fn next_above_overtakes() {
        let mut g = PartitionedTimestampGenerator::new(1, 2, 0);
        let ts = g.next_above(10, 100);
        assert!(ts > 100);
        assert_eq!(ts % 2, 1);
        assert!(g.next(0) > ts);
    }
}
