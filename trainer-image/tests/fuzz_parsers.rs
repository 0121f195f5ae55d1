//! Fuzzing the serve request body (docs/fuzzing.md): the JSON of `/v1/chat/completions` and
//! `/v1/completions`, parsed and validated exactly as the routes do (`parse_body`, then
//! `validate_chat` / `validate_completion`; src/serve/request.rs is included by path, as the
//! binary crate has no library). Any body gets a `GenSpec` within the server's limits or an
//! OpenAI-shaped 400/404, never a panic, a hang or an allocation out of proportion.
//!
//! `LLAMADUO_FUZZ_CASES=100000 cargo test --release -p llamaduo-trainer --test fuzz_parsers --
//! --nocapture` runs longer.

#[path = "../../fuzz/harness.rs"]
mod harness;

// At the crate root, so that request.rs's `super::error` is this `error`.
#[allow(dead_code)]
#[path = "../src/serve/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../src/serve/request.rs"]
mod request;

use error::ApiError;
use harness::{Bytes, DEFAULT_CASES, Target, any_bytes, cases, json_value, mutated, seeds};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use request::{
    ChatRequest, CompletionRequest, GenSpec, Limits, parse_body, validate_chat, validate_completion,
};

const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "include_usage",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
    "best_of",
    "echo",
    "none",
    "auto",
    "tiny",
];

fn limits() -> Limits {
    Limits {
        model_name: "tiny".into(),
        max_tokens: 64,
    }
}

/// What validation hands the engine is within the server's limits.
fn check_spec(g: &GenSpec) -> Result<(), TestCaseError> {
    let l = limits();
    prop_assert!(
        g.max_tokens >= 1 && g.max_tokens <= l.max_tokens,
        "{}",
        g.max_tokens
    );
    prop_assert!((0.0..=2.0).contains(&g.temperature), "{}", g.temperature);
    prop_assert!(g.top_p > 0.0 && g.top_p <= 1.0, "{}", g.top_p);
    prop_assert!(g.stop.len() <= 4 && g.stop.iter().all(|s| !s.is_empty()));
    Ok(())
}

/// A refusal is a client error that names a field when it can.
fn check_refusal(e: &ApiError) -> Result<(), TestCaseError> {
    let status = e.status.as_u16();
    prop_assert!(status == 400 || status == 404, "status {status}");
    prop_assert!(!e.message.is_empty());
    Ok(())
}

/// The same body as a chat and as a completion request, as the two routes would see it.
fn check_body(b: &Bytes) -> Result<(), TestCaseError> {
    let chat = parse_body::<ChatRequest>(&b.0).and_then(|r| validate_chat(r, &limits()));
    match &chat {
        Ok(g) => check_spec(g)?,
        Err(e) => check_refusal(e)?,
    }
    let completion =
        parse_body::<CompletionRequest>(&b.0).and_then(|r| validate_completion(r, &limits()));
    match &completion {
        Ok(g) => check_spec(g)?,
        Err(e) => check_refusal(e)?,
    }
    Ok(())
}

#[test]
fn fuzz_serve_request() {
    let n = cases(DEFAULT_CASES);
    Target::new("serve_request")
        .replay(check_body)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("serve_request"), KEYS),
            check_body,
        )
        .fuzz("generated JSON", n, json_value(KEYS), check_body)
        .fuzz("token soup", n, harness::token_soup(KEYS, 48), check_body)
        .fuzz("arbitrary bytes", n, any_bytes(256), check_body)
        .report();
}
