//! Exponential backoff with full jitter (a uniformly random wait between zero and
//! `base * 2^attempt`, capped), which spreads retries of many clients apart; a wait the
//! provider asked for (Retry-After) is a floor.

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first retry's wait.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Longest Retry-After honoured (a provider asking for an hour gets this instead).
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (from 1), given the server's Retry-After.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let exp = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let ceiling = (self.base.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let jittered = Duration::from_secs_f64(rng.random_range(0.0..=ceiling));
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn full_jitter_within_the_growing_ceiling() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for attempt in 1..12 {
            let ceiling = (0.5 * 2f64.powi(attempt as i32 - 1)).min(30.0);
            for _ in 0..50 {
                let d = b.delay(attempt, None, &mut rng).as_secs_f64();
                assert!((0.0..=ceiling + 1e-9).contains(&d), "{attempt}: {d}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_capped() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let d = b.delay(1, Some(Duration::from_secs(7)), &mut rng);
        assert!(d >= Duration::from_secs(7));
        let d = b.delay(1, Some(Duration::from_secs(100_000)), &mut rng);
        assert_eq!(d, Duration::from_secs(300));
    }
}
