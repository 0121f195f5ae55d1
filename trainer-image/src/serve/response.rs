//! OpenAI response bodies: chat completions, chat completion chunks (streaming), text
//! completions and the model list.

use serde_json::{Value, json};

use super::engine::Outcome;

/// `usage` of an answer.
pub fn usage(o: &Outcome) -> Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "total_tokens": o.prompt_tokens + o.completion_tokens,
    })
}

/// A `chat.completion` object.
pub fn chat_completion(id: &str, created: u64, model: &str, o: &Outcome) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": Value::Null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": o.text},
            "logprobs": Value::Null,
            "finish_reason": o.finish_reason,
        }],
        "usage": usage(o),
    })
}

/// A `chat.completion.chunk` with one choice; `usage` on the last one.
pub fn chat_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish_reason: Option<&str>,
    usage: Option<Value>,
) -> Value {
    let mut v = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": Value::Null,
        "choices": [{"index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish_reason}],
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}

/// The usage-only last chunk sent with `stream_options.include_usage` (no choices).
pub fn usage_chunk(id: &str, created: u64, model: &str, object: &str, o: &Outcome) -> Value {
    json!({
        "id": id, "object": object, "created": created, "model": model,
        "choices": [], "usage": usage(o),
    })
}

/// A `text_completion` object (whole answer, or one streamed piece).
pub fn text_completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: Option<&str>,
    usage: Option<Value>,
) -> Value {
    let mut v = json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": Value::Null,
        "choices": [{"index": 0, "text": text, "logprobs": Value::Null, "finish_reason": finish_reason}],
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}

/// The `/v1/models` list.
pub fn model_list(name: &str, created: u64) -> Value {
    json!({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "llamaduo"}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let o = Outcome {
            text: "hi".into(),
            finish_reason: "stop",
            prompt_tokens: 3,
            completion_tokens: 1,
        };
        let c = chat_completion("chatcmpl-1", 5, "m", &o);
        assert_eq!(c["choices"][0]["message"]["content"], "hi");
        assert_eq!(c["usage"]["total_tokens"], 4);
        let k = chat_chunk("chatcmpl-1", 5, "m", json!({"content": "h"}), None, None);
        assert_eq!(k["choices"][0]["delta"]["content"], "h");
        assert!(k["choices"][0]["finish_reason"].is_null());
        assert!(k.get("usage").is_none());
        let u = usage_chunk("x", 5, "m", "chat.completion.chunk", &o);
        assert_eq!(u["choices"], json!([]));
        assert_eq!(model_list("m", 1)["data"][0]["id"], "m");
    }
}
