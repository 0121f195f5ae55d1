//! [`LlmClient`]: one provider behind the stage's flow control. A call reserves its worst case
//! against the token budget, waits for a concurrency permit and for the request and token
//! buckets, sends with a timeout, and on a retryable failure releases its permit, sleeps
//! (backoff with full jitter, at least Retry-After) and tries again, up to `max_retries`.
//! Tokens a failed attempt was billed (a 2xx reply without choices still reports usage) are
//! counted; an attempt that timed out is presumed to have spent its worst case.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llamaduo::api::{ProviderSpec, TokenUsage};
use rand::SeedableRng;
use tokio::sync::Semaphore;

use super::{Backoff, RateLimiter, TokenBudget};
use crate::error::LlmError;
use crate::provider::{ChatProvider, ChatRequest, ChatResponse};

/// Output tokens asked for when the spec leaves `generation.maxTokens` unset.
pub const DEFAULT_MAX_TOKENS: u32 = 2048;

/// Flow-control settings of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests per minute; `None`: unlimited.
    pub requests_per_minute: Option<u32>,
    /// Input plus output tokens per minute; `None`: unlimited.
    pub tokens_per_minute: Option<u64>,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Retries per request after the first attempt.
    pub max_retries: u32,
    /// Backoff between retries.
    pub backoff: Backoff,
}

impl ClientConfig {
    /// The settings a provider spec asks for.
    pub fn from_spec(spec: &ProviderSpec) -> Self {
        Self {
            concurrency: spec.limits.concurrency.max(1) as usize,
            requests_per_minute: spec.limits.requests_per_minute.filter(|r| *r > 0),
            tokens_per_minute: spec.limits.tokens_per_minute.filter(|t| *t > 0),
            timeout: Duration::from_secs(u64::from(spec.timeout_seconds.max(1))),
            max_retries: spec.max_retries,
            backoff: Backoff::default(),
        }
    }
}

/// Counters of one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Attempts sent (first tries and retries).
    pub attempts: u64,
    /// Retries (attempts after a retryable failure).
    pub retries: u64,
    /// Calls that gave up (non-retryable error or retries exhausted).
    pub failures: u64,
    /// Tokens billed to this client's calls.
    pub usage: TokenUsage,
}

/// A provider with flow control. Cheap to share behind an `Arc` across tasks.
#[derive(Debug)]
pub struct LlmClient {
    provider: Arc<dyn ChatProvider>,
    config: ClientConfig,
    permits: Semaphore,
    rpm: Option<RateLimiter>,
    tpm: Option<RateLimiter>,
    budget: Arc<TokenBudget>,
    /// Largest observed input tokens per prompt byte, as f64 bits (positive floats order like
    /// their bits, so `fetch_max` works).
    tokens_per_byte: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    input: AtomicU64,
    output: AtomicU64,
}

/// Starting estimate of input tokens per prompt byte: generous (real tokenizers give about
/// 0.25 for English), so budget checks err on the safe side until replies calibrate it.
const INITIAL_TOKENS_PER_BYTE: f64 = 1.0 / 3.0;

impl LlmClient {
    /// Wraps `provider`; `budget` may be shared with other clients of the same stage.
    pub fn new(
        provider: Arc<dyn ChatProvider>,
        config: ClientConfig,
        budget: Arc<TokenBudget>,
    ) -> Self {
        let rpm = config
            .requests_per_minute
            .map(|r| RateLimiter::new(f64::from(r), 1.0));
        // Tokens may burst up to six seconds' worth, so one large request is not starved.
        let tpm = config
            .tokens_per_minute
            .map(|t| RateLimiter::new(t as f64, (t as f64 / 10.0).max(1.0)));
        Self {
            permits: Semaphore::new(config.concurrency.max(1)),
            provider,
            config,
            rpm,
            tpm,
            budget,
            tokens_per_byte: AtomicU64::new(INITIAL_TOKENS_PER_BYTE.to_bits()),
            attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            input: AtomicU64::new(0),
            output: AtomicU64::new(0),
        }
    }

    /// The client a provider spec asks for: its provider (with `api_key`, from
    /// `LLAMADUO_TEACHER_API_KEY` or `LLAMADUO_JUDGE_API_KEY`) and its limits, spending from
    /// `budget`.
    pub fn from_spec(
        spec: &ProviderSpec,
        api_key: Option<crate::secret::Secret>,
        budget: Arc<TokenBudget>,
    ) -> Result<Self, LlmError> {
        let provider = crate::provider::provider_for(spec, api_key)?;
        Ok(Self::new(provider, ClientConfig::from_spec(spec), budget))
    }

    /// The provider behind this client.
    pub fn provider(&self) -> &Arc<dyn ChatProvider> {
        &self.provider
    }

    /// The flow-control settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The budget this client spends from.
    pub fn budget(&self) -> &Arc<TokenBudget> {
        &self.budget
    }

    /// This client's counters.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            usage: TokenUsage {
                input: self.input.load(Ordering::Relaxed),
                output: self.output.load(Ordering::Relaxed),
            },
        }
    }

    /// The worst case of a request: estimated prompt tokens plus all output tokens.
    pub fn worst_case_tokens(&self, request: &ChatRequest) -> u64 {
        let per_byte = f64::from_bits(self.tokens_per_byte.load(Ordering::Relaxed));
        let prompt = (request.prompt_bytes() as f64 * per_byte).ceil() as u64
            + 8 * (request.messages.len() as u64 + 1)
            + 16;
        prompt + u64::from(request.max_tokens)
    }

    /// Sends a request under flow control, retrying what may succeed on a retry.
    /// [`LlmError::BudgetExhausted`] means the request was not sent.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let worst = self.worst_case_tokens(request);
        let reservation = self.budget.reserve(worst)?;
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let mut attempt = 0u32;
        // Billed by failed attempts of this call.
        let mut failed_billed = TokenUsage::default();
        loop {
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| LlmError::Config("the client was shut down".into()))?;
                if let Some(rpm) = &self.rpm {
                    rpm.acquire(1.0).await;
                }
                if let Some(tpm) = &self.tpm {
                    tpm.acquire(worst as f64).await;
                }
                self.attempts.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(self.config.timeout, self.provider.chat(request)).await {
                    Ok(Err(LlmError::Timeout(_))) | Err(_) => {
                        Err(LlmError::Timeout(self.config.timeout))
                    }
                    Ok(r) => r,
                }
            };
            match result {
                Ok(response) => {
                    let billed = response.usage;
                    if let Some(tpm) = &self.tpm {
                        tpm.refund(worst as f64 - billed.total() as f64);
                    }
                    self.observe_prompt(request, billed.input);
                    self.count(billed);
                    reservation.settle(billed + failed_billed);
                    return Ok(response);
                }
                Err(e) => {
                    // Give the bucket back what the attempt did not use.
                    let billed = e.billed();
                    if let Some(tpm) = &self.tpm {
                        tpm.refund(worst as f64 - billed.total() as f64);
                    }
                    self.count(billed);
                    failed_billed += billed;
                    if matches!(e, LlmError::Timeout(_)) {
                        self.budget.presume(worst);
                    }
                    if !e.is_retryable() || attempt >= self.config.max_retries {
                        reservation.settle(failed_billed);
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            provider = self.provider.name(),
                            attempts = attempt + 1,
                            error = %e,
                            "service LLM call failed"
                        );
                        return Err(e);
                    }
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = self
                        .config
                        .backoff
                        .delay(attempt, e.retry_after(), &mut rng);
                    tracing::debug!(
                        provider = self.provider.name(),
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        error = %e,
                        "retrying service LLM call"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Adds billed tokens to this client's counters.
    fn count(&self, billed: TokenUsage) {
        self.input.fetch_add(billed.input, Ordering::Relaxed);
        self.output.fetch_add(billed.output, Ordering::Relaxed);
    }

    /// Calibrates the prompt estimate from a reply's input tokens.
    fn observe_prompt(&self, request: &ChatRequest, input_tokens: u64) {
        let bytes = request.prompt_bytes();
        if bytes >= 64 {
            let ratio = input_tokens as f64 / bytes as f64;
            if ratio.is_finite() && ratio > 0.0 {
                self.tokens_per_byte
                    .fetch_max(ratio.to_bits(), Ordering::Relaxed);
            }
        }
    }
}
