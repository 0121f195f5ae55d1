//! Request fields a model turns down, learned from its 400 replies. Reasoning models refuse a
//! `temperature` (OpenAI's o-series and gpt-5 accept only the default; newer Claude models call
//! it deprecated), and older models refuse structured outputs (Anthropic's `output_config`
//! before the 4.5 models, `json_schema` on some OpenAI-compatible servers). A list of model
//! names would go stale, so the provider sends what the stage asks for and, when the API answers
//! 400 naming one of those fields, drops that field for this client from then on (one warning)
//! and sends the request again at once. Replies are still checked by the caller: without a
//! schema the JSON is extracted from the text, as for providers that never enforce one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{ChatRequest, ChatResponse, ResponseFormat};
use crate::error::LlmError;

/// Which optional request fields to leave out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Omit {
    /// Leave out the sampling temperature (the provider's default applies).
    pub temperature: bool,
    /// Send a JSON-schema request as plain JSON mode (or none) instead.
    pub schema: bool,
}

/// The fields this client has learned to leave out.
#[derive(Debug, Default)]
pub(crate) struct Downgrades {
    temperature: AtomicBool,
    schema: AtomicBool,
}

impl Downgrades {
    /// What to leave out now.
    pub fn omit(&self) -> Omit {
        Omit {
            temperature: self.temperature.load(Ordering::Relaxed),
            schema: self.schema.load(Ordering::Relaxed),
        }
    }

    /// Learns from the error of `request` sent with `sent`: true when the 400 names a field that
    /// was sent and can be dropped, so the request should go again without it. `schema_fields`
    /// are the provider's names for structured output (e.g. `response_format`).
    fn learn(
        &self,
        who: (&str, &str),
        request: &ChatRequest,
        sent: Omit,
        err: &LlmError,
        schema_fields: &[&str],
    ) -> bool {
        let LlmError::Status {
            status: 400,
            message,
            ..
        } = err
        else {
            return false;
        };
        let message_lower = message.to_ascii_lowercase();
        let (flag, field) = if !sent.temperature
            && request.temperature.is_some()
            && message_lower.contains("temperature")
        {
            (&self.temperature, "temperature")
        } else if !sent.schema
            && matches!(request.format, ResponseFormat::JsonSchema { .. })
            && schema_fields.iter().any(|f| message_lower.contains(f))
        {
            (&self.schema, "the JSON schema (structured output)")
        } else {
            return false;
        };
        if !flag.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                provider = who.0,
                model = who.1,
                error = %message,
                "the model refuses {field}: sending requests without it from now on"
            );
        }
        true
    }
}

/// Sends `request` through `send` (which builds the body leaving out what it is told), dropping
/// a refused field and sending again as [`Downgrades`] describes. Ends after at most one resend
/// per field.
pub(crate) async fn send_with_downgrades<F, Fut>(
    downgrades: &Downgrades,
    who: (&str, &str),
    request: &ChatRequest,
    schema_fields: &[&str],
    send: F,
) -> Result<ChatResponse, LlmError>
where
    F: Fn(Omit) -> Fut,
    Fut: Future<Output = Result<ChatResponse, LlmError>>,
{
    loop {
        let omit = downgrades.omit();
        match send(omit).await {
            Err(e) if downgrades.learn(who, request, omit, &e, schema_fields) => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_request(message: &str) -> LlmError {
        LlmError::Status {
            provider: "openai",
            status: 400,
            kind: Some("unsupported_value".into()),
            message: message.into(),
            retry_after: None,
        }
    }

    fn schema_request() -> ChatRequest {
        let mut r = ChatRequest::user(None, "hi", 10);
        r.temperature = Some(0.2);
        r.format = ResponseFormat::JsonSchema {
            name: "x".into(),
            schema: serde_json::json!({"type": "object"}),
        };
        r
    }

    #[test]
    fn learns_only_fields_that_were_sent_and_named() {
        let d = Downgrades::default();
        let req = schema_request();
        let who = ("openai", "o3");
        let sent = d.omit();
        // Another 400 teaches nothing.
        assert!(!d.learn(who, &req, sent, &bad_request("messages: required"), &[]));
        // A 429 naming temperature is not a refusal.
        let throttled = LlmError::Status {
            provider: "openai",
            status: 429,
            kind: None,
            message: "temperature".into(),
            retry_after: None,
        };
        assert!(!d.learn(who, &req, sent, &throttled, &[]));
        assert_eq!(d.omit(), Omit::default());

        let refusal = bad_request(
            "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported.",
        );
        assert!(d.learn(who, &req, sent, &refusal, &["response_format"]));
        assert!(d.omit().temperature && !d.omit().schema);
        // Sent without it, the same words cannot teach it again (no endless resends).
        assert!(!d.learn(who, &req, d.omit(), &refusal, &["response_format"]));

        let schema = bad_request(
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
        );
        assert!(d.learn(who, &req, d.omit(), &schema, &["response_format"]));
        assert!(d.omit().schema);
        assert!(!d.learn(who, &req, d.omit(), &schema, &["response_format"]));
    }

    #[test]
    fn a_request_without_the_field_learns_nothing() {
        let d = Downgrades::default();
        let req = ChatRequest::user(None, "hi", 10);
        let refusal = bad_request("temperature is deprecated for this model");
        assert!(!d.learn(("anthropic", "m"), &req, d.omit(), &refusal, &[]));
        assert_eq!(d.omit(), Omit::default());
    }
}
