//! The budget of upstream calls: a token bucket (as GCRA, one atomic) on
//! the verifier's clock, so that a flood of random well-formed keys — every
//! one a cache miss — cannot turn into one call to the key service each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auth_core::clock::Clock;

/// `per_second` calls a second on average, at most `per_second` at once.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Nanoseconds one call uses up.
    interval: u64,
    /// How far ahead of now the bucket may be drawn: the burst.
    tolerance: u64,
    /// When the bucket is full again, in nanoseconds of the clock (GCRA's
    /// "theoretical arrival time").
    full_at: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl Budget {
    /// The budget, or `None` for `0` (no budget).
    pub(crate) fn new(per_second: u32, clock: Arc<dyn Clock>) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let interval = (1_000_000_000 / u64::from(per_second)).max(1);
        Some(Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(per_second)),
            full_at: AtomicU64::new(0),
            clock,
        })
    }

    /// Takes one call from the budget; `false` when it is spent.
    pub(crate) fn try_take(&self) -> bool {
        let now = nanos(self.clock.now());
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => full_at = current,
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use auth_core::clock::ManualClock;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let clock = Arc::new(ManualClock::new());
        clock.advance(Duration::from_secs(100));
        let b = Budget::new(10, clock.clone()).unwrap();
        assert_eq!((0..50).filter(|_| b.try_take()).count(), 10, "the burst");
        clock.advance(Duration::from_millis(250));
        assert_eq!((0..50).filter(|_| b.try_take()).count(), 2, "10/s");
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            (0..50).filter(|_| b.try_take()).count(),
            10,
            "never more than the burst"
        );
    }

    #[test]
    fn zero_is_no_budget() {
        assert!(Budget::new(0, Arc::new(ManualClock::new())).is_none());
    }
}
