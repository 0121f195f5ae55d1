//! A smooth, async token bucket shared by all tasks of a stage, for requests per minute and
//! tokens per minute. A caller takes what it needs at once (the balance may go negative) and
//! sleeps until the debt is repaid, so waiters are served in arrival order at exactly the
//! configured rate with no fixed batches, and nobody holds a lock while sleeping. It runs on
//! tokio's clock, so tests can pause time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket refilled continuously at `per_minute / 60` per second, holding at most
/// `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter of `per_minute` units per minute that lets `burst` units through at once
    /// (starting full). `per_minute` must be positive.
    pub fn new(per_minute: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate_per_sec: per_minute.max(f64::MIN_POSITIVE) / 60.0,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes `amount` units now and returns how long the caller must wait before using them.
    pub fn reserve(&self, amount: f64) -> Duration {
        let now = Instant::now();
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate_per_sec).min(self.burst);
        s.last = now;
        s.tokens -= amount;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / self.rate_per_sec)
        }
    }

    /// Takes `amount` units, waiting until the bucket allows them.
    pub async fn acquire(&self, amount: f64) {
        let wait = self.reserve(amount);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Gives back `amount` units taken but not used (a request that was never billed, or
    /// one that used fewer tokens than reserved). A negative amount takes more.
    pub fn refund(&self, amount: f64) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        s.tokens = (s.tokens + amount).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_at_the_rate_after_the_burst() {
        let l = RateLimiter::new(60.0, 2.0);
        assert_eq!(l.reserve(1.0), Duration::ZERO);
        assert_eq!(l.reserve(1.0), Duration::ZERO);
        let w = l.reserve(1.0);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
        let w = l.reserve(1.0);
        assert!((w.as_secs_f64() - 2.0).abs() < 1e-6, "{w:?}");
        tokio::time::advance(Duration::from_secs(10)).await;
        // Refilled but capped at the burst.
        assert_eq!(l.reserve(2.0), Duration::ZERO);
        assert!(l.reserve(1.0) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn refunds_return_capacity() {
        let l = RateLimiter::new(600.0, 100.0);
        l.acquire(100.0).await;
        assert!(l.reserve(50.0) > Duration::ZERO);
        l.refund(50.0);
        assert_eq!(l.reserve(0.0), Duration::ZERO);
    }
}
