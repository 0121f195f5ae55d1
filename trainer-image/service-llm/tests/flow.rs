//! Flow control under tokio's paused clock (fast and exact): the request limiter keeps every
//! 20 s window within the configured rate while still using nearly all of it, concurrency is
//! capped, and the budget refuses what could exceed it. Plus: no secret in logs or Debug.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use llamaduo::api::TokenUsage;
use llamaduo_service_llm::flow::{ClientConfig, LlmClient, TokenBudget};
use llamaduo_service_llm::provider::{
    ChatProvider, ChatRequest, ChatResponse, Completion, provider_for,
};
use llamaduo_service_llm::{LlmError, Secret};
use serde_json::json;
use tokio::time::Instant;

/// A provider that takes 200 ms and records when each call started.
#[derive(Debug, Default)]
struct Clock {
    starts: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl ChatProvider for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }
    fn model(&self) -> &str {
        "clock"
    }
    fn chat<'a>(&'a self, _r: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            self.starts.lock().expect("lock").push(Instant::now());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(ChatResponse {
                text: "ok".into(),
                usage: TokenUsage {
                    input: 10,
                    output: 5,
                },
                finish_reason: None,
                completion: Completion::Complete,
                reasoning_tokens: 0,
            })
        })
    }
}

fn config(concurrency: usize, rpm: Option<u32>, tpm: Option<u64>) -> ClientConfig {
    ClientConfig {
        concurrency,
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        timeout: Duration::from_secs(30),
        max_retries: 0,
        backoff: Default::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn request_rate_stays_within_the_limit_over_any_20s_window() {
    let clock = Arc::new(Clock::default());
    let client = Arc::new(LlmClient::new(
        clock.clone(),
        config(16, Some(600), None),
        Arc::new(TokenBudget::new(None)),
    ));
    let start = Instant::now();
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let c = Arc::clone(&client);
            tokio::spawn(async move { c.chat(&ChatRequest::user(None, "hi", 10)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("call");
    }
    let starts = clock.starts.lock().expect("lock").clone();
    let offsets: Vec<f64> = starts.iter().map(|t| (*t - start).as_secs_f64()).collect();
    // Every 20 s window holds at most 600/3 requests (+1 for the bucket's single burst slot).
    let mut worst = 0;
    for (i, t0) in offsets.iter().enumerate() {
        let n = offsets[i..].iter().take_while(|t| **t < t0 + 20.0).count();
        worst = worst.max(n);
    }
    assert!(worst <= 201, "{worst} requests in a 20 s window at 600 RPM");
    // And the limit is used: 1000 requests at 10/s take about 100 s.
    let span = offsets.last().copied().unwrap_or_default();
    let achieved = (offsets.len() as f64 - 1.0) / span * 60.0;
    assert!(achieved >= 0.95 * 600.0, "achieved {achieved:.1} RPM");
    assert!(clock.max_in_flight.load(Ordering::SeqCst) <= 16);
}

#[tokio::test(start_paused = true)]
async fn concurrency_caps_calls_in_flight() {
    let clock = Arc::new(Clock::default());
    let client = Arc::new(LlmClient::new(
        clock.clone(),
        config(3, None, None),
        Arc::new(TokenBudget::new(None)),
    ));
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let c = Arc::clone(&client);
            tokio::spawn(async move { c.chat(&ChatRequest::user(None, "hi", 10)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("call");
    }
    assert_eq!(clock.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(
        client.stats().usage,
        TokenUsage {
            input: 300,
            output: 150
        }
    );
}

#[tokio::test(start_paused = true)]
async fn token_rate_limits_tokens_per_minute() {
    let clock = Arc::new(Clock::default());
    // Each call reserves its worst case (prompt estimate + 100 max tokens) and then pays 15.
    let client = Arc::new(LlmClient::new(
        clock.clone(),
        config(64, None, Some(6_000)),
        Arc::new(TokenBudget::new(None)),
    ));
    let start = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let c = Arc::clone(&client);
            tokio::spawn(async move { c.chat(&ChatRequest::user(None, "hi", 100)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("call");
    }
    let starts = clock.starts.lock().expect("lock").clone();
    // Each call reserves 133 tokens (prompt estimate 33 + max 100) and is refunded all but the
    // 15 billed, so by the last start the bucket has paid out at least
    // 200·133 − 199·118 = 3118 tokens; with a 600-token burst at 100 tokens/s that cannot
    // happen before (3118 − 600)/100 ≈ 25 s.
    assert_eq!(
        client.worst_case_tokens(&ChatRequest::user(None, "hi", 100)),
        133
    );
    let span = (*starts.last().expect("calls") - start).as_secs_f64();
    assert!(
        span >= 24.0,
        "200 calls started within {span:.1} s at 6000 tokens/min"
    );
    assert_eq!(client.stats().usage.total(), 200 * 15);
}

#[tokio::test]
async fn budget_refuses_before_sending() {
    let clock = Arc::new(Clock::default());
    let budget = Arc::new(TokenBudget::new(Some(500)));
    let client = LlmClient::new(clock.clone(), config(1, None, None), Arc::clone(&budget));
    let req = ChatRequest::user(None, "hi", 100);
    let worst = client.worst_case_tokens(&req);
    let mut sent = 0;
    loop {
        match client.chat(&req).await {
            Ok(_) => sent += 1,
            Err(LlmError::BudgetExhausted {
                used,
                budget: b,
                needed,
            }) => {
                assert_eq!(b, 500);
                assert!(used + needed > 500);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(clock.starts.lock().expect("lock").len(), sent);
    assert_eq!(budget.used().total(), 15 * sent as u64);
    assert!(budget.used().total() + worst > 500);
}

/// A provider whose first attempts fail in scripted ways, then answers.
#[derive(Debug)]
struct Flaky {
    /// What each attempt does: `true` replies, `false` fails with `failure`.
    failures_before_success: usize,
    calls: AtomicUsize,
    failure: fn() -> LlmError,
    /// How long each failing attempt takes.
    hang: Duration,
}

impl ChatProvider for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn model(&self) -> &str {
        "flaky"
    }
    fn chat<'a>(&'a self, _r: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures_before_success {
                tokio::time::sleep(self.hang).await;
                return Err((self.failure)());
            }
            Ok(ChatResponse {
                text: "ok".into(),
                usage: TokenUsage {
                    input: 10,
                    output: 5,
                },
                finish_reason: Some("stop".into()),
                completion: Completion::Complete,
                reasoning_tokens: 0,
            })
        })
    }
}

fn retrying(max_retries: u32, timeout: Duration) -> ClientConfig {
    ClientConfig {
        max_retries,
        timeout,
        backoff: llamaduo_service_llm::flow::Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
            max_retry_after: Duration::from_millis(2),
        },
        ..config(1, None, None)
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_billed_by_failed_attempts_are_counted() {
    // A 2xx reply without choices is unreadable but billed; the retry then succeeds.
    let flaky = Arc::new(Flaky {
        failures_before_success: 2,
        calls: AtomicUsize::new(0),
        failure: || LlmError::InvalidResponse {
            provider: "flaky",
            message: "no choices[0] in the reply".into(),
            billed: TokenUsage {
                input: 7,
                output: 3,
            },
        },
        hang: Duration::ZERO,
    });
    let budget = Arc::new(TokenBudget::new(Some(10_000)));
    let client = LlmClient::new(flaky, retrying(3, Duration::from_secs(30)), budget.clone());
    client
        .chat(&ChatRequest::user(None, "hi", 10))
        .await
        .expect("third attempt");
    let expected = TokenUsage {
        input: 10 + 2 * 7,
        output: 5 + 2 * 3,
    };
    assert_eq!(client.stats().usage, expected);
    assert_eq!(budget.used(), expected);

    // When every attempt fails, what they were billed still counts.
    let flaky = Arc::new(Flaky {
        failures_before_success: usize::MAX,
        calls: AtomicUsize::new(0),
        failure: || LlmError::InvalidResponse {
            provider: "flaky",
            message: "no choices[0] in the reply".into(),
            billed: TokenUsage {
                input: 7,
                output: 3,
            },
        },
        hang: Duration::ZERO,
    });
    let budget = Arc::new(TokenBudget::new(None));
    let client = LlmClient::new(flaky, retrying(1, Duration::from_secs(30)), budget.clone());
    client
        .chat(&ChatRequest::user(None, "hi", 10))
        .await
        .expect_err("retries exhausted");
    assert_eq!(budget.used().total(), 2 * 10);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempts_are_presumed_spent_against_the_budget() {
    // Every attempt hangs past the timeout: the provider may bill it, so the budget counts
    // each attempt's worst case and refuses further calls before the limit could be passed.
    let flaky = Arc::new(Flaky {
        failures_before_success: usize::MAX,
        calls: AtomicUsize::new(0),
        failure: || LlmError::Connection("never reached".into()),
        hang: Duration::from_secs(3600),
    });
    // Worst case 333 tokens: three of them fit in 1,000, a fourth does not.
    let req = ChatRequest::user(None, "hi", 300);
    let budget = Arc::new(TokenBudget::new(Some(1_000)));
    let client = LlmClient::new(
        flaky.clone(),
        retrying(2, Duration::from_secs(5)),
        budget.clone(),
    );
    let worst = client.worst_case_tokens(&req);
    let err = client.chat(&req).await.expect_err("times out");
    assert!(matches!(err, LlmError::Timeout(_)), "{err}");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    assert_eq!(budget.presumed(), 3 * worst);
    assert_eq!(budget.used(), TokenUsage::default(), "nothing reported");
    match client.chat(&req).await {
        Err(LlmError::BudgetExhausted { used, .. }) => assert_eq!(used, 3 * worst),
        other => panic!("expected the budget to refuse, got {other:?}"),
    }
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        3,
        "nothing more was sent"
    );
}

/// A writer collecting log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_in_logs_errors_or_debug() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::{Json, Router, routing::post};
    const KEY: &str = "sk-live-SECRET-9d8e7f";
    // A careless server that echoes the key back in its error message.
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|h: HeaderMap| async move {
            let auth = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"message": format!("Incorrect API key provided: {auth}"), "type": "invalid_request_error", "code": "invalid_api_key"}})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let spec = serde_json::from_value(
        json!({"provider": "openai", "model": "gpt-4o", "baseUrl": format!("http://{addr}/v1")}),
    )
    .expect("spec");
    let provider = provider_for(&spec, Some(Secret::new(KEY))).expect("provider");
    let client = LlmClient::new(
        provider,
        ClientConfig::from_spec(&spec),
        Arc::new(TokenBudget::new(None)),
    );
    let err = client
        .chat(&ChatRequest::user(None, "hi", 10))
        .await
        .expect_err("401");
    tracing::error!(error = %err, debug = ?err, client = ?client, "logged by the caller");

    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        text.contains("invalid_api_key"),
        "the failure was logged: {text}"
    );
    assert!(!text.contains(KEY), "secret leaked into logs: {text}");
    assert!(!err.to_string().contains(KEY));
    assert!(!format!("{client:?}").contains(KEY));
    assert!(format!("{client:?}").contains("REDACTED"));
}
