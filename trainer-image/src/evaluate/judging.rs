//! Judging one answer sample with the LLM judge: the shared judge prompt and schema, the
//! robust parser, and a bounded number of re-asks when a reply cannot be read. A sample that
//! is still unreadable becomes a failed [`JudgementRecord`] (counted, never a zero). A reply
//! cut off at the output limit is re-asked with twice the limit (up to
//! [`MAX_ESCALATED_TOKENS`]): reasoning models spend hidden tokens before the JSON. Call
//! failures that the client's own retries could not fix are returned as errors: they are not
//! recorded, so a rerun tries them again.

use llamaduo::api::{Metric, TokenUsage};
use llamaduo_service_llm::LlmError;
use llamaduo_service_llm::flow::LlmClient;
use llamaduo_service_llm::judge::{judge_request, parse_judgement};
use llamaduo_service_llm::provider::Completion;

use super::records::JudgementRecord;

/// Judge calls per sample when replies cannot be parsed (the first try included).
pub const MAX_PARSE_ATTEMPTS: u32 = 3;

/// The most output tokens a re-ask after a cut-off reply may request.
pub const MAX_ESCALATED_TOKENS: u32 = 8192;

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
        let cut_off = response.incomplete_reason(request.max_tokens, "judge.generation.maxTokens");
        if response.completion == Completion::Truncated {
            request.max_tokens = request
                .max_tokens
                .saturating_mul(2)
                .min(MAX_ESCALATED_TOKENS.max(request.max_tokens));
        }
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
                if let Some(why) = cut_off {
                    last_error = format!("{why}; {last_error}");
                }
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

    /// A judge that spends `thinking` hidden tokens before its JSON: cut off below that.
    #[derive(Debug)]
    struct ThinkingJudge {
        thinking: u32,
        asked: std::sync::Mutex<Vec<u32>>,
    }

    impl llamaduo_service_llm::provider::ChatProvider for ThinkingJudge {
        fn name(&self) -> &'static str {
            "thinking"
        }
        fn model(&self) -> &str {
            "thinking"
        }
        fn chat<'a>(
            &'a self,
            request: &'a llamaduo_service_llm::provider::ChatRequest,
        ) -> futures::future::BoxFuture<
            'a,
            Result<llamaduo_service_llm::provider::ChatResponse, LlmError>,
        > {
            Box::pin(async move {
                self.asked.lock().expect("lock").push(request.max_tokens);
                let whole = request.max_tokens > self.thinking + 60;
                Ok(llamaduo_service_llm::provider::ChatResponse {
                    text: if whole {
                        r#"{"similarity": {"score": 80, "reason": "close"}, "precision": {"score": 70, "reason": "ok"}}"#.into()
                    } else {
                        String::new()
                    },
                    usage: TokenUsage {
                        input: 50,
                        output: u64::from(request.max_tokens.min(self.thinking + 60)),
                    },
                    finish_reason: Some(if whole { "stop" } else { "length" }.into()),
                    completion: if whole {
                        Completion::Complete
                    } else {
                        Completion::Truncated
                    },
                    reasoning_tokens: u64::from(self.thinking.min(request.max_tokens)),
                })
            })
        }
    }

    async fn judge_with(thinking: u32) -> (JudgementRecord, Vec<u32>) {
        let judge = std::sync::Arc::new(ThinkingJudge {
            thinking,
            asked: Default::default(),
        });
        let client = LlmClient::new(
            judge.clone(),
            llamaduo_service_llm::flow::ClientConfig {
                concurrency: 1,
                requests_per_minute: None,
                tokens_per_minute: None,
                timeout: std::time::Duration::from_secs(5),
                max_retries: 0,
                backoff: Default::default(),
            },
            std::sync::Arc::new(llamaduo_service_llm::flow::TokenBudget::new(None)),
        );
        let input = JudgeInput {
            task: "Add numbers",
            instruction: "2 + 2?",
            reference: "4",
            candidate: "4",
            answer_id: "student/p1/0",
            sample: 0,
            temperature: 0.0,
            max_tokens: None,
        };
        let record = judge_sample(&client, &input).await.expect("judged");
        let asked = judge.asked.lock().expect("lock").clone();
        (record, asked)
    }

    #[tokio::test]
    async fn cut_off_judge_replies_are_re_asked_with_room_to_think() {
        // 600 hidden tokens: 400 is cut off, 800 is enough.
        let (record, asked) = judge_with(600).await;
        assert_eq!(asked, vec![400, 800]);
        assert_eq!(record.score, Some(70.0));
        assert_eq!(record.attempts, 2);
        assert_eq!(record.service_tokens.output, 400 + 660);

        // A judge that never gets there: a failed record that says what to raise.
        let (record, asked) = judge_with(100_000).await;
        assert_eq!(asked, vec![400, 800, 1600]);
        assert_eq!(record.score, None);
        let error = record.error.expect("error");
        assert!(
            error.contains("cut off at the output limit of 1600 tokens"),
            "{error}"
        );
        assert!(
            error.contains("raise judge.generation.maxTokens"),
            "{error}"
        );
    }

    #[test]
    fn excerpt_is_one_short_line() {
        let e = excerpt(&format!("a\nb {}", "é".repeat(200)));
        assert!(e.starts_with("a b "));
        assert!(e.len() <= 120);
    }
}
