//! Errors of a service LLM call, classified by what the caller should do next: retry (429,
//! 5xx, timeouts, broken connections, unreadable bodies), stop (the token budget), or fail
//! (authentication, bad requests, bad configuration).

use std::time::Duration;

use llamaduo::api::{FailureClass, TokenUsage};

/// Why a call to a service LLM did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The provider answered with an HTTP error status.
    #[error("{provider} returned HTTP {status}{}: {message}", kind.as_deref().map(|k| format!(" ({k})")).unwrap_or_default())]
    Status {
        /// Which provider (for messages).
        provider: &'static str,
        /// HTTP status code.
        status: u16,
        /// The provider's error type or status string (e.g. `rate_limit_error`,
        /// `RESOURCE_EXHAUSTED`), when its error body says.
        kind: Option<String>,
        /// The provider's error message (or the start of the body).
        message: String,
        /// How long the provider asked us to wait (Retry-After, retry-after-ms, RetryInfo,
        /// rate-limit reset headers).
        retry_after: Option<Duration>,
    },
    /// The account's quota or credit is used up (OpenAI `insufficient_quota`, a Gemini daily
    /// quota): retrying within minutes cannot succeed.
    #[error("{provider} quota exhausted (HTTP {status}): {message}")]
    QuotaExhausted {
        /// Which provider.
        provider: &'static str,
        /// HTTP status code (429).
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// No complete reply within the per-request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Connecting, sending or reading the body failed (refused, reset, truncated).
    #[error("connection error: {0}")]
    Connection(String),
    /// A 2xx reply whose body is not the provider's documented shape.
    #[error("{provider} sent an unreadable reply: {message}")]
    InvalidResponse {
        /// Which provider.
        provider: &'static str,
        /// What was wrong.
        message: String,
        /// Tokens the reply says were billed anyway (zero when it does not say).
        billed: TokenUsage,
    },
    /// The next request could exceed the stage's token budget, so it was not sent.
    #[error(
        "token budget exhausted: {used} of {budget} tokens used, the next request may need up to {needed}"
    )]
    BudgetExhausted {
        /// Tokens used so far: as the providers reported them, plus the worst case of attempts
        /// that timed out (their billing is unknown).
        used: u64,
        /// The budget.
        budget: u64,
        /// The worst-case size of the request that was refused.
        needed: u64,
    },
    /// The client is misconfigured (bad base URL, missing API key, bad header value).
    #[error("configuration error: {0}")]
    Config(String),
}

impl LlmError {
    /// Whether retrying the same request may succeed: 408, 409, 425, 429 and 5xx statuses
    /// (including Anthropic's 529 overloaded), timeouts, connection errors and unreadable bodies.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => {
                matches!(status, 408 | 409 | 425 | 429) || (500..=599).contains(status)
            }
            LlmError::Timeout(_) | LlmError::Connection(_) | LlmError::InvalidResponse { .. } => {
                true
            }
            LlmError::BudgetExhausted { .. }
            | LlmError::Config(_)
            | LlmError::QuotaExhausted { .. } => false,
        }
    }

    /// Whether a new stage attempt (a new pod, minutes later) can succeed where this call's
    /// own retries did not: not when the provider refused the request itself (400, 401, 403,
    /// 404, 422: a wrong model name, key or parameter) or the client is misconfigured; yes for
    /// everything retryable and for an exhausted quota (quotas reset and credit is topped up).
    /// The token budget is a stop rule of its own (`StageResult::budget_exhausted`).
    pub fn failure_class(&self) -> FailureClass {
        match self {
            LlmError::Config(_) => FailureClass::Permanent,
            LlmError::Status { .. } if !self.is_retryable() => FailureClass::Permanent,
            _ => FailureClass::Transient,
        }
    }

    /// Tokens the provider billed for the failed attempt, when its reply said.
    pub fn billed(&self) -> TokenUsage {
        match self {
            LlmError::InvalidResponse { billed, .. } => *billed,
            _ => TokenUsage::default(),
        }
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> LlmError {
        LlmError::Status {
            provider: "openai",
            status: code,
            kind: None,
            message: "x".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classifies_retryable_errors() {
        for code in [408, 429, 500, 502, 503, 529] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(
                status(code).failure_class(),
                FailureClass::Permanent,
                "{code}"
            );
        }
        for code in [408, 429, 500, 503] {
            assert_eq!(
                status(code).failure_class(),
                FailureClass::Transient,
                "{code}"
            );
        }
        assert_eq!(
            LlmError::Config("no key".into()).failure_class(),
            FailureClass::Permanent
        );
        let quota = LlmError::QuotaExhausted {
            provider: "openai",
            status: 429,
            message: "x".into(),
        };
        assert!(!quota.is_retryable());
        assert_eq!(quota.failure_class(), FailureClass::Transient);
        assert!(LlmError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(LlmError::Connection("reset".into()).is_retryable());
        let budget = LlmError::BudgetExhausted {
            used: 1,
            budget: 2,
            needed: 3,
        };
        assert!(!budget.is_retryable());
        let quota = LlmError::QuotaExhausted {
            provider: "openai",
            status: 429,
            message: "You exceeded your current quota".into(),
        };
        assert!(!quota.is_retryable());
    }
}
