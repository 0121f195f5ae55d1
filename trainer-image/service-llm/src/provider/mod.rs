//! One interface to every service LLM: [`ChatProvider`] turns a [`ChatRequest`] into a
//! [`ChatResponse`] (text plus the provider's own token counts). The implementations speak the
//! providers' documented wire formats: OpenAI chat completions (which also serves
//! OpenAI-compatible servers and the simulated teacher), Anthropic Messages and Gemini
//! generateContent. Flow control (limits, retries, budget) lives in [`crate::flow`], above this.

mod anthropic;
mod downgrade;
mod gemini;
mod http;
mod openai;

use std::sync::Arc;

use futures::future::BoxFuture;
use llamaduo::api::{Message, ProviderKind, ProviderSpec, TokenUsage};
use serde_json::Value;

use crate::error::LlmError;
use crate::secret::Secret;

pub use anthropic::{ANTHROPIC_DEFAULT_BASE, ANTHROPIC_VERSION, AnthropicProvider};
pub use gemini::{GEMINI_DEFAULT_BASE, GeminiProvider, to_gemini_schema};
pub use http::{parse_retry_after, rate_limit_reset};
pub use openai::{OPENAI_DEFAULT_BASE, OpenAiProvider};

/// What shape the reply text must have.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object (OpenAI `json_object`; others: `application/json` or prompt only).
    JsonObject,
    /// JSON matching a schema, enforced where the provider supports it.
    JsonSchema {
        /// A short name for the schema (OpenAI requires one: `[a-zA-Z0-9_-]{1,64}`).
        name: String,
        /// The JSON Schema. Keep it to the subset every provider enforces: objects with
        /// `properties`, `required` and `additionalProperties: false`, arrays with `items`,
        /// strings and numbers. Bounds are checked by the caller.
        schema: Value,
    },
}

/// One chat request, provider-neutral.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// System prompt.
    pub system: Option<String>,
    /// The conversation (user/assistant turns; system messages are merged into `system`).
    pub messages: Vec<Message>,
    /// Sampling temperature; `None` leaves the provider's default.
    pub temperature: Option<f64>,
    /// Most output tokens.
    pub max_tokens: u32,
    /// Shape of the reply.
    pub format: ResponseFormat,
}

impl ChatRequest {
    /// A single user turn with an optional system prompt.
    pub fn user(system: Option<String>, prompt: impl Into<String>, max_tokens: u32) -> Self {
        Self {
            system,
            messages: vec![Message {
                role: llamaduo::api::Role::User,
                content: prompt.into(),
            }],
            temperature: None,
            max_tokens,
            format: ResponseFormat::Text,
        }
    }

    /// The system prompt joined with any system messages in `messages`.
    pub(crate) fn system_text(&self) -> Option<String> {
        let mut parts: Vec<&str> = self.system.iter().map(String::as_str).collect();
        parts.extend(
            self.messages
                .iter()
                .filter(|m| m.role == llamaduo::api::Role::System)
                .map(|m| m.content.as_str()),
        );
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// Bytes of text the request carries (prompt size estimate input).
    pub fn prompt_bytes(&self) -> usize {
        self.system.as_ref().map_or(0, String::len)
            + self.messages.iter().map(|m| m.content.len()).sum::<usize>()
            + match &self.format {
                ResponseFormat::JsonSchema { schema, .. } => schema.to_string().len(),
                _ => 0,
            }
    }
}

/// How a reply ended, the same for every provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The model finished its answer (end of turn, a stop sequence).
    Complete,
    /// Cut off at the output token limit (OpenAI `length`, Anthropic `max_tokens`, Gemini
    /// `MAX_TOKENS`): the text is a prefix of an answer.
    Truncated,
    /// The provider withheld or stopped the answer: a refusal, a content or safety filter, a
    /// blocked prompt, recitation (OpenAI `content_filter` or `message.refusal`, Anthropic
    /// `refusal`, Gemini `SAFETY`, `RECITATION`, `blockReason`, ...).
    Withheld,
}

/// A provider's reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    /// The reply text (text parts joined; reasoning parts left out).
    pub text: String,
    /// Tokens billed for this call, from the provider's usage fields.
    pub usage: TokenUsage,
    /// Why generation stopped, in the provider's words (`stop`, `max_tokens`, `STOP`, ...).
    pub finish_reason: Option<String>,
    /// How the reply ended, read from the finish reason.
    pub completion: Completion,
    /// Output tokens spent on hidden reasoning (OpenAI `reasoning_tokens`, Gemini
    /// `thoughtsTokenCount`); 0 when none or not reported. Part of `usage.output`.
    pub reasoning_tokens: u64,
}

impl ChatResponse {
    /// Why the reply is not a whole answer, as one line a user can act on (`None` when it
    /// is whole). `max_tokens` is the request's output limit; `field` names the setting that
    /// raises it (e.g. `judge.generation.maxTokens`).
    pub fn incomplete_reason(&self, max_tokens: u32, field: &str) -> Option<String> {
        let finish = self.finish_reason.as_deref().unwrap_or("none");
        match self.completion {
            Completion::Complete => None,
            Completion::Truncated => {
                let reasoning = if self.reasoning_tokens > 0 {
                    format!(
                        ", {} of them spent on hidden reasoning",
                        self.reasoning_tokens
                    )
                } else {
                    String::new()
                };
                Some(format!(
                    "the reply was cut off at the output limit of {max_tokens} tokens (finish reason {finish}{reasoning}); raise {field}"
                ))
            }
            Completion::Withheld => Some(format!(
                "the provider withheld the reply (finish reason {finish}): a refusal or a safety filter"
            )),
        }
    }
}

/// A service LLM API.
pub trait ChatProvider: Send + Sync + std::fmt::Debug {
    /// Provider name for logs and errors (`openai`, `anthropic`, `gemini`, ...).
    fn name(&self) -> &'static str;
    /// The model requests go to.
    fn model(&self) -> &str;
    /// Sends one request; no retries (see [`crate::flow::LlmClient`]).
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;
}

/// Builds the provider a [`ProviderSpec`] names. `api_key` comes from the environment
/// (`LLAMADUO_TEACHER_API_KEY` / `LLAMADUO_JUDGE_API_KEY`); OpenAI, Anthropic and Gemini refuse
/// to start without one.
pub fn provider_for(
    spec: &ProviderSpec,
    api_key: Option<Secret>,
) -> Result<Arc<dyn ChatProvider>, LlmError> {
    if spec.provider.needs_api_key() && api_key.is_none() {
        return Err(LlmError::Config(format!(
            "provider {} needs an API key: set LLAMADUO_TEACHER_API_KEY or LLAMADUO_JUDGE_API_KEY (filled from apiKeySecretRef)",
            spec.provider
        )));
    }
    let base = spec.base_url.as_deref();
    Ok(match spec.provider {
        ProviderKind::Openai => Arc::new(OpenAiProvider::new(
            "openai",
            base.unwrap_or(OPENAI_DEFAULT_BASE),
            &spec.model,
            api_key,
            true,
        )?),
        ProviderKind::OpenaiCompatible | ProviderKind::Simulated => {
            let name = if spec.provider == ProviderKind::Simulated {
                "simulated"
            } else {
                "openaiCompatible"
            };
            let base = base.ok_or_else(|| {
                LlmError::Config(format!(
                    "provider {name} needs baseUrl (for example http://127.0.0.1:8088/v1)"
                ))
            })?;
            Arc::new(OpenAiProvider::new(
                name,
                base,
                &spec.model,
                api_key,
                false,
            )?)
        }
        ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(
            base.unwrap_or(ANTHROPIC_DEFAULT_BASE),
            &spec.model,
            api_key,
        )?),
        ProviderKind::Gemini => Arc::new(GeminiProvider::new(
            base.unwrap_or(GEMINI_DEFAULT_BASE),
            &spec.model,
            api_key,
        )?),
    })
}
