//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their validation into
//! what the generation worker needs. Unknown fields are ignored, as OpenAI-compatible servers
//! do; fields we cannot honour (n > 1, echo, token-id prompts, non-text content, tools and
//! function calling, JSON or schema response formats, logprobs, best_of) are refused with a
//! 400 naming the field, never ignored: a client must not mistake a plain answer for a model
//! that chose not to call its tool or to follow its schema.

use llamaduo::api::dataset::{Message, Role};
use serde::Deserialize;

use super::error::ApiError;

/// OpenAI allows at most this many stop sequences.
const MAX_STOPS: usize = 4;

/// A `stop` field: one string or a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// A message's `content`: text, or a list of content parts.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum ContentField {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Deserialize, Debug)]
pub struct ContentPart {
    /// `text` is the only supported type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One message of a chat request.
#[derive(Deserialize, Debug)]
pub struct ChatMessageIn {
    /// system, developer (treated as system), user or assistant.
    pub role: String,
    /// The message text.
    #[serde(default)]
    pub content: Option<ContentField>,
}

/// `stream_options`.
#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Deserialize, Debug, Default)]
pub struct Sampling {
    /// Model name; must be the served one when given.
    #[serde(default)]
    pub model: Option<String>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (chat).
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// 0 to 2; 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus mass in (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Number of choices; only 1 is supported.
    #[serde(default)]
    pub n: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<StopField>,
    /// Seed for sampling.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Tool definitions (refused when non-empty).
    #[serde(default)]
    pub tools: Option<serde_json::Value>,
    /// Tool choice (refused unless `none`).
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    /// Legacy function definitions (refused when non-empty).
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    /// Legacy function choice (refused unless `none`).
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
    /// Response format (only `{"type": "text"}` is supported).
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
    /// Log probabilities (chat: a bool, completions: a count; refused when asked for).
    #[serde(default)]
    pub logprobs: Option<serde_json::Value>,
    /// Top log probabilities per token (refused when above 0).
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Value>,
    /// Server-side best-of sampling (completions; refused above 1).
    #[serde(default)]
    pub best_of: Option<serde_json::Value>,
}

/// A chat completion request.
#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A completion request's `prompt`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    One(String),
    /// A list of prompts (only one is supported).
    Many(Vec<serde_json::Value>),
}

/// A (legacy) completion request.
#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    /// The prompt text.
    pub prompt: PromptField,
    /// Echo the prompt (unsupported).
    #[serde(default)]
    pub echo: bool,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// The input of a generation.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    /// Rendered with the model's chat template.
    Chat(Vec<Message>),
    /// Tokenized as is.
    Text(String),
}

/// A validated request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenSpec {
    /// What to continue.
    pub prompt: PromptInput,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// The field the client set `max_tokens` with; `None` when it left it out (then the
    /// answer may use what the context leaves, up to `max_tokens`).
    pub max_tokens_field: Option<&'static str>,
    /// 0 is greedy.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Sampling seed, if the client fixed one.
    pub seed: Option<u64>,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage-only last chunk.
    pub include_usage: bool,
}

/// Server limits that validation applies.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The served model name.
    pub model_name: String,
    /// --max-tokens: the cap and the default of max_tokens.
    pub max_tokens: usize,
}

/// Parses a JSON body, turning serde's complaint into a 400.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            None,
            format!("the request body is not a valid request: {e}"),
        )
    })
}

/// Validates a chat request.
pub fn validate_chat(req: ChatRequest, limits: &Limits) -> Result<GenSpec, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    Some(&format!("messages[{i}].role")),
                    format!(
                        "messages[{i}].role is {other:?}; use one of system, developer, user, assistant (tools are not supported)"
                    ),
                ));
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(ContentField::Text(t)) => t,
            Some(ContentField::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        _ => {
                            return Err(ApiError::invalid(
                                Some(&format!("messages[{i}].content[{j}]")),
                                format!(
                                    "messages[{i}].content[{j}] is a {:?} part; only text parts with a `text` field are supported",
                                    p.kind
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(Message { role, content });
    }
    let max = req
        .sampling
        .max_completion_tokens
        .map(|v| ("max_completion_tokens", v))
        .or(req.sampling.max_tokens.map(|v| ("max_tokens", v)));
    validate_sampling(req.sampling, max, PromptInput::Chat(messages), limits)
}

/// Validates a completion request.
pub fn validate_completion(req: CompletionRequest, limits: &Limits) -> Result<GenSpec, ApiError> {
    if req.echo {
        return Err(ApiError::invalid(
            Some("echo"),
            "echo is not supported; leave it false",
        ));
    }
    let prompt = match req.prompt {
        PromptField::One(s) => s,
        PromptField::Many(v) => match v.as_slice() {
            [serde_json::Value::String(s)] => s.clone(),
            _ => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    "prompt must be a string or a list of exactly one string (token-id prompts and several prompts per request are not supported)",
                ));
            }
        },
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "prompt is empty"));
    }
    let max = req.sampling.max_tokens.map(|v| ("max_tokens", v));
    validate_sampling(req.sampling, max, PromptInput::Text(prompt), limits)
}

fn validate_sampling(
    s: Sampling,
    max: Option<(&'static str, i64)>,
    prompt: PromptInput,
    limits: &Limits,
) -> Result<GenSpec, ApiError> {
    if let Some(name) = &s.model
        && name != &limits.model_name
    {
        return Err(ApiError::model_not_found(name, &limits.model_name));
    }
    if let Some(n) = s.n
        && n != 1
    {
        return Err(ApiError::invalid(
            Some("n"),
            format!(
                "n is {n}; this server returns one choice per request: send n = 1 (or leave it out) and make several requests"
            ),
        ));
    }
    refuse_unsupported(&s)?;
    let max_tokens = match max {
        None => limits.max_tokens,
        Some((field, v)) if v < 1 => {
            return Err(ApiError::invalid(
                Some(field),
                format!("{field} is {v}; it must be at least 1"),
            ));
        }
        Some((field, v)) if v as u64 > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(
                Some(field),
                format!(
                    "{field} is {v}, over this server's limit of {} (--max-tokens); ask for at most {}",
                    limits.max_tokens, limits.max_tokens
                ),
            )
            .with_code("max_tokens_exceeded"));
        }
        Some((_, v)) => v as usize,
    };
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature is {temperature}; it must be between 0 and 2"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            Some("top_p"),
            format!("top_p is {top_p}; it must be in (0, 1]"),
        ));
    }
    let stop = match s.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            Some("stop"),
            format!(
                "stop holds {} strings; at most {MAX_STOPS} are allowed",
                stop.len()
            ),
        ));
    }
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    Ok(GenSpec {
        prompt,
        max_tokens,
        max_tokens_field: max.map(|(field, _)| field),
        temperature,
        top_p,
        stop,
        seed: s.seed,
        stream: s.stream,
        include_usage: s.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// Whether a JSON value asks for something: not null, false, 0, "", [] or {}.
fn asks(v: &Option<serde_json::Value>) -> bool {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

/// 400 for what this server cannot do, naming the field.
fn refuse_unsupported(s: &Sampling) -> Result<(), ApiError> {
    let none_or_auto = |v: &Option<serde_json::Value>| {
        !asks(v) || matches!(v.as_ref().and_then(|v| v.as_str()), Some("none" | "auto"))
    };
    let refusals: [(&str, bool, &str); 7] = [
        (
            "tools",
            asks(&s.tools),
            "tools (function calling) are not supported by this server; send the request without tools",
        ),
        (
            "functions",
            asks(&s.functions),
            "functions (function calling) are not supported by this server; send the request without functions",
        ),
        (
            "tool_choice",
            !none_or_auto(&s.tool_choice),
            "tool_choice asks for a tool call, which this server cannot make; leave tool_choice out",
        ),
        (
            "function_call",
            !none_or_auto(&s.function_call),
            "function_call asks for a function call, which this server cannot make; leave function_call out",
        ),
        (
            "logprobs",
            asks(&s.logprobs),
            "logprobs are not supported by this server; leave logprobs out",
        ),
        (
            "top_logprobs",
            asks(&s.top_logprobs),
            "top_logprobs are not supported by this server; leave top_logprobs out",
        ),
        (
            "best_of",
            asks(&s.best_of) && s.best_of.as_ref().and_then(|v| v.as_f64()) != Some(1.0),
            "best_of above 1 is not supported; leave best_of out and make several requests",
        ),
    ];
    if let Some((field, _, message)) = refusals.into_iter().find(|(_, refused, _)| *refused) {
        return Err(ApiError::invalid(Some(field), message));
    }
    if let Some(format) = &s.response_format
        && !format.is_null()
    {
        let kind = format.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if kind != "text" {
            return Err(ApiError::invalid(
                Some("response_format"),
                format!(
                    "response_format type {kind:?} is not supported (this server cannot constrain output to JSON or a schema); use {{\"type\": \"text\"}} or leave it out and ask for JSON in the prompt"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            model_name: "tiny".into(),
            max_tokens: 64,
        }
    }

    fn chat(v: serde_json::Value) -> Result<GenSpec, ApiError> {
        let req: ChatRequest = parse_body(v.to_string().as_bytes())?;
        validate_chat(req, &limits())
    }

    fn param(r: Result<GenSpec, ApiError>) -> (u16, Option<String>) {
        let e = r.expect_err("refused");
        (e.status.as_u16(), e.param)
    }

    #[test]
    fn a_valid_chat_request() {
        let g = chat(json!({"model": "tiny", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
            "max_tokens": 8, "temperature": 0, "stop": "\n", "stream": true,
            "stream_options": {"include_usage": true}, "presence_penalty": 0.5}))
        .expect("valid");
        assert_eq!(
            g.prompt,
            PromptInput::Chat(vec![
                Message {
                    role: Role::System,
                    content: "be brief".into()
                },
                Message {
                    role: Role::User,
                    content: "hi there".into()
                },
            ])
        );
        assert_eq!((g.max_tokens, g.temperature, g.top_p), (8, 0.0, 1.0));
        assert_eq!(g.stop, vec!["\n".to_string()]);
        assert!(g.stream && g.include_usage);
        // Defaults: the server's max tokens, temperature 1.
        let g = chat(json!({"messages": [{"role": "user", "content": "x"}]})).expect("valid");
        assert_eq!((g.max_tokens, g.temperature), (64, 1.0));
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let u = json!([{"role": "user", "content": "x"}]);
        assert_eq!(
            param(chat(json!({"messages": []}))),
            (400, Some("messages".into()))
        );
        assert_eq!(param(chat(json!({"model": "tiny"}))), (400, None));
        assert_eq!(
            param(chat(
                json!({"messages": [{"role": "tool", "content": "x"}]})
            )),
            (400, Some("messages[0].role".into()))
        );
        assert_eq!(
            param(chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
            )),
            (400, Some("messages[0].content[0]".into()))
        );
        assert_eq!(
            param(chat(json!({"model": "gpt-4o", "messages": u}))),
            (404, Some("model".into()))
        );
        assert_eq!(
            param(chat(json!({"messages": u, "n": 2}))),
            (400, Some("n".into()))
        );
        assert_eq!(
            param(chat(json!({"messages": u, "max_tokens": 65}))),
            (400, Some("max_tokens".into()))
        );
        assert_eq!(
            param(chat(json!({"messages": u, "max_completion_tokens": 0}))),
            (400, Some("max_completion_tokens".into()))
        );
        assert_eq!(
            param(chat(json!({"messages": u, "temperature": 2.5}))),
            (400, Some("temperature".into()))
        );
        assert_eq!(
            param(chat(json!({"messages": u, "top_p": 0}))),
            (400, Some("top_p".into()))
        );
        assert_eq!(
            param(chat(
                json!({"messages": u, "stop": ["a", "b", "c", "d", "e"]})
            )),
            (400, Some("stop".into()))
        );
        assert!(parse_body::<ChatRequest>(b"{not json").is_err());
        for (field, value) in [
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            ("functions", json!([{"name": "f"}])),
            ("tool_choice", json!("required")),
            (
                "tool_choice",
                json!({"type": "function", "function": {"name": "f"}}),
            ),
            ("function_call", json!({"name": "f"})),
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {}}),
            ),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
        ] {
            let mut body = json!({"messages": u});
            body[field] = value;
            assert_eq!(param(chat(body)), (400, Some(field.into())), "{field}");
        }
        // Neutral values pass.
        chat(
            json!({"messages": u, "tools": [], "tool_choice": "auto", "logprobs": false,
                    "response_format": {"type": "text"}, "best_of": 1}),
        )
        .expect("neutral values");
    }

    #[test]
    fn completion_requests() {
        let ok = |v: serde_json::Value| {
            let req: CompletionRequest = parse_body(v.to_string().as_bytes())?;
            validate_completion(req, &limits())
        };
        let g = ok(json!({"prompt": ["Once"], "max_tokens": 3})).expect("valid");
        assert_eq!(g.prompt, PromptInput::Text("Once".into()));
        assert_eq!(
            param(ok(json!({"prompt": [1, 2]}))),
            (400, Some("prompt".into()))
        );
        assert_eq!(
            param(ok(json!({"prompt": "a", "echo": true}))),
            (400, Some("echo".into()))
        );
        assert_eq!(
            param(ok(json!({"prompt": ""}))),
            (400, Some("prompt".into()))
        );
        assert_eq!(
            param(ok(json!({"prompt": "a", "best_of": 3}))),
            (400, Some("best_of".into()))
        );
        assert_eq!(
            param(ok(json!({"prompt": "a", "logprobs": 2}))),
            (400, Some("logprobs".into()))
        );
        // max_tokens left out: the field is None, so the engine may use the context's room.
        let g = ok(json!({"prompt": "a"})).expect("valid");
        assert_eq!((g.max_tokens, g.max_tokens_field), (64, None));
        let g = ok(json!({"prompt": "a", "max_tokens": 5})).expect("valid");
        assert_eq!(g.max_tokens_field, Some("max_tokens"));
    }
}
