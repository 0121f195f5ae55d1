//! The simulated teacher's HTTP side: OpenAI chat completions (`POST /v1/chat/completions`,
//! with `usage`) and `GET /v1/models`, with seeded fault injection and optional server-side
//! rate limiting. What a request asks is read from its last user message: a synthesis prompt
//! gets new pairs, a judge prompt gets a computed verdict, anything else gets the family's
//! correct answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::SimulateOptions;
use super::tasks::{FAMILY_NAMES, Family};
use crate::judge::{
    CANDIDATE_CLOSE, CANDIDATE_OPEN, INSTRUCTION_CLOSE, INSTRUCTION_OPEN, REFERENCE_CLOSE,
    REFERENCE_OPEN, between,
};
use crate::synth::prompt::{SYNTH_MARKER, requested_count};

/// Counters of a running simulated teacher.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Chat requests received.
    pub requests: AtomicU64,
    /// Requests answered normally (2xx with a proper reply).
    pub ok: AtomicU64,
    /// Injected 429s.
    pub rate_limited: AtomicU64,
    /// 429s from the server-side request-per-minute limit.
    pub over_limit: AtomicU64,
    /// Injected 500s.
    pub server_errors: AtomicU64,
    /// Injected delays.
    pub delayed: AtomicU64,
    /// Injected malformed replies.
    pub malformed: AtomicU64,
    /// Injected truncated bodies.
    pub truncated: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) opts: SimulateOptions,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) stats: Arc<SimStats>,
    window: Mutex<VecDeque<tokio::time::Instant>>,
    ids: AtomicU64,
}

impl Shared {
    pub(crate) fn new(opts: SimulateOptions, stats: Arc<SimStats>) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(opts.seed)),
            opts,
            stats,
            window: Mutex::new(VecDeque::new()),
            ids: AtomicU64::new(0),
        }
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut g = match self.rng.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Server-side requests-per-minute check over a sliding 60 s window; Some(wait) if over.
    fn over_limit(&self) -> Option<Duration> {
        let limit = self.opts.enforce_rpm? as usize;
        let now = tokio::time::Instant::now();
        let mut w = match self.window.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            w.pop_front();
        }
        if w.len() >= limit.max(1) {
            let oldest = *w.front()?;
            return Some(Duration::from_secs(60).saturating_sub(now.duration_since(oldest)));
        }
        w.push_back(now);
        None
    }
}

/// The router of the simulated teacher.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(shared)
}

async fn models() -> Response {
    let data: Vec<Value> = FAMILY_NAMES
        .iter()
        .map(
            |m| json!({"id": m, "object": "model", "created": 0, "owned_by": "llamaduo-simulated"}),
        )
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn rate_limited(wait: Duration, message: &str) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "requests",
        "rate_limit_exceeded",
        message,
    );
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs_f64().ceil().to_string()) {
        h.insert(header::RETRY_AFTER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&wait.as_millis().to_string()) {
        h.insert("retry-after-ms", v);
    }
    r
}

/// Which fault, if any, a request gets.
enum Fault {
    None,
    TooMany,
    ServerError,
    Delay,
    Malformed,
    Truncated,
}

/// `Some(401)` when `--require-api-key` is set and the request does not carry it.
fn unauthorized(opts: &SimulateOptions, headers: &HeaderMap) -> Option<Response> {
    let want = opts.require_api_key.as_deref()?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    (presented != want).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            &format!("Incorrect API key provided: {presented}."),
        )
    })
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let stats = &shared.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let opts = &shared.opts;
    if let Some(refused) = unauthorized(opts, &headers) {
        return refused;
    }
    if opts.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(opts.latency_ms)).await;
    }
    if let Some(wait) = shared.over_limit() {
        stats.over_limit.fetch_add(1, Ordering::Relaxed);
        return rate_limited(wait, "Rate limit reached for requests per minute");
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                &format!("We could not parse the JSON body of your request: {e}"),
            );
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(family) = Family::from_model(&model) else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            &format!(
                "The model `{model}` does not exist; simulate-teacher serves {}",
                FAMILY_NAMES.join(", ")
            ),
        );
    };
    let Some(messages) = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            "messages must be a non-empty array",
        );
    };
    let fault = shared.with_rng(|rng| {
        let x: f64 = rng.random();
        let mut edge = 0.0;
        for (rate, fault) in [
            (opts.fault_429, Fault::TooMany),
            (opts.fault_500, Fault::ServerError),
            (opts.fault_timeout, Fault::Delay),
            (opts.fault_malformed, Fault::Malformed),
            (opts.fault_truncated, Fault::Truncated),
        ] {
            edge += rate;
            if x < edge {
                return fault;
            }
        }
        Fault::None
    });
    match fault {
        Fault::TooMany => {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return rate_limited(
                Duration::from_secs_f64(opts.retry_after),
                "Rate limit reached (injected by simulate-teacher)",
            );
        }
        Fault::ServerError => {
            stats.server_errors.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "The server had an error while processing your request (injected)",
            );
        }
        Fault::Delay => {
            stats.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(opts.timeout_delay_ms)).await;
        }
        _ => {}
    }
    let prompt_text: Vec<&str> = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .collect();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .unwrap_or_default();
    let mut content = shared.with_rng(|rng| reply(family, last_user, rng));
    if matches!(fault, Fault::Malformed) {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        // A reply cut mid-JSON, as a model hitting a stop sequence might send.
        let cut = content.len() / 2;
        let mut cut = cut.max(1).min(content.len());
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        content = format!("Here you go: {}", &content[..cut]);
    }
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let mut finish = "stop";
    if count_tokens(&content) > max_tokens {
        let mut cut = (max_tokens as usize).saturating_mul(4).min(content.len());
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        content.truncate(cut);
        finish = "length";
    }
    let prompt_tokens: u64 = prompt_text.iter().map(|t| count_tokens(t) + 4).sum::<u64>() + 3;
    let completion_tokens = count_tokens(&content);
    let id = shared.ids.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = json!({
        "id": format!("chatcmpl-sim-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": family.name(),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    });
    let bytes = body.to_string().into_bytes();
    if matches!(fault, Fault::Truncated) {
        stats.truncated.fetch_add(1, Ordering::Relaxed);
        // Send half the body, then break the stream: the connection is aborted mid-body.
        let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
        let stream = futures::stream::iter(vec![
            Ok::<Bytes, std::io::Error>(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected truncation",
            )),
        ]);
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    stats.ok.fetch_add(1, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Roughly one token per four bytes, at least one: close to real tokenizers on English.
pub fn count_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

/// The reply text for a prompt.
fn reply(family: Family, prompt: &str, rng: &mut StdRng) -> String {
    if prompt.contains(SYNTH_MARKER) {
        let n = requested_count(prompt).unwrap_or(5).clamp(1, 50);
        let pairs: Vec<Value> = (0..n)
            .map(|_| {
                let (instruction, response) = family.generate(rng);
                json!({"instruction": instruction, "response": response})
            })
            .collect();
        return json!({"pairs": pairs}).to_string();
    }
    if prompt.contains(INSTRUCTION_OPEN) && prompt.contains(CANDIDATE_OPEN) {
        let instruction = between(prompt, INSTRUCTION_OPEN, INSTRUCTION_CLOSE).unwrap_or_default();
        let reference = between(prompt, REFERENCE_OPEN, REFERENCE_CLOSE).unwrap_or_default();
        let candidate = between(prompt, CANDIDATE_OPEN, CANDIDATE_CLOSE).unwrap_or_default();
        let correct = family
            .solve(instruction)
            .unwrap_or_else(|| reference.to_string());
        let (similarity, precision) = family.grade(candidate, &correct);
        let verdict = if similarity >= 90.0 {
            "matches the correct answer"
        } else if similarity >= 50.0 {
            "is partly right"
        } else {
            "is wrong"
        };
        return json!({
            "similarity": {"score": similarity, "reason": format!("The candidate {verdict} ({correct}).")},
            "precision": {"score": precision, "reason": format!("The candidate {verdict}.")}
        })
        .to_string();
    }
    family
        .solve(prompt)
        .unwrap_or_else(|| format!("I can only answer {} tasks.", family.name()))
}
