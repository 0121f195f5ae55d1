//! The judge protocol, shared by evaluation and the simulated teacher: the prompt (task,
//! instruction, reference answer, candidate answer), the JSON schema of the verdict
//! (`{"similarity": {"score", "reason"}, "precision": {"score", "reason"}}`, scores 1–100),
//! and a parser that accepts what real models send: floats and numeric strings ("85",
//! "85/100", "85%"), JSON in code fences or inside prose, and the LlamaDuo reference's
//! `similarity_assessment` / `precision_assessment` keys. A reply that cannot be read is an
//! error, never a silent zero.

use llamaduo::api::Message;
use serde_json::{Value, json};

use crate::json_extract::json_candidates;
use crate::provider::{ChatRequest, ResponseFormat};

/// Marks the instruction in the judge prompt (the simulated teacher looks for these).
pub const INSTRUCTION_OPEN: &str = "[Instruction]";
/// Ends the instruction.
pub const INSTRUCTION_CLOSE: &str = "[End of instruction]";
/// Marks the reference answer.
pub const REFERENCE_OPEN: &str = "[Reference answer]";
/// Ends the reference answer.
pub const REFERENCE_CLOSE: &str = "[End of reference answer]";
/// Marks the candidate answer.
pub const CANDIDATE_OPEN: &str = "[Candidate answer]";
/// Ends the candidate answer.
pub const CANDIDATE_CLOSE: &str = "[End of candidate answer]";

/// System prompt of the judge.
pub const JUDGE_SYSTEM: &str =
    "You are a strict and fair evaluator of answers. You reply with JSON only.";

/// Output tokens a verdict needs (two short reasons).
pub const JUDGE_MAX_TOKENS: u32 = 400;

/// The judge's verdict on one answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judgement {
    /// How close the candidate is to the reference, 1–100.
    pub similarity: f64,
    /// How correct and precise the candidate is, 1–100.
    pub precision: f64,
    /// The judge's reason for the similarity score.
    pub similarity_reason: String,
    /// The judge's reason for the precision score.
    pub precision_reason: String,
}

impl Judgement {
    /// The answer's score: min(similarity, precision).
    pub fn score(&self) -> f64 {
        self.similarity.min(self.precision)
    }
}

/// Why a judge reply could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JudgeParseError {
    /// No JSON object in the reply.
    #[error("the judge reply holds no JSON object")]
    NoJson,
    /// JSON without a usable `similarity` or `precision` score.
    #[error("the judge reply lacks a usable {0} score")]
    MissingScore(&'static str),
    /// A score outside 0–100 (or not a number).
    #[error("the judge's {field} score {value} is outside 1-100")]
    OutOfRange {
        /// Which score.
        field: &'static str,
        /// What was sent.
        value: String,
    },
}

/// The judge's user prompt.
pub fn judge_prompt(task: &str, instruction: &str, reference: &str, candidate: &str) -> String {
    format!(
        "You are judging how well a candidate answer performs a task, compared with a reference answer.\n\n\
         Task: {task}\n\n\
         {INSTRUCTION_OPEN}\n{instruction}\n{INSTRUCTION_CLOSE}\n\n\
         {REFERENCE_OPEN}\n{reference}\n{REFERENCE_CLOSE}\n\n\
         {CANDIDATE_OPEN}\n{candidate}\n{CANDIDATE_CLOSE}\n\n\
         Rate the candidate with two scores from 1 to 100:\n\
         - similarity: how close the candidate is to the reference answer in content and form.\n\
         - precision: how correct, precise and complete the candidate is for the instruction, with nothing wrong or superfluous.\n\n\
         Reply with JSON only, in this shape:\n\
         {{\"similarity\": {{\"score\": <1-100>, \"reason\": \"<one sentence>\"}}, \"precision\": {{\"score\": <1-100>, \"reason\": \"<one sentence>\"}}}}"
    )
}

/// The JSON schema of a verdict (the subset OpenAI strict mode, Anthropic and Gemini enforce).
pub fn judge_schema() -> Value {
    let assessment = json!({
        "type": "object",
        "properties": {"score": {"type": "number"}, "reason": {"type": "string"}},
        "required": ["score", "reason"],
        "additionalProperties": false
    });
    json!({
        "type": "object",
        "properties": {"similarity": assessment, "precision": assessment},
        "required": ["similarity", "precision"],
        "additionalProperties": false
    })
}

/// A complete judge request: system prompt, user prompt, schema-enforced JSON, deterministic
/// unless `temperature` says otherwise (judgeSamples > 1 wants some temperature).
pub fn judge_request(
    task: &str,
    instruction: &str,
    reference: &str,
    candidate: &str,
    temperature: Option<f64>,
) -> ChatRequest {
    let mut req = ChatRequest::user(
        Some(JUDGE_SYSTEM.to_string()),
        judge_prompt(task, instruction, reference, candidate),
        JUDGE_MAX_TOKENS,
    );
    req.temperature = temperature;
    req.format = ResponseFormat::JsonSchema {
        name: "judgement".into(),
        schema: judge_schema(),
    };
    req
}

/// A request asking the teacher to answer a test prompt (evaluation's baseline): the
/// conversation before the reference answer, as is.
pub fn answer_request(
    prompt: &[Message],
    temperature: Option<f64>,
    max_tokens: u32,
) -> ChatRequest {
    ChatRequest {
        system: None,
        messages: prompt.to_vec(),
        temperature,
        max_tokens,
        format: ResponseFormat::Text,
    }
}

/// Reads a judge reply.
pub fn parse_judgement(text: &str) -> Result<Judgement, JudgeParseError> {
    let candidates = json_candidates(text);
    let mut first_error = None;
    for v in candidates.iter().filter(|v| v.is_object()) {
        match judgement_from(v) {
            Ok(j) => return Ok(j),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(JudgeParseError::NoJson))
}

fn judgement_from(v: &Value) -> Result<Judgement, JudgeParseError> {
    let (similarity, similarity_reason) = assessment(
        v,
        &["similarity", "similarity_assessment", "similarity_score"],
        "similarity",
    )?;
    let (precision, precision_reason) = assessment(
        v,
        &["precision", "precision_assessment", "precision_score"],
        "precision",
    )?;
    Ok(Judgement {
        similarity,
        precision,
        similarity_reason,
        precision_reason,
    })
}

fn assessment(
    v: &Value,
    keys: &[&str],
    field: &'static str,
) -> Result<(f64, String), JudgeParseError> {
    let found = keys
        .iter()
        .find_map(|k| v.get(*k))
        .ok_or(JudgeParseError::MissingScore(field))?;
    let (raw, reason) = match found {
        Value::Object(o) => (
            o.get("score").ok_or(JudgeParseError::MissingScore(field))?,
            o.get("reason")
                .or_else(|| o.get("explanation"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        other => (other, String::new()),
    };
    let score = score_value(raw).ok_or(JudgeParseError::MissingScore(field))?;
    if !score.is_finite() || !(0.0..=100.0).contains(&score) {
        return Err(JudgeParseError::OutOfRange {
            field,
            value: raw.to_string(),
        });
    }
    // The scale starts at 1; a judge writing 0 means "as bad as it gets".
    Ok((score.max(1.0), reason))
}

/// A score from a number or a numeric string ("85", " 85.5 ", "85/100", "85%").
fn score_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            let s = s.strip_suffix('%').unwrap_or(s);
            let s = s.split_once('/').map_or(s, |(num, _)| num).trim();
            s.parse::<f64>().ok()
        }
        _ => None,
    }
}

/// The text between `open` and `close` markers (the last `close` after `open`).
pub fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let rest = &text[start..];
    let end = rest.rfind(close)?;
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_floats_strings_and_prose() {
        let j = parse_judgement(
            r#"{"similarity": {"score": 87.5, "reason": "close"}, "precision": {"score": "90", "reason": "right"}}"#,
        )
        .expect("parses");
        assert_eq!((j.similarity, j.precision), (87.5, 90.0));
        assert_eq!(j.score(), 87.5);
        assert_eq!(j.similarity_reason, "close");

        let j = parse_judgement(
            "Here is my verdict:\n```json\n{\"similarity_assessment\": {\"score\": \"70/100\", \"reason\": \"x\"}, \"precision_assessment\": {\"score\": \"65%\", \"reason\": \"y\"}}\n```\nThanks {",
        )
        .expect("parses fenced reference keys");
        assert_eq!((j.similarity, j.precision), (70.0, 65.0));

        let j = parse_judgement(r#"I think {"similarity": 12, "precision": 0} is fair."#)
            .expect("bare numbers");
        assert_eq!((j.similarity, j.precision), (12.0, 1.0));
    }

    #[test]
    fn rejects_unreadable_replies() {
        assert_eq!(
            parse_judgement("great answer, 10/10"),
            Err(JudgeParseError::NoJson)
        );
        assert_eq!(
            parse_judgement(r#"{"similarity": {"score": 50}}"#),
            Err(JudgeParseError::MissingScore("precision"))
        );
        assert!(matches!(
            parse_judgement(r#"{"similarity": 500, "precision": 50}"#),
            Err(JudgeParseError::OutOfRange {
                field: "similarity",
                ..
            })
        ));
        assert!(matches!(
            parse_judgement(r#"{"similarity": "high", "precision": 50}"#),
            Err(JudgeParseError::MissingScore("similarity"))
        ));
    }

    #[test]
    fn prompt_carries_all_parts_between_markers() {
        let p = judge_prompt("Add numbers", "What is 2 + 2?", "4", "5");
        assert_eq!(
            between(&p, INSTRUCTION_OPEN, INSTRUCTION_CLOSE),
            Some("What is 2 + 2?")
        );
        assert_eq!(between(&p, REFERENCE_OPEN, REFERENCE_CLOSE), Some("4"));
        assert_eq!(between(&p, CANDIDATE_OPEN, CANDIDATE_CLOSE), Some("5"));
        assert!(p.contains("Task: Add numbers"));
    }
}
