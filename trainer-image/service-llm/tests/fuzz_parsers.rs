//! Fuzzing the parsers of what a service LLM sends back (docs/fuzzing.md): synthetic pairs,
//! judge verdicts, the JSON extraction both share, the providers' reply bodies and their
//! rate-limit headers. Each target replays its corpus (fuzz/corpus/<target>/), mutates it,
//! and throws token soup and arbitrary text at the parser; none may panic, hang or allocate
//! out of proportion, and what is accepted must be what the prompt asked for.
//!
//! `LLAMADUO_FUZZ_CASES=100000 cargo test --release -p llamaduo-service-llm --test
//! fuzz_parsers -- --nocapture` runs longer.

#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::time::{Duration, SystemTime};

use harness::{Bytes, DEFAULT_CASES, Target, any_text, cases, close, json_value, mutated, seeds};
use llamaduo_service_llm::judge::{self, parse_judgement};
use llamaduo_service_llm::provider::{
    AnthropicProvider, GeminiProvider, OpenAiProvider, parse_retry_after, rate_limit_reset,
};
use llamaduo_service_llm::synth::prompt::{
    MAX_INSTRUCTION_CHARS, MAX_RESPONSE_CHARS, parse_pairs, requested_count, synthesis_prompt,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

const PAIR_KEYS: &[&str] = &["pairs", "contents", "instruction", "response", "items"];
const JUDGE_KEYS: &[&str] = &[
    "similarity",
    "precision",
    "similarity_assessment",
    "precision_assessment",
    "similarity_score",
    "precision_score",
    "score",
    "reason",
    "explanation",
];
const REPLY_KEYS: &[&str] = &[
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "completion_tokens_details",
    "reasoning_tokens",
    "choices",
    "message",
    "content",
    "refusal",
    "finish_reason",
    "text",
    "type",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "stop_reason",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "candidates",
    "parts",
    "thought",
    "finishReason",
    "promptFeedback",
    "blockReason",
    "error",
];

/// Text with no bracket, brace or backtick: prose that cannot itself look like JSON.
fn prose() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?:\n'é-]{0,80}"
}

/// A reply to the synthesis prompt is either refused with a reason or holds only pairs that
/// pass the length rules.
fn check_pairs(text: &str) -> Result<(), TestCaseError> {
    if let Ok(parsed) = parse_pairs(text) {
        prop_assert!(!parsed.pairs.is_empty());
        for p in &parsed.pairs {
            prop_assert!(!p.instruction.is_empty() && p.instruction.trim() == p.instruction);
            prop_assert!(!p.response.is_empty() && p.response.trim() == p.response);
            prop_assert!(p.instruction.chars().count() <= MAX_INSTRUCTION_CHARS);
            prop_assert!(p.response.chars().count() <= MAX_RESPONSE_CHARS);
        }
    }
    Ok(())
}

#[test]
fn fuzz_synth_pairs() {
    let n = cases(DEFAULT_CASES);
    let property = |b: &Bytes| check_pairs(&b.text());
    let pair = ("[ -~é\n]{0,40}", "[ -~é\n]{0,40}");
    let shaped = (
        prose(),
        proptest::collection::vec(pair, 1..6),
        0..3usize,
        any::<bool>(),
        prose(),
    );
    Target::new("synth_pairs")
        .replay(property)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("synth_pairs"), PAIR_KEYS),
            property,
        )
        .fuzz(
            "token soup",
            n,
            harness::token_soup(PAIR_KEYS, 48),
            property,
        )
        .fuzz("generated JSON", n, json_value(PAIR_KEYS), property)
        .fuzz("arbitrary text", n, any_text(512), property)
        .fuzz(
            "pairs in prose round-trip",
            n,
            shaped.prop_map(|(before, pairs, shape, fence, after)| {
                let items: Vec<_> = pairs
                    .iter()
                    .map(|(i, r)| json!({"instruction": i, "response": r}))
                    .collect();
                let doc = match shape {
                    0 => json!({ "pairs": items }),
                    1 => json!({ "contents": items }),
                    _ => json!(items),
                };
                let body = if fence {
                    format!("```json\n{doc:#}\n```")
                } else {
                    doc.to_string()
                };
                let text = format!("{before}\n{body}\n{after}");
                (Bytes(text.into_bytes()), pairs)
            }),
            |(text, pairs)| {
                // Exactly the pairs whose trimmed sides are non-empty come back, in order.
                let want: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(i, r)| (i.trim().to_owned(), r.trim().to_owned()))
                    .filter(|(i, r)| !i.is_empty() && !r.is_empty())
                    .collect();
                match parse_pairs(&text.text()) {
                    Ok(got) => {
                        let got: Vec<(String, String)> = got
                            .pairs
                            .into_iter()
                            .map(|p| (p.instruction, p.response))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                    Err(e) => prop_assert!(want.is_empty(), "refused valid pairs: {e}"),
                }
                Ok(())
            },
        )
        .report();
}

/// A verdict is refused or holds two scores on the 1-100 scale.
fn check_verdict(text: &str) -> Result<(), TestCaseError> {
    if let Ok(j) = parse_judgement(text) {
        for s in [j.similarity, j.precision] {
            prop_assert!(s.is_finite() && (1.0..=100.0).contains(&s), "score {s}");
        }
        prop_assert_eq!(j.score(), j.similarity.min(j.precision));
    }
    Ok(())
}

#[test]
fn fuzz_judge_verdict() {
    let n = cases(DEFAULT_CASES);
    let property = |b: &Bytes| check_verdict(&b.text());
    let score = prop_oneof![
        (0.0f64..=100.0).prop_map(|s| (json!(s), s)),
        (0u32..=100).prop_map(|s| (json!(s.to_string()), f64::from(s))),
        (0u32..=100).prop_map(|s| (json!(format!("{s}/100")), f64::from(s))),
        (0u32..=100).prop_map(|s| (json!(format!(" {s}% ")), f64::from(s))),
    ];
    let shaped = (
        prose(),
        score.clone(),
        score,
        "[ -~]{0,30}",
        any::<bool>(),
        prose(),
    );
    Target::new("judge_verdict")
        .replay(property)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("judge_verdict"), JUDGE_KEYS),
            property,
        )
        .fuzz(
            "token soup",
            n,
            harness::token_soup(JUDGE_KEYS, 48),
            property,
        )
        .fuzz("generated JSON", n, json_value(JUDGE_KEYS), property)
        .fuzz("arbitrary text", n, any_text(512), property)
        .fuzz(
            "verdict in prose round-trip",
            n,
            shaped.prop_map(|(before, (sim, s), (prec, p), reason, fence, after)| {
                let doc = json!({
                    "similarity": {"score": sim, "reason": reason},
                    "precision": {"score": prec, "reason": reason},
                });
                let body = if fence {
                    format!("```json\n{doc:#}\n```")
                } else {
                    doc.to_string()
                };
                let text = format!("{before}\n{body}\n{after}");
                (Bytes(text.into_bytes()), (s, p, reason))
            }),
            |(text, (s, p, reason))| {
                let j = parse_judgement(&text.text())
                    .map_err(|e| TestCaseError::fail(format!("refused a valid verdict: {e}")))?;
                // The scale starts at 1: a 0 is read as the worst score.
                prop_assert!(close(j.similarity, s.max(1.0)), "{} for {s}", j.similarity);
                prop_assert!(close(j.precision, p.max(1.0)), "{} for {p}", j.precision);
                prop_assert_eq!(&j.similarity_reason, reason);
                Ok(())
            },
        )
        .report();
}

/// Brackets, fences and braces in bulk: the extraction tries a parse at every `{` and `[`,
/// so its cost on a long reply of them must stay near linear.
#[test]
fn fuzz_json_extract() {
    let n = cases(DEFAULT_CASES);
    let property = |b: &Bytes| {
        let text = b.text();
        check_pairs(&text)?;
        check_verdict(&text)
    };
    let heavy: &'static [&'static str] = &["{", "[", "{\"a\":", "[0,", "\"", "```", "```json\n"];
    let long = proptest::collection::vec(proptest::sample::select(heavy.to_vec()), 0..4096)
        .prop_map(|ts| Bytes(ts.concat().into_bytes()));
    Target::new("json_extract")
        .replay(property)
        .fuzz("bracket runs", n / 4, long, property)
        .fuzz(
            "mutated replies",
            n,
            mutated(
                [seeds("synth_pairs"), seeds("judge_verdict")].concat(),
                JUDGE_KEYS,
            ),
            property,
        )
        .report();
}

/// What the simulated teacher reads back out of our prompts.
#[test]
fn fuzz_prompt_markers() {
    let n = cases(DEFAULT_CASES);
    let property = |b: &Bytes| {
        let text = b.text();
        let _ = requested_count(&text);
        let _ = judge::between(&text, judge::INSTRUCTION_OPEN, judge::INSTRUCTION_CLOSE);
        let _ = judge::between(&text, judge::CANDIDATE_OPEN, judge::CANDIDATE_CLOSE);
        Ok(())
    };
    let prompt = (
        "[ -~\n]{0,60}",
        "[ -~\n]{0,60}",
        "[ -~\n]{0,60}",
        0u32..1000,
    )
        .prop_map(|(task, i, r, count)| {
            let p = synthesis_prompt(&task, &i, &r, count);
            Bytes(p.into_bytes())
        });
    Target::new("prompt_markers")
        .replay(property)
        .fuzz("arbitrary text", n, any_text(256), property)
        .fuzz("synthesis prompts", n, prompt, |b| {
            // The count written into the prompt is the count read back.
            prop_assert!(requested_count(&b.text()).is_some());
            Ok(())
        })
        .report();
}

/// A 2xx body from any provider: read into a reply or refused, never a panic; what is read
/// never bills fewer tokens than the body's own counts.
fn check_reply(body: &Bytes) -> Result<(), TestCaseError> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body.0) else {
        return Ok(());
    };
    let _ = OpenAiProvider::parse_reply("openai", &v);
    if let Ok(r) = AnthropicProvider::parse_reply(&v) {
        let input = v["usage"]["input_tokens"].as_u64().unwrap_or(0);
        prop_assert!(r.usage.input >= input);
    }
    if let Ok(r) = GeminiProvider::parse_reply(&v) {
        let output = v["usageMetadata"]["candidatesTokenCount"]
            .as_u64()
            .unwrap_or(0);
        prop_assert!(r.usage.output >= output);
    }
    Ok(())
}

#[test]
fn fuzz_provider_replies() {
    let n = cases(DEFAULT_CASES);
    Target::new("provider_replies")
        .replay(check_reply)
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("provider_replies"), REPLY_KEYS),
            check_reply,
        )
        .fuzz("generated JSON", n, json_value(REPLY_KEYS), check_reply)
        .report();
}

/// Found by `fuzz_provider_replies`: token counts near u64::MAX overflowed the sum of
/// Anthropic's cached and uncached input (and Gemini's output and thinking tokens), a panic
/// in debug builds and a bill wrapped round to almost nothing in release.
#[test]
fn token_counts_past_u64_saturate() {
    let anthropic = json!({"content": [{"type": "text", "text": "ok"}],
        "usage": {"input_tokens": u64::MAX, "cache_read_input_tokens": 1024,
                  "cache_creation_input_tokens": u64::MAX, "output_tokens": 3}});
    let r = AnthropicProvider::parse_reply(&anthropic).expect("reply");
    assert_eq!(r.usage.input, u64::MAX);
    let gemini = json!({"candidates": [{"content": {"parts": [{"text": "ok"}]}}],
        "usageMetadata": {"candidatesTokenCount": u64::MAX, "thoughtsTokenCount": 18}});
    let r = GeminiProvider::parse_reply(&gemini).expect("reply");
    assert_eq!(r.usage.output, u64::MAX);
}

const HEADER_NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
];

/// `name: value` lines as a header map (lines that are not a valid header are left out, as
/// the HTTP client would never hand them over).
fn check_headers(b: &Bytes) -> Result<(), TestCaseError> {
    let mut map = HeaderMap::new();
    for line in b.text().lines() {
        let Some((k, v)) = line.split_once(": ") else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::from_str(v)) {
            map.append(k, v);
        }
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let _ = parse_retry_after(&map, now);
    let _ = rate_limit_reset(&map, now);
    Ok(())
}

#[test]
fn fuzz_rate_limit_headers() {
    let n = cases(DEFAULT_CASES);
    let value = prop_oneof![
        "[ -~]{0,24}",
        Just("0".to_owned()),
        "[0-9]{1,25}(\\.[0-9]{0,9})?(h|m|s|ms|us|ns){0,1}",
        "([0-9]{1,4}(h|m|s|ms|µs)){1,6}",
        Just("1e308".to_owned()),
        Just("-1".to_owned()),
        Just("NaN".to_owned()),
        Just("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        Just("2025-01-01T00:00:00Z".to_owned()),
    ];
    let headers = proptest::collection::vec(
        (proptest::sample::select(HEADER_NAMES.to_vec()), value),
        0..8,
    );
    Target::new("rate_limit_headers")
        .replay(check_headers)
        .fuzz(
            "headers",
            n,
            headers.prop_map(|hs| {
                Bytes(
                    hs.iter()
                        .map(|(k, v)| format!("{k}: {v}\n"))
                        .collect::<String>()
                        .into_bytes(),
                )
            }),
            check_headers,
        )
        .fuzz(
            "mutated corpus",
            n,
            mutated(seeds("rate_limit_headers"), HEADER_NAMES),
            check_headers,
        )
        .report();
}
