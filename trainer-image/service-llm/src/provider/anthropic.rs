//! Anthropic Messages (`POST {base}/messages`, headers `x-api-key` and `anthropic-version`).
//! Request: `model`, `max_tokens` (required), `system`, `messages` (user/assistant turns),
//! `temperature`, and for schemas `output_config.format = {type: json_schema, schema}`.
//! Reply: `content` blocks (text blocks joined; thinking blocks skipped), `stop_reason`
//! (`max_tokens`: cut off; `refusal`: withheld), `usage.input_tokens` (+ cache creation/read
//! input tokens) and `usage.output_tokens`.
//! Errors: `{"type": "error", "error": {"type", "message"}}`; 529 means overloaded.

use futures::future::BoxFuture;
use llamaduo::api::{Role, TokenUsage};
use serde_json::{Value, json};

use super::downgrade::{Downgrades, Omit, send_with_downgrades};
use super::http::{self, str_at, u64_at};
use super::{ChatProvider, ChatRequest, ChatResponse, Completion, ResponseFormat};
use crate::error::LlmError;
use crate::secret::Secret;

/// api.anthropic.com's base URL (with the API version path).
pub const ANTHROPIC_DEFAULT_BASE: &str = "https://api.anthropic.com/v1";
/// The `anthropic-version` header value.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A client for the Anthropic Messages API.
#[derive(Debug)]
pub struct AnthropicProvider {
    endpoint: http::Endpoint,
    /// Fields this model refused (temperature on newer models, `output_config` on older ones).
    downgrades: Downgrades,
}

/// Words in a 400 that mean the model does not take structured outputs.
const SCHEMA_FIELDS: &[&str] = &["output_config", "output_format", "structured output"];

impl AnthropicProvider {
    /// A client posting to `{base}/messages` (`/v1` added to a base without a path).
    pub fn new(base: &str, model: &str, key: Option<Secret>) -> Result<Self, LlmError> {
        Ok(Self {
            endpoint: http::Endpoint::new(base, "/v1", |b| format!("{b}/messages"), model, key)?,
            downgrades: Downgrades::default(),
        })
    }

    /// The JSON body of a request, as first sent.
    pub fn body(&self, req: &ChatRequest) -> Value {
        self.body_omitting(req, Omit::default())
    }

    fn body_omitting(&self, req: &ChatRequest, omit: Omit) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| {
                let role = if m.role == Role::Assistant {
                    "assistant"
                } else {
                    "user"
                };
                json!({"role": role, "content": m.content})
            })
            .collect();
        let mut body = json!({
            "model": self.endpoint.model,
            "max_tokens": req.max_tokens,
            "messages": messages,
        });
        if let Some(system) = req.system_text() {
            body["system"] = json!(system);
        }
        if let Some(t) = req.temperature.filter(|_| !omit.temperature) {
            // Anthropic accepts 0..=1.
            body["temperature"] = json!(t.clamp(0.0, 1.0));
        }
        if let ResponseFormat::JsonSchema { schema, .. } = &req.format
            && !omit.schema
        {
            body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        }
        body
    }

    /// Reads a 2xx reply. Usage is read first, so a reply without content still reports the
    /// tokens it billed.
    pub fn parse_reply(v: &Value) -> Result<ChatResponse, LlmError> {
        let invalid = |message: &str, billed: TokenUsage| LlmError::InvalidResponse {
            provider: "anthropic",
            message: message.into(),
            billed,
        };
        let usage = v
            .get("usage")
            .ok_or_else(|| invalid("the reply has no usage block", TokenUsage::default()))?;
        let (Some(input), Some(output)) = (
            u64_at(usage, &["input_tokens"]),
            u64_at(usage, &["output_tokens"]),
        ) else {
            return Err(invalid(
                "usage lacks input_tokens or output_tokens",
                TokenUsage::default(),
            ));
        };
        // Cached prompt tokens are billed input too. Saturating: the counts are the server's
        // word, and a sum past u64::MAX (a broken or hostile proxy) must not panic or wrap
        // round to a small bill that slips under the token budget.
        let cached = u64_at(usage, &["cache_creation_input_tokens"])
            .unwrap_or(0)
            .saturating_add(u64_at(usage, &["cache_read_input_tokens"]).unwrap_or(0));
        let usage = TokenUsage {
            input: input.saturating_add(cached),
            output,
        };
        let blocks = v
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("no content array in the reply", usage))?;
        let text = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("");
        let finish_reason = str_at(v, &["stop_reason"]).map(str::to_string);
        let completion = match finish_reason.as_deref() {
            Some("max_tokens" | "model_context_window_exceeded") => Completion::Truncated,
            Some("refusal") => Completion::Withheld,
            _ => Completion::Complete,
        };
        Ok(ChatResponse {
            text,
            usage,
            finish_reason,
            completion,
            // Thinking is billed as output but not counted apart.
            reasoning_tokens: 0,
        })
    }
}

fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    (
        str_at(v, &["error", "type"]).map(str::to_string),
        str_at(v, &["error", "message"]).map(str::to_string),
    )
}

impl ChatProvider for AnthropicProvider {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.endpoint.model
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let who = ("anthropic", self.endpoint.model.as_str());
            send_with_downgrades(&self.downgrades, who, request, SCHEMA_FIELDS, |omit| {
                let body = self.body_omitting(request, omit);
                async move {
                    let shape = http::ErrorShape {
                        fields: error_fields,
                        retry_after: http::no_body_retry,
                        quota_exhausted: http::never_quota,
                    };
                    let prepare = |r: reqwest::RequestBuilder, key: Option<&str>| {
                        let r = r.header("anthropic-version", ANTHROPIC_VERSION);
                        match key {
                            Some(key) => r.header("x-api-key", key),
                            None => r,
                        }
                    };
                    let reply = self
                        .endpoint
                        .post_json("anthropic", &body, prepare, shape)
                        .await?;
                    Self::parse_reply(&reply)
                }
            })
            .await
        })
    }
}
