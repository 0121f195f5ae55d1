//! Flow control shared by every request of a stage: a concurrency limit, requests-per-minute
//! and tokens-per-minute token buckets, retries with backoff and jitter that honour
//! Retry-After, a per-request timeout, and the hard token budget. [`LlmClient`] wraps one
//! [`ChatProvider`] with all of it.

mod budget;
mod client;
mod rate;
mod retry;

pub use budget::{Reservation, TokenBudget};
pub use client::{ClientConfig, ClientStats, DEFAULT_MAX_TOKENS, LlmClient};
pub use rate::RateLimiter;
pub use retry::Backoff;
