//! Judging one answer sample with the LLM judge: the shared judge prompt and schema, the
//! robust parser, and a bounded number of re-asks when a reply cannot be read. A sample that
//! is still unreadable becomes a failed [`JudgementRecord`] (counted, never a zero). Call
//! failures that the client's own retries could not fix are returned as errors: they are not
//! recorded, so a rerun tries them again.

use llamaduo::api::{Metric, TokenUsage};
use llamaduo_service_llm::LlmError;
use llamaduo_service_llm::flow::LlmClient;
use llamaduo_service_llm::judge::{judge_request, parse_judgement};

use super::records::JudgementRecord;

/// Judge calls per sample when replies cannot be parsed (the first try included).
pub const MAX_PARSE_ATTEMPTS: u32 = 3;

/// Temperature of judge calls: the spec's, else 0 for one sample and 0.7 for several (so the
/// samples are not copies of one another).
pub fn judge_temperature(spec_temperature: Option<f64>, samples: u32) -> f64 {
    spec_temperature.unwrap_or(if samples > 1 { 0.7 } else { 0.0 })
}

/// What one judging needs.
#[derive(Clone, Debug)]
pub struct JudgeInput<'a> {
    /// The task description.
    pub task: &'a str,
    /// The test instruction.
    pub instruction: &'a str,
    /// The reference answer.
    pub reference: &'a str,
    /// The candidate answer.
    pub candidate: &'a str,
    /// The answer's id.
    pub answer_id: &'a str,
    /// The sample index.
    pub sample: u32,
    /// Judge temperature.
    pub temperature: f64,
    /// Maximum output tokens, when the judge spec sets one.
    pub max_tokens: Option<u32>,
}

/// The start of a reply, for error messages.
fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = one_line.len().min(120);
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_string()
}

/// Judges one sample. `Ok` carries a successful or failed (unparseable) record; `Err` a call
/// failure (budget, configuration, retries exhausted) with the tokens spent before it.
pub async fn judge_sample(
    client: &LlmClient,
    input: &JudgeInput<'_>,
) -> Result<JudgementRecord, (LlmError, TokenUsage)> {
    let mut request = judge_request(
        input.task,
        input.instruction,
        input.reference,
        input.candidate,
        Some(input.temperature),
    );
    if let Some(m) = input.max_tokens {
        request.max_tokens = request.max_tokens.max(m.min(4096));
    }
    let mut usage = TokenUsage::default();
    let mut last_error = String::new();
    for attempt in 1..=MAX_PARSE_ATTEMPTS {
        let response = client.chat(&request).await.map_err(|e| (e, usage))?;
        usage += response.usage;
        match parse_judgement(&response.text) {
            Ok(j) => {
                return Ok(JudgementRecord {
                    answer_id: input.answer_id.to_string(),
                    sample: input.sample,
                    metric: Metric::Judge,
                    score: Some(j.score()),
                    similarity: Some(j.similarity),
                    precision: Some(j.precision),
                    reason: Some(format!("{} | {}", j.similarity_reason, j.precision_reason)),
                    error: None,
                    attempts: attempt,
                    service_tokens: usage,
                });
            }
            Err(e) => {
                last_error = format!("{e} (reply began: {:?})", excerpt(&response.text));
                tracing::debug!(answer = input.answer_id, sample = input.sample, attempt, error = %last_error, "unreadable judge reply");
            }
        }
    }
    Ok(JudgementRecord {
        answer_id: input.answer_id.to_string(),
        sample: input.sample,
        metric: Metric::Judge,
        score: None,
        similarity: None,
        precision: None,
        reason: None,
        error: Some(last_error),
        attempts: MAX_PARSE_ATTEMPTS,
        service_tokens: usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_defaults_depend_on_samples() {
        assert_eq!(judge_temperature(None, 1), 0.0);
        assert_eq!(judge_temperature(None, 3), 0.7);
        assert_eq!(judge_temperature(Some(0.2), 3), 0.2);
    }

    #[test]
    fn excerpt_is_one_short_line() {
        let e = excerpt(&format!("a\nb {}", "é".repeat(200)));
        assert!(e.starts_with("a b "));
        assert!(e.len() <= 120);
    }
}
