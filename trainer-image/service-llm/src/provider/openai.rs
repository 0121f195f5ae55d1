//! OpenAI chat completions (`POST {base}/chat/completions`), which vLLM, Ollama, llama.cpp
//! server, TGI and the simulated teacher speak too. Request: `model`, `messages`,
//! `temperature`, `max_completion_tokens` (OpenAI) or `max_tokens` (compatible servers, which
//! mostly know only that one), `response_format` (`json_object` or `json_schema` with a strict
//! schema). Reply: `choices[0].message.content` (or `message.refusal`), `finish_reason`
//! (`length`: cut off; `content_filter`: withheld), `usage.prompt_tokens` /
//! `usage.completion_tokens` (reasoning tokens included, counted in
//! `completion_tokens_details.reasoning_tokens`). Errors: `{"error": {"message", "type",
//! "param", "code"}}`; a 429 with code `insufficient_quota` means the account is out of credit.

use futures::future::BoxFuture;
use llamaduo::api::{Role, TokenUsage};
use serde_json::{Value, json};

use super::downgrade::{Downgrades, Omit, send_with_downgrades};
use super::http::{self, str_at, u64_at};
use super::{ChatProvider, ChatRequest, ChatResponse, Completion, ResponseFormat};
use crate::error::LlmError;
use crate::secret::Secret;

/// api.openai.com's base URL.
pub const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";

/// A client for OpenAI chat completions or a server that speaks it.
#[derive(Debug)]
pub struct OpenAiProvider {
    name: &'static str,
    endpoint: http::Endpoint,
    /// OpenAI proper: `max_completion_tokens` and strict schemas.
    official: bool,
    /// Fields this model refused (temperature on reasoning models, `json_schema`).
    downgrades: Downgrades,
}

/// Words in a 400 that mean the model does not take our structured-output request.
const SCHEMA_FIELDS: &[&str] = &["response_format", "json_schema"];

impl OpenAiProvider {
    /// A client posting to `{base}/chat/completions` (`base` ends with the API version, e.g.
    /// `https://api.openai.com/v1` or `http://vllm:8000/v1`).
    pub fn new(
        name: &'static str,
        base: &str,
        model: &str,
        key: Option<Secret>,
        official: bool,
    ) -> Result<Self, LlmError> {
        Ok(Self {
            name,
            endpoint: http::Endpoint::new(
                base,
                "/v1",
                |b| format!("{b}/chat/completions"),
                model,
                key,
            )?,
            official,
            downgrades: Downgrades::default(),
        })
    }

    /// The JSON body of a request, as first sent.
    pub fn body(&self, req: &ChatRequest) -> Value {
        self.body_omitting(req, Omit::default())
    }

    fn body_omitting(&self, req: &ChatRequest, omit: Omit) -> Value {
        let mut messages = Vec::new();
        if let Some(system) = req.system_text() {
            messages.push(json!({"role": "system", "content": system}));
        }
        for m in req.messages.iter().filter(|m| m.role != Role::System) {
            let role = if m.role == Role::Assistant {
                "assistant"
            } else {
                "user"
            };
            messages.push(json!({"role": role, "content": m.content}));
        }
        let mut body = json!({"model": self.endpoint.model, "messages": messages});
        let tokens_field = if self.official {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[tokens_field] = json!(req.max_tokens);
        if let Some(t) = req.temperature.filter(|_| !omit.temperature) {
            body["temperature"] = json!(t);
        }
        match &req.format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => body["response_format"] = json!({"type": "json_object"}),
            ResponseFormat::JsonSchema { .. } if omit.schema => {
                body["response_format"] = json!({"type": "json_object"});
            }
            ResponseFormat::JsonSchema { name, schema } => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": name, "strict": true, "schema": schema}
                });
            }
        }
        body
    }

    /// Reads a 2xx reply. Usage is read first, so a reply without choices still reports the
    /// tokens it billed.
    pub fn parse_reply(name: &'static str, v: &Value) -> Result<ChatResponse, LlmError> {
        let invalid = |message: &str, billed: TokenUsage| LlmError::InvalidResponse {
            provider: name,
            message: message.into(),
            billed,
        };
        let usage = v.get("usage").ok_or_else(|| {
            invalid(
                "the reply has no usage block, so its tokens cannot be counted",
                TokenUsage::default(),
            )
        })?;
        let (Some(input), Some(output)) = (
            u64_at(usage, &["prompt_tokens"]),
            u64_at(usage, &["completion_tokens"]),
        ) else {
            return Err(invalid(
                "usage lacks prompt_tokens or completion_tokens",
                TokenUsage::default(),
            ));
        };
        let usage_tokens = TokenUsage { input, output };
        let reasoning_tokens =
            u64_at(usage, &["completion_tokens_details", "reasoning_tokens"]).unwrap_or(0);
        let choice = v
            .get("choices")
            .and_then(|c| c.get(0))
            .ok_or_else(|| invalid("no choices[0] in the reply", usage_tokens))?;
        let message = choice.get("message");
        let text = match message.and_then(|m| m.get("content")) {
            Some(Value::String(s)) => s.clone(),
            // Content parts (some compatible servers): join the text parts.
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        let refused = message
            .and_then(|m| m.get("refusal"))
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty());
        let finish_reason = str_at(choice, &["finish_reason"]).map(str::to_string);
        let completion = match finish_reason.as_deref() {
            _ if refused => Completion::Withheld,
            Some("length") => Completion::Truncated,
            Some("content_filter") => Completion::Withheld,
            _ => Completion::Complete,
        };
        Ok(ChatResponse {
            text,
            usage: usage_tokens,
            finish_reason: if refused {
                Some("refusal".into())
            } else {
                finish_reason
            },
            completion,
            reasoning_tokens,
        })
    }
}

/// `(error.type or error.code, error.message)` of an OpenAI error body.
fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    let err = v.get("error");
    let kind = err
        .and_then(|e| {
            e.get("code")
                .and_then(Value::as_str)
                .or_else(|| e.get("type")?.as_str())
        })
        .map(str::to_string);
    let message = err
        .and_then(|e| e.get("message").and_then(Value::as_str))
        .or_else(|| err.and_then(Value::as_str))
        .map(str::to_string);
    (kind, message)
}

/// A 429 whose `error.code` is `insufficient_quota`: the account is out of credit, and no
/// wait fixes that.
fn quota_exhausted(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| str_at(&v, &["error", "code"]) == Some("insufficient_quota"))
}

impl ChatProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    fn model(&self) -> &str {
        &self.endpoint.model
    }

    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let who = (self.name, self.endpoint.model.as_str());
            send_with_downgrades(&self.downgrades, who, request, SCHEMA_FIELDS, |omit| {
                let body = self.body_omitting(request, omit);
                async move {
                    let shape = http::ErrorShape {
                        fields: error_fields,
                        retry_after: http::no_body_retry,
                        quota_exhausted,
                    };
                    let prepare = |r: reqwest::RequestBuilder, key: Option<&str>| match key {
                        Some(key) => r.bearer_auth(key),
                        None => r,
                    };
                    let reply = self
                        .endpoint
                        .post_json(self.name, &body, prepare, shape)
                        .await?;
                    Self::parse_reply(self.name, &reply)
                }
            })
            .await
        })
    }
}
