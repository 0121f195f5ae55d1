//! What evaluation persists under `round-{n}/eval/`: one [`AnswerRecord`] per answer in
//! answers.jsonl, one [`JudgementRecord`] per judge sample (or offline metric score) in
//! judgements.jsonl, and the [`Summary`] in summary.json. Answers are keyed by
//! (answerer, prompt id, answer index) and judgements by (answer id, sample index), so a rerun
//! can tell exactly what is already done.

use llamaduo::api::{Metric, TokenUsage};
use serde::{Deserialize, Serialize};

/// answers.jsonl under `round-{n}/eval/`.
pub const ANSWERS_FILE: &str = "answers.jsonl";
/// judgements.jsonl under `round-{n}/eval/`.
pub const JUDGEMENTS_FILE: &str = "judgements.jsonl";
/// summary.json under `round-{n}/eval/`.
pub const SUMMARY_FILE: &str = "summary.json";

/// Who wrote an answer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Answerer {
    /// The round's student model.
    Student,
    /// The teacher (evaluation.baseline).
    Teacher,
}

impl Answerer {
    fn as_str(self) -> &'static str {
        match self {
            Answerer::Student => "student",
            Answerer::Teacher => "teacher",
        }
    }
}

/// The stable id of an answer: `{answerer}/{prompt id}/{answer index}`.
pub fn answer_id(answerer: Answerer, prompt_id: &str, answer_index: u32) -> String {
    format!("{}/{prompt_id}/{answer_index}", answerer.as_str())
}

/// One answer to one test prompt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnswerRecord {
    /// [`answer_id`] of this answer.
    pub id: String,
    /// Student or teacher.
    pub answerer: Answerer,
    /// Id of the test prompt.
    pub prompt_id: String,
    /// Index among the prompt's answers, from 0.
    pub answer_index: u32,
    /// The answer text.
    pub text: String,
    /// Why generation ended (eos, stop, length; or the provider's reason for the teacher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Tokens generated (student) or billed output tokens (teacher).
    #[serde(default)]
    pub tokens: u64,
    /// Service tokens spent to get this answer (teacher only).
    #[serde(default)]
    pub service_tokens: TokenUsage,
}

/// One score of one answer: a judge sample, or the single offline metric score.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JudgementRecord {
    /// The answer judged.
    pub answer_id: String,
    /// Sample index, from 0 (always 0 for offline metrics).
    pub sample: u32,
    /// The metric that produced it.
    pub metric: Metric,
    /// The score, 0–100: min(similarity, precision) for the judge. `None`: the judgement
    /// failed (see `error`) and is left out of every mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Judge similarity score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// Judge precision score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// The judge's reasons (similarity, then precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the judgement failed (the last parse error and the start of the reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Judge calls made for this sample (parse retries included).
    #[serde(default)]
    pub attempts: u32,
    /// Judge tokens spent on this sample.
    #[serde(default)]
    pub service_tokens: TokenUsage,
}

/// What identifies a judgement: the answer, the sample and the metric (a run retried after
/// `evaluation.metric` changed scores every answer again rather than reusing the old metric's
/// scores).
pub type JudgementKey = (String, u32, Metric);

impl JudgementRecord {
    /// The (answer id, sample, metric) key.
    pub fn key(&self) -> JudgementKey {
        (self.answer_id.clone(), self.sample, self.metric)
    }
}

/// Scores of one answerer's answers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SideSummary {
    /// Mean answer score over scored answers, 0–100.
    pub mean: f64,
    /// Share of scored answers at or above passScore.
    pub pass_rate: f64,
    /// Mean judge similarity (metric judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// Mean judge precision (metric judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Answers present.
    pub answers: u64,
    /// Answers with at least one successful judgement (the ones in the means).
    pub scored_answers: u64,
    /// Judgements that failed after retries (excluded from the means).
    pub failed_judgements: u64,
    /// Per test prompt, in test-set order.
    pub per_prompt: Vec<PromptSummary>,
}

/// Scores of one test prompt's answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromptSummary {
    /// Test prompt id.
    pub prompt_id: String,
    /// Mean score of its scored answers; `None` when none could be scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Share of its scored answers at or above passScore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<f64>,
    /// Each answer's score in answer order (`None`: no judgement succeeded).
    pub answer_scores: Vec<Option<f64>>,
}

/// summary.json.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The metric.
    pub metric: Metric,
    /// evaluation.passScore.
    pub pass_score: f64,
    /// evaluation.answersPerPrompt.
    pub answers_per_prompt: u32,
    /// evaluation.judgeSamples (1 for offline metrics).
    pub judge_samples: u32,
    /// Test prompts.
    pub prompts: u64,
    /// The student's scores.
    pub student: SideSummary,
    /// The teacher's scores (evaluation.baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<SideSummary>,
    /// Student mean / teacher mean (evaluation.baseline, teacher mean above 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_matching: Option<f64>,
    /// Service tokens recorded in the stored answers and judgements (all runs together).
    pub service_tokens: TokenUsage,
    /// The earlier round whose teacher answers and judgements this round reused (baseline
    /// settings unchanged), instead of paying for them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_from_round: Option<u32>,
}
