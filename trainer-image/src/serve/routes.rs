//! The HTTP side: routes, request flow from validation through the worker queue to a JSON or
//! server-sent-events answer, health probes and metrics.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::engine::{Engine, Event, Job};
use super::error::ApiError;
use super::metrics::Metrics;
use super::request::{
    ChatRequest, CompletionRequest, GenSpec, Limits, parse_body, validate_chat, validate_completion,
};
use super::response;

/// Shared state of the handlers.
pub struct AppState {
    /// The generation worker.
    pub engine: Engine,
    /// Validation limits (served name, max tokens).
    pub limits: Limits,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// --request-timeout-seconds.
    pub timeout_seconds: u64,
    /// --body-timeout-seconds.
    pub body_timeout: Duration,
    /// When the server started (the model's `created`).
    pub started: u64,
    /// Request id counter.
    pub ids: AtomicU64,
}

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // Inside `record`, so that a 408 is counted as what the client got.
        .layer(middleware::from_fn_with_state(
            state.body_timeout,
            super::body::body_deadline,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counts every request by route and status, with its latency (for streams: until the
/// response head is sent).
async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.request(
        &endpoint,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        message: "no such endpoint; this server offers POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{model}, /health, /livez, /metrics".into(),
        param: None,
        code: Some("unknown_url"),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.ready() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response()
    }
}

async fn livez() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(response::model_list(
        &state.limits.model_name,
        state.started,
    ))
}

/// `GET /v1/models/{model}` (the openai client's `models.retrieve`).
async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(model): axum::extract::Path<String>,
) -> Response {
    if model != state.limits.model_name {
        return ApiError::model_not_found(&model, &state.limits.model_name).into_response();
    }
    let list = response::model_list(&state.limits.model_name, state.started);
    Json(list["data"][0].clone()).into_response()
}

/// The body, or the extractor's refusal (too large, unreadable) in OpenAI's error shape
/// instead of axum's plain text.
fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than this server accepts ({BODY_LIMIT_MIB} MiB); send a shorter prompt")
        } else {
            format!("the request body could not be read: {rejection}")
        };
        ApiError {
            status,
            kind: "invalid_request_error",
            message,
            param: None,
            code: None,
        }
    })
}

/// axum's default request body limit (2 MiB), named in the 413 message.
const BODY_LIMIT_MIB: usize = 2;

async fn chat(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let spec = match body_or_error(body)
        .and_then(|body| parse_body::<ChatRequest>(&body))
        .and_then(|r| validate_chat(r, &state.limits))
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    generate(state, spec, Kind::Chat).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let spec = match body_or_error(body)
        .and_then(|body| parse_body::<CompletionRequest>(&body))
        .and_then(|r| validate_completion(r, &state.limits))
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    generate(state, spec, Kind::Completion).await
}

/// Which endpoint shapes the answer.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Chat,
    Completion,
}

async fn generate(state: Arc<AppState>, spec: GenSpec, kind: Kind) -> Response {
    let deadline = Instant::now() + Duration::from_secs(state.timeout_seconds);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = spec.stream;
    let include_usage = spec.include_usage;
    if let Err(e) = state.engine.submit(Job {
        spec,
        deadline,
        timeout_seconds: state.timeout_seconds,
        events: tx,
    }) {
        return e.into_response();
    }
    // Wait for the first event (for a stream: the first text, or an error that can still be
    // an HTTP status). Dropping `rx` on timeout tells the worker to drop the request.
    let first = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        Err(_) => return ApiError::timeout(state.timeout_seconds).into_response(),
        Ok(None) => return ApiError::internal("the generation worker stopped").into_response(),
        Ok(Some(ev)) => ev,
    };
    let n = state.ids.fetch_add(1, Ordering::Relaxed);
    let ctx = StreamCtx {
        id: match kind {
            Kind::Chat => format!("chatcmpl-{:x}{n:06x}", state.started),
            Kind::Completion => format!("cmpl-{:x}{n:06x}", state.started),
        },
        created: now_secs(),
        model: state.limits.model_name.clone(),
        kind,
        include_usage,
    };
    match first {
        Event::Failed(e) => e.into_response(),
        Event::Done(o) if !stream => Json(match kind {
            Kind::Chat => response::chat_completion(&ctx.id, ctx.created, &ctx.model, &o),
            Kind::Completion => response::text_completion(
                &ctx.id,
                ctx.created,
                &ctx.model,
                &o.text,
                Some(o.finish_reason),
                Some(response::usage(&o)),
            ),
        })
        .into_response(),
        Event::Delta(_) | Event::Done(_) if !stream => {
            ApiError::internal("the worker streamed a non-streaming request").into_response()
        }
        first => sse(ctx, first, rx),
    }
}

struct StreamCtx {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    include_usage: bool,
}

impl StreamCtx {
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, usage: Option<Value>) -> Value {
        match self.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                response::chat_chunk(&self.id, self.created, &self.model, delta, finish, usage)
            }
            Kind::Completion => response::text_completion(
                &self.id,
                self.created,
                &self.model,
                text.unwrap_or(""),
                finish,
                usage,
            ),
        }
    }

    /// The SSE events for one worker event; `true` when the stream is over.
    fn events(&self, ev: Event, out: &mut VecDeque<SseEvent>) -> bool {
        let data = |v: Value| SseEvent::default().data(v.to_string());
        match ev {
            Event::Delta(d) => {
                out.push_back(data(self.chunk(Some(&d), None, None)));
                false
            }
            Event::Done(o) => {
                // Usage travels only in the usage-only chunk, and only when asked for, as
                // OpenAI sends it: clients that sum usage over chunks would count it twice.
                out.push_back(data(self.chunk(None, Some(o.finish_reason), None)));
                if self.include_usage {
                    let object = match self.kind {
                        Kind::Chat => "chat.completion.chunk",
                        Kind::Completion => "text_completion",
                    };
                    out.push_back(data(response::usage_chunk(
                        &self.id,
                        self.created,
                        &self.model,
                        object,
                        &o,
                    )));
                }
                out.push_back(SseEvent::default().data("[DONE]"));
                true
            }
            Event::Failed(e) => {
                out.push_back(data(e.body()));
                true
            }
        }
    }
}

fn sse(ctx: StreamCtx, first: Event, rx: UnboundedReceiver<Event>) -> Response {
    let mut pending = VecDeque::new();
    if let Kind::Chat = ctx.kind {
        let role = response::chat_chunk(
            &ctx.id,
            ctx.created,
            &ctx.model,
            json!({"role": "assistant", "content": ""}),
            None,
            None,
        );
        pending.push_back(SseEvent::default().data(role.to_string()));
    }
    let finished = ctx.events(first, &mut pending);
    let stream = futures::stream::unfold(
        (ctx, rx, pending, finished),
        |(ctx, mut rx, mut pending, mut finished)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (ctx, rx, pending, finished)));
                }
                if finished {
                    return None;
                }
                finished = match rx.recv().await {
                    Some(ev) => ctx.events(ev, &mut pending),
                    None => ctx.events(
                        Event::Failed(ApiError::internal("the generation worker stopped")),
                        &mut pending,
                    ),
                };
            }
        },
    );
    Sse::new(stream).into_response()
}
