//! Exponential backoff with full jitter: the delay before retry `n` is drawn uniformly from
//! `0..=min(max, base × 2^(n-1))`. Full jitter spreads retries of jobs that failed together
//! (a dependency outage) instead of bringing them back in a herd.

use rand::Rng;

/// Backoff policy of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay, ms.
    pub base_ms: u64,
    /// No delay ever exceeds this, ms.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            max_ms: 3_600_000,
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(62);
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms)
    }

    /// A delay drawn uniformly from `0..=ceiling_ms(attempt)`.
    pub fn delay_ms(&self, attempt: u32, rng: &mut impl Rng) -> u64 {
        rng.gen_range(0..=self.ceiling_ms(attempt))
    }
}

/// The pause after `failures` consecutive failures (0 for the first) of a retry loop:
/// uniformly random in `0..=min(cap, base × 2^failures)`, to the millisecond.
pub fn retry_pause(
    failures: u32,
    base: std::time::Duration,
    cap: std::time::Duration,
) -> std::time::Duration {
    let policy = Backoff {
        base_ms: base.as_millis() as u64,
        max_ms: cap.as_millis() as u64,
    };
    std::time::Duration::from_millis(
        policy.delay_ms(failures.saturating_add(1), &mut rand::thread_rng()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn retry_pause_stays_under_the_capped_ceiling() {
        use std::time::Duration;
        let base = Duration::from_millis(10);
        let cap = Duration::from_millis(500);
        for failures in 0..40 {
            let ceiling = (base * 2u32.pow(failures.min(20))).min(cap);
            for _ in 0..50 {
                assert!(retry_pause(failures, base, cap) <= ceiling);
            }
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 5_000,
        };
        let ceilings: Vec<u64> = (1..=8).map(|a| b.ceiling_ms(a)).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.ceiling_ms(0), 100);
        assert_eq!(
            b.ceiling_ms(u32::MAX),
            5_000,
            "no overflow at huge attempt counts"
        );
    }

    #[test]
    fn jitter_stays_inside_its_bounds_and_spreads() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 10_000,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=20 {
            let ceiling = b.ceiling_ms(attempt);
            let draws: Vec<u64> = (0..2000).map(|_| b.delay_ms(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling));
            // Full jitter: draws cover the whole range, not a band near the ceiling.
            let low = draws.iter().filter(|d| **d < ceiling / 4).count();
            let high = draws.iter().filter(|d| **d > ceiling * 3 / 4).count();
            assert!(
                low > 300 && high > 300,
                "attempt {attempt}: low {low} high {high}"
            );
        }
    }
}
