//! Anthropic Messages (`POST {base}/messages`, headers `x-api-key` and `anthropic-version`).
//! Request: `model`, `max_tokens` (required), `system`, `messages` (user/assistant turns),
//! `temperature`, and for schemas `output_config.format = {type: json_schema, schema}`.
//! Reply: `content` blocks (text blocks joined; thinking blocks skipped), `stop_reason`,
//! `usage.input_tokens` (+ cache creation/read input tokens) and `usage.output_tokens`.
//! Errors: `{"type": "error", "error": {"type", "message"}}`; 529 means overloaded.

use futures::future::BoxFuture;
use llamaduo::api::{Role, TokenUsage};
use serde_json::{Value, json};

use super::http::{self, str_at, u64_at};
use super::{ChatProvider, ChatRequest, ChatResponse, ResponseFormat};
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
}

impl AnthropicProvider {
    /// A client posting to `{base}/messages`.
    pub fn new(base: &str, model: &str, key: Option<Secret>) -> Result<Self, LlmError> {
        Ok(Self {
            endpoint: http::Endpoint::new(base, |b| format!("{b}/messages"), model, key)?,
        })
    }

    /// The JSON body of a request.
    pub fn body(&self, req: &ChatRequest) -> Value {
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
        if let Some(t) = req.temperature {
            // Anthropic accepts 0..=1.
            body["temperature"] = json!(t.clamp(0.0, 1.0));
        }
        if let ResponseFormat::JsonSchema { schema, .. } = &req.format {
            body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        }
        body
    }

    /// Reads a 2xx reply.
    pub fn parse_reply(v: &Value) -> Result<ChatResponse, LlmError> {
        let blocks = v.get("content").and_then(Value::as_array).ok_or_else(|| {
            LlmError::InvalidResponse {
                provider: "anthropic",
                message: "no content array in the reply".into(),
            }
        })?;
        let text = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("");
        let usage = v.get("usage").ok_or_else(|| LlmError::InvalidResponse {
            provider: "anthropic",
            message: "the reply has no usage block".into(),
        })?;
        let (Some(input), Some(output)) = (
            u64_at(usage, &["input_tokens"]),
            u64_at(usage, &["output_tokens"]),
        ) else {
            return Err(LlmError::InvalidResponse {
                provider: "anthropic",
                message: "usage lacks input_tokens or output_tokens".into(),
            });
        };
        // Cached prompt tokens are billed input too.
        let cached = u64_at(usage, &["cache_creation_input_tokens"]).unwrap_or(0)
            + u64_at(usage, &["cache_read_input_tokens"]).unwrap_or(0);
        Ok(ChatResponse {
            text,
            usage: TokenUsage {
                input: input + cached,
                output,
            },
            finish_reason: str_at(v, &["stop_reason"]).map(str::to_string),
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
            let shape = http::ErrorShape {
                fields: error_fields,
                retry_after: http::no_body_retry,
            };
            let reply = self
                .endpoint
                .post_json(
                    "anthropic",
                    &self.body(request),
                    |r, key| {
                        let r = r.header("anthropic-version", ANTHROPIC_VERSION);
                        match key {
                            Some(key) => r.header("x-api-key", key),
                            None => r,
                        }
                    },
                    shape,
                )
                .await?;
            Self::parse_reply(&reply)
        })
    }
}
