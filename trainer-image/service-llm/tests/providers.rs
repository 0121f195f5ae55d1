//! Anthropic and Gemini (and OpenAI error) request/response fixtures, written from the
//! providers' documented formats and served by a local axum server that checks each request
//! as the real API would: path, auth headers, body fields. Error shapes map to retryable or
//! fatal errors with the server's wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use llamaduo::api::{ProviderKind, ProviderSpec};
use llamaduo_service_llm::flow::{Backoff, ClientConfig, LlmClient, TokenBudget};
use llamaduo_service_llm::judge::{judge_request, parse_judgement};
use llamaduo_service_llm::provider::{ChatRequest, Completion, ResponseFormat, provider_for};
use llamaduo_service_llm::{LlmError, Secret};
use serde_json::{Value, json};

const KEY: &str = "test-key-3f9a1c";

/// A canned reply: status, headers, body.
type Canned = (u16, Vec<(&'static str, String)>, Value);

#[derive(Default)]
struct Fixture {
    /// Requests seen (body, headers).
    seen: Mutex<Vec<(Value, HeaderMap)>>,
    /// Replies to send, in order (status, headers, body); the last repeats.
    replies: Mutex<Vec<Canned>>,
    calls: AtomicUsize,
}

async fn reply(fx: &Fixture, headers: HeaderMap, body: Value) -> Response {
    fx.seen.lock().expect("lock").push((body, headers));
    let n = fx.calls.fetch_add(1, Ordering::SeqCst);
    let replies = fx.replies.lock().expect("lock");
    let (status, hdrs, body) = replies[n.min(replies.len() - 1)].clone();
    let mut r = (StatusCode::from_u16(status).expect("status"), Json(body)).into_response();
    for (k, v) in hdrs {
        r.headers_mut().insert(k, v.parse().expect("header"));
    }
    r
}

async fn serve(fx: Arc<Fixture>) -> String {
    let app = Router::new()
        .route(
            "/v1/messages",
            post(
                |State(fx): State<Arc<Fixture>>, h: HeaderMap, Json(b): Json<Value>| async move {
                    reply(&fx, h, b).await
                },
            ),
        )
        .route(
            "/v1beta/models/{call}",
            post(
                |State(fx): State<Arc<Fixture>>,
                 AxPath(call): AxPath<String>,
                 h: HeaderMap,
                 Json(mut b): Json<Value>| async move {
                    b["_path"] = json!(call);
                    reply(&fx, h, b).await
                },
            ),
        )
        .route(
            "/v1/chat/completions",
            post(
                |State(fx): State<Arc<Fixture>>, h: HeaderMap, Json(b): Json<Value>| async move {
                    reply(&fx, h, b).await
                },
            ),
        )
        .with_state(fx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn spec(provider: ProviderKind, model: &str, base: String) -> ProviderSpec {
    serde_json::from_value(
        json!({"provider": provider, "model": model, "baseUrl": base, "maxRetries": 3}),
    )
    .expect("spec")
}

fn client(spec: &ProviderSpec) -> LlmClient {
    let provider = provider_for(spec, Some(Secret::new(KEY))).expect("provider");
    let mut cc = ClientConfig::from_spec(spec);
    cc.backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
        max_retry_after: Duration::from_millis(50),
    };
    LlmClient::new(provider, cc, Arc::new(TokenBudget::new(None)))
}

fn schema_request() -> ChatRequest {
    let mut r = ChatRequest::user(Some("Be brief.".into()), "What is 2 + 2?", 100);
    r.temperature = Some(0.2);
    r.format = ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema: json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"], "additionalProperties": false}),
    };
    r
}

/// The documented Messages response.
fn anthropic_ok(text: &str) -> Value {
    json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "x"}, {"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 21, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}
    })
}

#[tokio::test]
async fn anthropic_messages_wire_format_and_errors() {
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = vec![
        (
            529,
            vec![],
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
        (
            429,
            vec![("retry-after", "0".into())],
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}, "request_id": "req_1"}),
        ),
        (200, vec![], anthropic_ok("{\"answer\": \"4\"}")),
    ];
    let base = serve(Arc::clone(&fx)).await;
    let spec = spec(
        ProviderKind::Anthropic,
        "claude-sonnet-4-5",
        format!("{base}/v1"),
    );
    let c = client(&spec);
    let reply = c
        .chat(&schema_request())
        .await
        .expect("succeeds after retries");
    assert_eq!(reply.text, "{\"answer\": \"4\"}");
    assert_eq!((reply.usage.input, reply.usage.output), (25, 9));
    assert_eq!(reply.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(c.stats().retries, 2);

    {
        let seen = fx.seen.lock().expect("lock");
        let (body, headers) = &seen[2];
        assert_eq!(headers["x-api-key"], KEY);
        assert_eq!(headers["anthropic-version"], "2023-06-01");
        assert!(headers.get("authorization").is_none());
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "What is 2 + 2?"}])
        );
        assert_eq!(body["output_config"]["format"]["type"], "json_schema");
        assert_eq!(
            body["output_config"]["format"]["schema"]["required"],
            json!(["answer"])
        );
    }

    // A bad request is not retried and keeps the provider's words.
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = vec![(
        400,
        vec![],
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}),
    )];
    let base = serve(Arc::clone(&fx)).await;
    let c = client(&spec_with(
        ProviderKind::Anthropic,
        "claude-sonnet-4-5",
        format!("{base}/v1"),
    ));
    let err = c.chat(&schema_request()).await.expect_err("400");
    match &err {
        LlmError::Status {
            status,
            kind,
            message,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(kind.as_deref(), Some("invalid_request_error"));
            assert!(message.contains("max_tokens"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fx.calls.load(Ordering::SeqCst), 1);
}

fn spec_with(provider: ProviderKind, model: &str, base: String) -> ProviderSpec {
    spec(provider, model, base)
}

/// The documented generateContent response.
fn gemini_ok(text: &str) -> Value {
    json!({
        "candidates": [{
            "content": {"parts": [{"text": "thinking...", "thought": true}, {"text": text}], "role": "model"},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 12, "thoughtsTokenCount": 5, "totalTokenCount": 47},
        "modelVersion": "gemini-2.5-flash"
    })
}

#[tokio::test]
async fn gemini_generate_content_wire_format_and_errors() {
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = vec![
        (
            429,
            vec![],
            json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.01s"}]}}),
        ),
        (
            503,
            vec![],
            json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}),
        ),
        (200, vec![], gemini_ok("{\"answer\": \"4\"}")),
    ];
    let base = serve(Arc::clone(&fx)).await;
    let spec = spec(
        ProviderKind::Gemini,
        "gemini-2.5-flash",
        format!("{base}/v1beta"),
    );
    let c = client(&spec);
    let reply = c
        .chat(&schema_request())
        .await
        .expect("succeeds after retries");
    assert_eq!(reply.text, "{\"answer\": \"4\"}");
    assert_eq!(
        (reply.usage.input, reply.usage.output),
        (30, 17),
        "thought tokens are billed output"
    );
    assert_eq!(reply.finish_reason.as_deref(), Some("STOP"));

    {
        let seen = fx.seen.lock().expect("lock");
        let (body, headers) = &seen[2];
        assert_eq!(body["_path"], "gemini-2.5-flash:generateContent");
        assert_eq!(headers["x-goog-api-key"], KEY);
        assert_eq!(
            body["contents"],
            json!([{"role": "user", "parts": [{"text": "What is 2 + 2?"}]}])
        );
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        let gc = &body["generationConfig"];
        assert_eq!(gc["maxOutputTokens"], 100);
        assert_eq!(gc["temperature"], 0.2);
        assert_eq!(gc["responseMimeType"], "application/json");
        assert_eq!(gc["responseSchema"]["type"], "OBJECT");
        assert_eq!(
            gc["responseSchema"]["properties"]["answer"]["type"],
            "STRING"
        );
        assert!(gc["responseSchema"].get("additionalProperties").is_none());
    }

    // An invalid key: 400 INVALID_ARGUMENT, fatal at once.
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = vec![(
        400,
        vec![],
        json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}),
    )];
    let base = serve(Arc::clone(&fx)).await;
    let c = client(&spec_with(
        ProviderKind::Gemini,
        "gemini-2.5-flash",
        format!("{base}/v1beta"),
    ));
    let err = c.chat(&schema_request()).await.expect_err("400");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("INVALID_ARGUMENT"), "{err}");
    assert_eq!(fx.calls.load(Ordering::SeqCst), 1);

    // A prompt blocked by safety filters: an empty reply, not a crash.
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = vec![(
        200,
        vec![],
        json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}),
    )];
    let base = serve(Arc::clone(&fx)).await;
    let c = client(&spec_with(
        ProviderKind::Gemini,
        "gemini-2.5-flash",
        format!("{base}/v1beta"),
    ));
    let reply = c.chat(&schema_request()).await.expect("blocked reply");
    assert_eq!(reply.text, "");
    assert_eq!(reply.finish_reason.as_deref(), Some("blocked: SAFETY"));
    assert_eq!(reply.completion, Completion::Withheld);
    assert_eq!(reply.usage.input, 8);
}

#[tokio::test]
async fn openai_wire_format_and_error_body() {
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = vec![
        (
            500,
            vec![],
            json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}),
        ),
        (
            200,
            vec![],
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"similarity\": {\"score\": 88, \"reason\": \"ok\"}, \"precision\": {\"score\": \"91\", \"reason\": \"ok\"}}", "refusal": null}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}
            }),
        ),
    ];
    let base = serve(Arc::clone(&fx)).await;
    let spec = spec(ProviderKind::Openai, "gpt-4o", format!("{base}/v1"));
    let c = client(&spec);
    let req = judge_request("Add numbers", "What is 2 + 2?", "4", "4", None);
    let reply = c.chat(&req).await.expect("succeeds after a retry");
    let j = parse_judgement(&reply.text).expect("judgement");
    assert_eq!((j.similarity, j.precision), (88.0, 91.0));
    let seen = fx.seen.lock().expect("lock");
    let (body, headers) = &seen[1];
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(body["max_completion_tokens"], 400);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(body["response_format"]["json_schema"]["name"], "judgement");
}

#[tokio::test]
async fn missing_keys_and_base_urls_are_clear_errors() {
    let spec: ProviderSpec =
        serde_json::from_value(json!({"provider": "anthropic", "model": "claude"})).expect("spec");
    let err = provider_for(&spec, None).expect_err("needs a key");
    assert!(
        err.to_string().contains("LLAMADUO_TEACHER_API_KEY"),
        "{err}"
    );
    let spec: ProviderSpec =
        serde_json::from_value(json!({"provider": "openaiCompatible", "model": "m"}))
            .expect("spec");
    let err = provider_for(&spec, None).expect_err("needs a base URL");
    assert!(err.to_string().contains("baseUrl"), "{err}");
}

/// A fixture server and a client of `provider` at `{server}{path}` answering `replies`.
async fn fixture(
    provider: ProviderKind,
    model: &str,
    path: &str,
    replies: Vec<Canned>,
) -> (Arc<Fixture>, LlmClient) {
    let fx = Arc::new(Fixture::default());
    *fx.replies.lock().expect("lock") = replies;
    let base = serve(Arc::clone(&fx)).await;
    let c = client(&spec(provider, model, format!("{base}{path}")));
    (fx, c)
}

fn openai_reply(message: Value, finish: &str, usage: Value) -> Value {
    json!({
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "o3",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage
    })
}

#[tokio::test]
async fn openai_reasoning_models_refusals_and_cut_off_replies() {
    // o-series models refuse any temperature but the default: the request goes again without
    // it, and later requests leave it out from the start.
    let temperature_400 = (
        400,
        vec![],
        json!({"error": {"message": "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported.", "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}),
    );
    let cut_off = openai_reply(
        json!({"role": "assistant", "content": "", "refusal": null}),
        "length",
        json!({"prompt_tokens": 40, "completion_tokens": 100, "total_tokens": 140,
               "completion_tokens_details": {"reasoning_tokens": 100}}),
    );
    let (fx, c) = fixture(
        ProviderKind::Openai,
        "o3",
        "/v1",
        vec![temperature_400, (200, vec![], cut_off)],
    )
    .await;
    let reply = c.chat(&schema_request()).await.expect("resent without it");
    assert_eq!(reply.completion, Completion::Truncated);
    assert_eq!(reply.reasoning_tokens, 100);
    let why = reply
        .incomplete_reason(100, "judge.generation.maxTokens")
        .expect("incomplete");
    assert!(
        why.contains("100 of them spent on hidden reasoning"),
        "{why}"
    );
    assert!(why.contains("raise judge.generation.maxTokens"), "{why}");
    c.chat(&schema_request()).await.expect("second call");
    {
        let seen = fx.seen.lock().expect("lock");
        assert_eq!(seen.len(), 3, "one resend, then no more 400s");
        assert_eq!(seen[0].0["temperature"], 0.2);
        assert!(seen[1].0.get("temperature").is_none());
        assert!(seen[2].0.get("temperature").is_none());
        assert_eq!(seen[1].0["response_format"]["type"], "json_schema");
    }
    assert_eq!(
        c.stats().retries,
        0,
        "a resend without the field is not a retry"
    );

    // A refusal is withheld, not an answer.
    let refusal = openai_reply(
        json!({"role": "assistant", "content": null, "refusal": "I can't help with that."}),
        "stop",
        json!({"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}),
    );
    let (_, c) = fixture(
        ProviderKind::Openai,
        "gpt-4o",
        "/v1",
        vec![(200, vec![], refusal)],
    )
    .await;
    let reply = c.chat(&schema_request()).await.expect("reply");
    assert_eq!(reply.completion, Completion::Withheld);
    assert_eq!(reply.finish_reason.as_deref(), Some("refusal"));

    // Out of credit: fatal at once, with the provider's words.
    let (fx, c) = fixture(
        ProviderKind::Openai,
        "gpt-4o",
        "/v1",
        vec![(
            429,
            vec![],
            json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
        )],
    )
    .await;
    let err = c.chat(&schema_request()).await.expect_err("quota");
    assert!(matches!(err, LlmError::QuotaExhausted { .. }), "{err:?}");
    assert!(err.to_string().contains("billing details"), "{err}");
    assert_eq!(fx.calls.load(Ordering::SeqCst), 1);

    // A server that does not take json_schema: plain JSON mode instead.
    let (fx, c) = fixture(
        ProviderKind::OpenaiCompatible,
        "local",
        "/v1",
        vec![
            (
                400,
                vec![],
                json!({"error": {"message": "response_format.type json_schema is not supported", "type": "BadRequestError", "code": 400}}),
            ),
            (
                200,
                vec![],
                openai_reply(
                    json!({"role": "assistant", "content": "{\"answer\": \"4\"}"}),
                    "stop",
                    json!({"prompt_tokens": 5, "completion_tokens": 5}),
                ),
            ),
        ],
    )
    .await;
    let reply = c.chat(&schema_request()).await.expect("JSON mode");
    assert_eq!(reply.completion, Completion::Complete);
    let seen = fx.seen.lock().expect("lock");
    assert_eq!(seen[1].0["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        seen[1].0["temperature"], 0.2,
        "only the named field is dropped"
    );
}

#[tokio::test]
async fn anthropic_cut_off_refused_and_older_models() {
    // A base URL without /v1 (the SDKs' convention) works.
    let mut truncated = anthropic_ok("{\"answer\": ");
    truncated["stop_reason"] = json!("max_tokens");
    let mut refused = anthropic_ok("");
    refused["stop_reason"] = json!("refusal");
    let (fx, c) = fixture(
        ProviderKind::Anthropic,
        "claude-3-5-haiku-latest",
        "",
        vec![
            (
                400,
                vec![],
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": "output_config: Extra inputs are not permitted"}}),
            ),
            (200, vec![], truncated),
            (200, vec![], refused),
        ],
    )
    .await;
    let reply = c.chat(&schema_request()).await.expect("resent");
    assert_eq!(reply.completion, Completion::Truncated);
    let reply = c.chat(&schema_request()).await.expect("second");
    assert_eq!(reply.completion, Completion::Withheld);
    let seen = fx.seen.lock().expect("lock");
    assert!(seen[0].0.get("output_config").is_some());
    assert!(seen[1].0.get("output_config").is_none());
    assert!(seen[2].0.get("output_config").is_none());
    assert_eq!(seen[1].0["temperature"], 0.2);
}

#[tokio::test]
async fn gemini_safety_stops_thinking_cut_offs_and_unreadable_billed_replies() {
    let mut safety = gemini_ok("");
    safety["candidates"][0]["finishReason"] = json!("SAFETY");
    let mut thinking = gemini_ok("");
    thinking["candidates"][0]["finishReason"] = json!("MAX_TOKENS");
    thinking["usageMetadata"]["thoughtsTokenCount"] = json!(95);
    let no_candidates = json!({"usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 0, "totalTokenCount": 30}});
    let (_, c) = fixture(
        ProviderKind::Gemini,
        "gemini-2.5-flash",
        "",
        vec![
            (200, vec![], safety),
            (200, vec![], thinking),
            (200, vec![], no_candidates),
            (200, vec![], gemini_ok("{\"answer\": \"4\"}")),
        ],
    )
    .await;
    let reply = c.chat(&schema_request()).await.expect("safety");
    assert_eq!(reply.completion, Completion::Withheld);
    assert!(
        reply
            .incomplete_reason(100, "x")
            .expect("why")
            .contains("SAFETY")
    );
    let reply = c.chat(&schema_request()).await.expect("thinking");
    assert_eq!(reply.completion, Completion::Truncated);
    assert_eq!(reply.reasoning_tokens, 95);
    // A reply with usage but no candidate is retried, and its tokens are billed.
    let before = c.stats().usage;
    let reply = c.chat(&schema_request()).await.expect("after a retry");
    assert_eq!(reply.completion, Completion::Complete);
    let spent = c.stats().usage.total() - before.total();
    assert_eq!(
        spent,
        30 + (30 + 17),
        "the unreadable reply's 30 tokens count"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_keys_stay_home() {
    // The "other host": records whether any request reached it.
    let other = Arc::new(Fixture::default());
    *other.replies.lock().expect("lock") = vec![(200, vec![], anthropic_ok("stolen"))];
    let other_base = serve(Arc::clone(&other)).await;
    let (fx, c) = fixture(
        ProviderKind::Anthropic,
        "claude-sonnet-4-5",
        "/v1",
        vec![(
            307,
            vec![("location", format!("{other_base}/v1/messages?token=abc"))],
            json!({}),
        )],
    )
    .await;
    let err = c.chat(&schema_request()).await.expect_err("redirect");
    assert!(matches!(err, LlmError::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("redirect"), "{text}");
    assert!(text.contains("baseUrl"), "{text}");
    assert!(
        !text.contains("token=abc"),
        "query strings are not echoed: {text}"
    );
    assert_eq!(fx.calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(other.calls.load(Ordering::SeqCst), 0, "never followed");
}

#[tokio::test]
async fn base_urls_need_a_scheme_and_host() {
    for bad in ["vllm:8000/v1", "ftp://example.com/v1", "localhost"] {
        let spec: ProviderSpec = serde_json::from_value(
            json!({"provider": "openaiCompatible", "model": "m", "baseUrl": bad}),
        )
        .expect("spec");
        let err = provider_for(&spec, None).expect_err(bad);
        assert!(matches!(err, LlmError::Config(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains("http://"), "{bad}: {err}");
    }
}
