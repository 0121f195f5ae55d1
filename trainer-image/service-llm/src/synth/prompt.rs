//! The synthesis prompt and its reply: the teacher sees the task description and one seed
//! example and writes `n` new (instruction, response) pairs as
//! `{"pairs": [{"instruction": ..., "response": ...}]}`. The reply is validated: JSON of that
//! shape (the reference's `{"contents": [...]}` and a bare array are accepted too), non-empty
//! strings, length bounds; invalid pairs are dropped and counted.

use serde_json::{Value, json};

use crate::json_extract::json_candidates;
use crate::provider::{ChatRequest, ResponseFormat};

/// Marks a synthesis prompt (the simulated teacher looks for it).
pub const SYNTH_MARKER: &str = "new (instruction, response) pairs";
/// Opens the seed example's instruction.
pub const EXAMPLE_INSTRUCTION_OPEN: &str = "[Example instruction]";
/// Opens the seed example's response.
pub const EXAMPLE_RESPONSE_OPEN: &str = "[Example response]";
/// Ends the example.
pub const EXAMPLE_CLOSE: &str = "[End of example]";

/// System prompt for synthesis.
pub const SYNTH_SYSTEM: &str =
    "You write high-quality training data for a small language model. You reply with JSON only.";

/// Longest instruction accepted, in characters.
pub const MAX_INSTRUCTION_CHARS: usize = 8_000;
/// Longest response accepted, in characters.
pub const MAX_RESPONSE_CHARS: usize = 16_000;

/// One synthetic pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The user's instruction.
    pub instruction: String,
    /// The ideal response.
    pub response: String,
}

/// What a valid reply held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPairs {
    /// Pairs that passed validation, in reply order.
    pub pairs: Vec<Pair>,
    /// Pairs dropped (empty, too long, not strings).
    pub invalid: usize,
}

/// The user prompt asking for `n` pairs like the seed.
pub fn synthesis_prompt(task: &str, seed_instruction: &str, seed_response: &str, n: u32) -> String {
    format!(
        "Task: {task}\n\n\
         Here is an example of the task:\n\
         {EXAMPLE_INSTRUCTION_OPEN}\n{seed_instruction}\n\
         {EXAMPLE_RESPONSE_OPEN}\n{seed_response}\n\
         {EXAMPLE_CLOSE}\n\n\
         Write exactly {n} {SYNTH_MARKER} for this task. Make them similar in kind, style and \
         length to the example but not copies of it, and different from each other. Each \
         instruction must be self-contained; each response must be the ideal, correct answer \
         to its instruction.\n\n\
         Reply with JSON only, in this shape:\n\
         {{\"pairs\": [{{\"instruction\": \"...\", \"response\": \"...\"}}]}}"
    )
}

/// The JSON schema of a reply.
pub fn pairs_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "pairs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "instruction": {"type": "string"},
                        "response": {"type": "string"}
                    },
                    "required": ["instruction", "response"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["pairs"],
        "additionalProperties": false
    })
}

/// The whole synthesis request.
pub fn synthesis_request(
    task: &str,
    seed_instruction: &str,
    seed_response: &str,
    n: u32,
    temperature: Option<f64>,
    max_tokens: u32,
) -> ChatRequest {
    let mut req = ChatRequest::user(
        Some(SYNTH_SYSTEM.to_string()),
        synthesis_prompt(task, seed_instruction, seed_response, n),
        max_tokens,
    );
    req.temperature = temperature;
    req.format = ResponseFormat::JsonSchema {
        name: "synthetic_pairs".into(),
        schema: pairs_schema(),
    };
    req
}

/// Validates a reply. `Err` (with the reason) when it holds no usable pair at all.
pub fn parse_pairs(text: &str) -> Result<ParsedPairs, String> {
    let candidates = json_candidates(text);
    if candidates.is_empty() {
        return Err("no JSON in the reply".into());
    }
    let items = candidates
        .iter()
        .find_map(|v| match v {
            Value::Object(o) => o
                .get("pairs")
                .or_else(|| o.get("contents"))
                .and_then(Value::as_array),
            Value::Array(a) => Some(a),
            _ => None,
        })
        .ok_or("the JSON has no \"pairs\" array")?;
    let mut pairs = Vec::new();
    let mut invalid = 0;
    for item in items {
        match pair_from(item) {
            Some(p) => pairs.push(p),
            None => invalid += 1,
        }
    }
    if pairs.is_empty() {
        return Err(format!("none of the {} pairs is valid", items.len()));
    }
    Ok(ParsedPairs { pairs, invalid })
}

fn pair_from(item: &Value) -> Option<Pair> {
    let instruction = item.get("instruction")?.as_str()?.trim();
    let response = item.get("response")?.as_str()?.trim();
    let ok = |s: &str, max: usize| !s.is_empty() && s.chars().count() <= max;
    (ok(instruction, MAX_INSTRUCTION_CHARS) && ok(response, MAX_RESPONSE_CHARS)).then(|| Pair {
        instruction: instruction.to_string(),
        response: response.to_string(),
    })
}

/// Reads `n` back from a synthesis prompt ("Write exactly {n} new ...").
pub fn requested_count(prompt: &str) -> Option<u32> {
    let at = prompt.find(SYNTH_MARKER)?;
    prompt[..at].split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::between;

    #[test]
    fn prompt_round_trips_count_and_example() {
        let p = synthesis_prompt("Add numbers", "What is 1 + 2?", "3", 7);
        assert_eq!(requested_count(&p), Some(7));
        assert_eq!(
            between(&p, EXAMPLE_INSTRUCTION_OPEN, EXAMPLE_RESPONSE_OPEN),
            Some("What is 1 + 2?")
        );
    }

    #[test]
    fn validates_pairs() {
        let ok = parse_pairs(
            r#"```json
{"pairs": [{"instruction": "What is 2 + 2?", "response": "4"}, {"instruction": " ", "response": "x"}, {"instruction": "a"}]}
```"#,
        )
        .expect("one valid pair");
        assert_eq!(ok.pairs.len(), 1);
        assert_eq!(ok.invalid, 2);
        let reference =
            parse_pairs(r#"{"contents": [{"instruction": "q", "response": "a"}]}"#).expect("ok");
        assert_eq!(reference.pairs[0].response, "a");
        let bare = parse_pairs(r#"[{"instruction": "q", "response": "a"}]"#).expect("ok");
        assert_eq!(bare.pairs.len(), 1);
        assert!(parse_pairs("{\"pairs\": [{\"instruction\": \"q\"").is_err());
        assert!(parse_pairs(r#"{"pairs": []}"#).is_err());
        assert!(parse_pairs(r#"{"items": [1]}"#).is_err());
        let long = format!(
            r#"{{"pairs": [{{"instruction": "{}", "response": "a"}}]}}"#,
            "x".repeat(MAX_INSTRUCTION_CHARS + 1)
        );
        assert!(parse_pairs(&long).is_err());
    }
}
