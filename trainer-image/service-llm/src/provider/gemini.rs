//! Google Gemini generateContent (`POST {base}/models/{model}:generateContent`, header
//! `x-goog-api-key`). Request: `contents` (`role` user/model, `parts[].text`),
//! `systemInstruction`, `generationConfig` (`temperature`, `maxOutputTokens`,
//! `responseMimeType: application/json`, `responseSchema` in Gemini's OpenAPI subset).
//! Reply: `candidates[0].content.parts[].text` (thought parts skipped), `finishReason`
//! (`STOP`; `MAX_TOKENS`: cut off; `SAFETY`, `RECITATION`, `PROHIBITED_CONTENT`, ...: withheld;
//! no candidate but `promptFeedback.blockReason`: the prompt was blocked),
//! `usageMetadata.promptTokenCount` / `candidatesTokenCount` (+ `thoughtsTokenCount`, billed as
//! output). Errors: `{"error": {"code", "message", "status", "details"}}`, where a
//! `google.rpc.RetryInfo` detail carries `retryDelay` ("37s") and a `google.rpc.QuotaFailure`
//! detail names the quotas that ran out (a per-day one cannot be waited out).

use std::time::Duration;

use futures::future::BoxFuture;
use llamaduo::api::{Role, TokenUsage};
use serde_json::{Map, Value, json};

use super::http::{self, str_at, u64_at};
use super::{ChatProvider, ChatRequest, ChatResponse, Completion, ResponseFormat};
use crate::error::LlmError;
use crate::secret::Secret;

/// generativelanguage.googleapis.com's base URL (with the API version path).
pub const GEMINI_DEFAULT_BASE: &str = "https://generativelanguage.googleapis.com/v1beta";

/// A client for the Gemini API.
#[derive(Debug)]
pub struct GeminiProvider {
    endpoint: http::Endpoint,
}

impl GeminiProvider {
    /// A client posting to `{base}/models/{model}:generateContent` (`/v1beta` added to a base
    /// without a path).
    pub fn new(base: &str, model: &str, key: Option<Secret>) -> Result<Self, LlmError> {
        let model_path = model.strip_prefix("models/").unwrap_or(model);
        let url_of = |b: &str| format!("{b}/models/{model_path}:generateContent");
        Ok(Self {
            endpoint: http::Endpoint::new(base, "/v1beta", url_of, model, key)?,
        })
    }

    /// The JSON body of a request.
    pub fn body(&self, req: &ChatRequest) -> Value {
        let contents: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| {
                let role = if m.role == Role::Assistant {
                    "model"
                } else {
                    "user"
                };
                json!({"role": role, "parts": [{"text": m.content}]})
            })
            .collect();
        let mut config = json!({"maxOutputTokens": req.max_tokens});
        if let Some(t) = req.temperature {
            config["temperature"] = json!(t);
        }
        match &req.format {
            ResponseFormat::Text => {}
            ResponseFormat::JsonObject => config["responseMimeType"] = json!("application/json"),
            ResponseFormat::JsonSchema { schema, .. } => {
                config["responseMimeType"] = json!("application/json");
                config["responseSchema"] = to_gemini_schema(schema);
            }
        }
        let mut body = json!({"contents": contents, "generationConfig": config});
        if let Some(system) = req.system_text() {
            body["systemInstruction"] = json!({"parts": [{"text": system}]});
        }
        body
    }

    /// Reads a 2xx reply. A prompt blocked by safety filters gives an empty, withheld reply
    /// with the block reason as finish reason.
    pub fn parse_reply(v: &Value) -> Result<ChatResponse, LlmError> {
        let usage = v
            .get("usageMetadata")
            .ok_or_else(|| LlmError::InvalidResponse {
                provider: "gemini",
                message: "the reply has no usageMetadata".into(),
                billed: TokenUsage::default(),
            })?;
        let input = u64_at(usage, &["promptTokenCount"]).unwrap_or(0);
        let reasoning_tokens = u64_at(usage, &["thoughtsTokenCount"]).unwrap_or(0);
        // Saturating, as for Anthropic's cached tokens: a sum past u64::MAX must not wrap.
        let output = u64_at(usage, &["candidatesTokenCount"])
            .unwrap_or(0)
            .saturating_add(reasoning_tokens);
        let usage = TokenUsage { input, output };
        let Some(candidate) = v.get("candidates").and_then(|c| c.get(0)) else {
            let reason = str_at(v, &["promptFeedback", "blockReason"]).ok_or_else(|| {
                LlmError::InvalidResponse {
                    provider: "gemini",
                    message: "no candidates and no promptFeedback.blockReason".into(),
                    billed: usage,
                }
            })?;
            return Ok(ChatResponse {
                text: String::new(),
                usage,
                finish_reason: Some(format!("blocked: {reason}")),
                completion: Completion::Withheld,
                reasoning_tokens,
            });
        };
        let text = candidate
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("")
            })
            .unwrap_or_default();
        let finish_reason = str_at(candidate, &["finishReason"]).map(str::to_string);
        let completion = match finish_reason.as_deref() {
            None | Some("STOP" | "FINISH_REASON_UNSPECIFIED") => Completion::Complete,
            Some("MAX_TOKENS") => Completion::Truncated,
            // SAFETY, RECITATION, LANGUAGE, BLOCKLIST, PROHIBITED_CONTENT, SPII, OTHER, ...
            Some(_) => Completion::Withheld,
        };
        Ok(ChatResponse {
            text,
            usage,
            finish_reason,
            completion,
            reasoning_tokens,
        })
    }
}

/// Converts the JSON Schema subset we use into Gemini's `responseSchema` (an OpenAPI 3.0
/// Schema subset): upper-case `type`, `propertyOrdering` from the property order, and no
/// `additionalProperties` (which `responseSchema` does not accept).
pub fn to_gemini_schema(schema: &Value) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" => {
                if let Some(t) = v.as_str() {
                    out.insert("type".into(), json!(t.to_ascii_uppercase()));
                }
            }
            "properties" => {
                if let Some(props) = v.as_object() {
                    let converted: Map<String, Value> = props
                        .iter()
                        .map(|(name, s)| (name.clone(), to_gemini_schema(s)))
                        .collect();
                    out.insert(
                        "propertyOrdering".into(),
                        json!(props.keys().collect::<Vec<_>>()),
                    );
                    out.insert("properties".into(), Value::Object(converted));
                }
            }
            "items" => {
                out.insert("items".into(), to_gemini_schema(v));
            }
            "required" | "description" | "enum" | "minItems" | "maxItems" | "minimum"
            | "maximum" | "nullable" | "format" => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    (
        str_at(v, &["error", "status"]).map(str::to_string),
        str_at(v, &["error", "message"]).map(str::to_string),
    )
}

/// `retryDelay` of a `google.rpc.RetryInfo` detail (`"37s"`, `"1.5s"`).
fn retry_info(body: &[u8]) -> Option<Duration> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let details = v.get("error")?.get("details")?.as_array()?;
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?;
        http::seconds(delay.strip_suffix('s')?.parse().ok()?)
    })
}

/// A 429 whose `google.rpc.QuotaFailure` names only per-day quotas
/// (`GenerateRequestsPerDayPerProjectPerModel-FreeTier`): nothing but tomorrow fixes it.
fn daily_quota_exhausted(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let quota_ids: Vec<&str> = v
        .pointer("/error/details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("violations")?.as_array())
        .flatten()
        .filter_map(|violation| violation.get("quotaId")?.as_str())
        .collect();
    !quota_ids.is_empty() && quota_ids.iter().all(|id| id.contains("PerDay"))
}

impl ChatProvider for GeminiProvider {
    fn name(&self) -> &'static str {
        "gemini"
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
                retry_after: retry_info,
                quota_exhausted: daily_quota_exhausted,
            };
            let prepare = |r: reqwest::RequestBuilder, key: Option<&str>| match key {
                Some(key) => r.header("x-goog-api-key", key),
                None => r,
            };
            let reply = self
                .endpoint
                .post_json("gemini", &self.body(request), prepare, shape)
                .await?;
            Self::parse_reply(&reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_conversion_uppercases_and_orders() {
        let s = json!({
            "type": "object",
            "properties": {"b": {"type": "string"}, "a": {"type": "array", "items": {"type": "number"}}},
            "required": ["b", "a"],
            "additionalProperties": false
        });
        let g = to_gemini_schema(&s);
        assert_eq!(g["type"], "OBJECT");
        assert_eq!(g["properties"]["a"]["items"]["type"], "NUMBER");
        assert!(g.get("additionalProperties").is_none());
        assert_eq!(g["required"], json!(["b", "a"]));
        assert_eq!(g["propertyOrdering"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn retry_info_is_read() {
        let body = br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
        assert_eq!(retry_info(body), Some(Duration::from_secs(37)));
        let huge = br#"{"error":{"details":[{"retryDelay":"1e300s"}]}}"#;
        assert_eq!(retry_info(huge), Some(Duration::MAX));
    }

    #[test]
    fn only_per_day_quotas_are_exhausted() {
        let body = |ids: &[&str]| {
            let violations: Vec<Value> = ids.iter().map(|id| json!({"quotaId": id})).collect();
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations}
            ]}})
            .to_string()
        };
        assert!(daily_quota_exhausted(
            body(&["GenerateRequestsPerDayPerProjectPerModel-FreeTier"]).as_bytes()
        ));
        assert!(!daily_quota_exhausted(
            body(&[
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
            ])
            .as_bytes()
        ));
        assert!(!daily_quota_exhausted(body(&[]).as_bytes()));
        assert!(!daily_quota_exhausted(b"not json"));
    }
}
