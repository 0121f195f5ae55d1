//! The stage contract (docs/stage-contract.md): what the operator or the local runner hands a
//! `llamaduo-trainer` stage run, and what the run hands back.
//!
//! A stage run reads a [`StageConfig`] as JSON from `LLAMADUO_STAGE_CONFIG`, API keys from
//! `LLAMADUO_TEACHER_API_KEY` / `LLAMADUO_JUDGE_API_KEY`, writes artifacts under
//! `config.context().artifacts`, and writes a [`StageResult`] (at most 4 KiB of JSON) to
//! `LLAMADUO_RESULT_PATH` (default `/dev/termination-log`, which Kubernetes turns into the
//! container's termination message). Exit 0 on success; non-zero with `succeeded: false` and a
//! one-line `message` on failure.

use serde::{Deserialize, Serialize};

use super::migration::{
    CoverageSpec, EvaluationSpec, FailureClass, ProviderSpec, Scores, Stage, StudentSpec,
    SynthesisSpec, TaskSpec, TokenUsage, TrainingSpec,
};

/// Environment variable holding the stage config JSON.
pub const STAGE_CONFIG_ENV: &str = "LLAMADUO_STAGE_CONFIG";
/// Environment variable holding the teacher's API key.
pub const TEACHER_API_KEY_ENV: &str = "LLAMADUO_TEACHER_API_KEY";
/// Environment variable holding the judge's API key.
pub const JUDGE_API_KEY_ENV: &str = "LLAMADUO_JUDGE_API_KEY";
/// Environment variable naming the file the result JSON is written to.
pub const RESULT_PATH_ENV: &str = "LLAMADUO_RESULT_PATH";
/// Environment variable choosing the compute device: `auto` (unset), `cpu`, `cuda` or
/// `cuda:N`.
pub const DEVICE_ENV: &str = "LLAMADUO_DEVICE";
/// Where the result goes when `LLAMADUO_RESULT_PATH` is unset.
pub const DEFAULT_RESULT_PATH: &str = "/dev/termination-log";
/// Kubernetes keeps at most 4096 bytes of a termination message.
pub const MAX_RESULT_BYTES: usize = 4096;

/// What every stage run knows about where it runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageContext {
    /// Namespace of the migration (or "local" for `llamaduo run`).
    pub namespace: String,
    /// Name of the migration.
    pub migration: String,
    /// Round number, from 1.
    pub round: u32,
    /// Attempt number, from 1 (retries of the same stage run continue its work).
    #[serde(default = "one")]
    pub attempt: u32,
    /// Root URL of the migration's artifacts (see [`super::ArtifactLayout`]).
    pub artifacts: String,
    /// The largest JSONL row the stage reads (`coverage.maxRowBytes`, or its default).
    #[serde(default = "default_max_row_bytes")]
    pub max_row_bytes: u64,
}

fn one() -> u32 {
    1
}

fn default_max_row_bytes() -> u64 {
    super::migration::DEFAULT_MAX_ROW_BYTES
}

/// Config of a `synthesize` run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SynthesizeConfig {
    /// Where and when.
    #[serde(flatten)]
    pub context: StageContext,
    /// The task description for the prompts.
    pub task: TaskSpec,
    /// The coverage source, materialized into coverage/ in round 1.
    pub coverage: CoverageSpec,
    /// The teacher.
    pub teacher: ProviderSpec,
    /// Synthesis settings.
    pub synthesis: SynthesisSpec,
    /// Samples this round must add to round-{n}/synthetic.jsonl.
    pub samples: u32,
    /// Service tokens this run may spend; it stops before exceeding them. None: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
}

/// Config of a `train` run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainConfig {
    /// Where and when.
    #[serde(flatten)]
    pub context: StageContext,
    /// The student.
    pub student: StudentSpec,
    /// Training settings.
    pub training: TrainingSpec,
}

/// Config of an `evaluate` run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateConfig {
    /// Where and when.
    #[serde(flatten)]
    pub context: StageContext,
    /// The task description for the judge prompt.
    pub task: TaskSpec,
    /// The student (base model and chat template; the round's model is under round-{n}/model).
    pub student: StudentSpec,
    /// Training method, which says whether round-{n}/model is an adapter or full weights.
    pub training: TrainingSpec,
    /// The judge.
    pub judge: ProviderSpec,
    /// The teacher, which answers the test prompts when evaluation.baseline is on.
    pub teacher: ProviderSpec,
    /// Evaluation settings.
    pub evaluation: EvaluationSpec,
    /// Service tokens this run may spend. None: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
}

/// The config of one stage run, tagged by `stage`.
// One config is parsed per process, so boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "stage", rename_all = "camelCase")]
pub enum StageConfig {
    /// Generate synthetic data.
    Synthesize(SynthesizeConfig),
    /// Fine-tune the student.
    Train(TrainConfig),
    /// Score the student.
    Evaluate(EvaluateConfig),
}

impl StageConfig {
    /// Which stage this config runs.
    pub fn stage(&self) -> Stage {
        match self {
            StageConfig::Synthesize(_) => Stage::Synthesize,
            StageConfig::Train(_) => Stage::Train,
            StageConfig::Evaluate(_) => Stage::Evaluate,
        }
    }

    /// Where and when.
    pub fn context(&self) -> &StageContext {
        match self {
            StageConfig::Synthesize(c) => &c.context,
            StageConfig::Train(c) => &c.context,
            StageConfig::Evaluate(c) => &c.context,
        }
    }

    /// Parse the JSON of `LLAMADUO_STAGE_CONFIG`.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// What `synthesize` reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SynthesizeOutcome {
    /// Samples the round asked for.
    pub requested: u64,
    /// Samples in round-{n}/synthetic.jsonl after this run.
    pub produced: u64,
    /// Teacher replies rejected as malformed (bad JSON, wrong shape, length bounds).
    pub rejected_malformed: u64,
    /// Samples dropped as exact or near duplicates.
    pub deduplicated: u64,
    /// Samples dropped as too close to a test prompt.
    pub decontaminated: u64,
    /// Requests retried (429, 5xx, timeouts, connection errors).
    pub retries: u64,
    /// Whether the token budget stopped the run before `requested` was reached.
    #[serde(default)]
    pub budget_exhausted: bool,
}

/// What `train` reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainOutcome {
    /// Optimizer steps taken in all (including those before a resume).
    pub steps: u64,
    /// Samples in the training set (coverage train plus synthetic of rounds 1..n), the slice
    /// held out for `evalLoss` included.
    pub training_samples: u64,
    /// Samples truncated to maxSeqLen.
    #[serde(default)]
    pub truncated: u64,
    /// Loss of the last logged steps.
    pub final_loss: f64,
    /// Mean loss over the run.
    pub mean_loss: f64,
    /// Loss on a held-out slice of the training set, of the published weights (the best
    /// epoch's when `training.selectBestEpoch` chose one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Epochs the round trained for (`training.epochs`, or what `minSteps` asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// The epoch (from 1) whose weights were published, when chosen by held-out loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<u32>,
    /// Held-out loss at the end of every epoch, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epoch_eval_losses: Vec<f64>,
    /// Peak learning rate used (`training.learningRate` or its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Things the user should know about this round's training (a dataset smaller than one
    /// batch, most samples truncated, ...), each naming the setting to change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Training throughput.
    pub tokens_per_second: f64,
    /// The checkpoint step this run resumed from (an earlier attempt was stopped or killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_step: Option<u64>,
    /// URI of round-{n}/model.
    pub model_uri: String,
}

/// What `evaluate` reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateOutcome {
    /// The round's scores.
    pub scores: Scores,
    /// Test prompts.
    pub prompts: u64,
    /// Answers scored.
    pub answers: u64,
    /// Judgements that could not be parsed after retries (excluded from the scores).
    #[serde(default)]
    pub failed_judgements: u64,
}

/// The result of one stage run, written as JSON to `LLAMADUO_RESULT_PATH`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// The stage that ran.
    pub stage: Stage,
    /// Its round.
    pub round: u32,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// On failure, a one-line reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Service LLM tokens this run spent (all attempts' runs report only their own).
    #[serde(default)]
    pub service_tokens: TokenUsage,
    /// Wall time, seconds.
    #[serde(default)]
    pub duration_seconds: f64,
    /// Synthesis details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthesize: Option<SynthesizeOutcome>,
    /// Training details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainOutcome>,
    /// Evaluation details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<EvaluateOutcome>,
    /// The run failed because its next service request could exceed what is left of
    /// `stop.maxServiceTokens`: another attempt cannot do better, so the migration stops
    /// (`TokenBudgetExhausted`) instead of retrying.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_exhausted: bool,
    /// On failure, whether another attempt can succeed: `permanent` failures (invalid config,
    /// unsupported model, malformed dataset, ...) are not retried. Absent means transient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_class: Option<FailureClass>,
}

impl StageResult {
    /// A failed result with a reason, transient (retried) unless [`Self::classed`] says
    /// otherwise.
    pub fn failure(stage: Stage, round: u32, message: impl Into<String>) -> Self {
        Self {
            stage,
            round,
            succeeded: false,
            message: Some(message.into()),
            service_tokens: TokenUsage::default(),
            duration_seconds: 0.0,
            synthesize: None,
            train: None,
            evaluate: None,
            budget_exhausted: false,
            failure_class: Some(FailureClass::Transient),
        }
    }

    /// A successful result of `stage` with no details yet (the caller sets its section).
    pub fn success(stage: Stage, round: u32) -> Self {
        Self {
            succeeded: true,
            message: None,
            failure_class: None,
            ..Self::failure(stage, round, "")
        }
    }

    /// The same result with its failure class set (a no-op on a success).
    pub fn classed(mut self, class: FailureClass) -> Self {
        if !self.succeeded {
            self.failure_class = Some(class);
        }
        self
    }

    /// Whether this is a failure another attempt cannot fix.
    pub fn is_permanent_failure(&self) -> bool {
        !self.succeeded && self.failure_class == Some(FailureClass::Permanent)
    }

    /// The JSON written as the termination message: at most [`MAX_RESULT_BYTES`], so the
    /// numbers always survive: a long message is cut (on a character boundary), then train
    /// warnings are dropped from the last (they are in the stage log too). Kubernetes keeps only
    /// the first 4096 bytes, and a cut JSON document reads as no result at all.
    pub fn to_termination_message(&self) -> String {
        let mut result = self.clone();
        if let Some(m) = result.message.as_mut() {
            *m = m.lines().next().unwrap_or_default().to_string();
        }
        loop {
            let json = serde_json::to_string(&result).unwrap_or_else(|_| "{}".into());
            if json.len() <= MAX_RESULT_BYTES {
                return json;
            }
            let over = json.len() - MAX_RESULT_BYTES;
            // Each step shortens the result, and the loop ends when none can: a message
            // already cut to "…" once made this loop spin forever when the rest was too long.
            if let Some(m) = result.message.as_mut().filter(|m| m.as_str() != "…") {
                let mut cut = m.len().saturating_sub(over + 3);
                while cut > 0 && !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
                m.push('…');
                continue;
            }
            let Some(t) = result.train.as_mut().filter(|t| !t.warnings.is_empty()) else {
                return json;
            };
            // As many as free `over` bytes at once (each costs its JSON and a comma), so
            // thousands of warnings take one more pass, not one each.
            let mut freed = 0;
            while freed < over
                && let Some(w) = t.warnings.pop()
            {
                freed += serde_json::to_string(&w).map_or(w.len(), |j| j.len()) + 1;
            }
        }
    }

    /// Parse a termination message.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_message_fits_and_keeps_numbers() {
        let mut r = StageResult::failure(Stage::Train, 2, "x".repeat(10_000));
        r.service_tokens = TokenUsage {
            input: 12,
            output: 34,
        };
        let json = r.to_termination_message();
        assert!(json.len() <= MAX_RESULT_BYTES, "{}", json.len());
        let back = StageResult::from_json(&json).expect("valid JSON");
        assert_eq!(back.service_tokens.total(), 46);
        assert!(!back.succeeded);
    }

    #[test]
    fn multi_line_message_keeps_first_line() {
        let r = StageResult::failure(Stage::Evaluate, 1, "first line\nsecond");
        let back = StageResult::from_json(&r.to_termination_message()).expect("valid");
        assert_eq!(back.message.as_deref(), Some("first line"));
    }

    #[test]
    fn multibyte_message_is_cut_on_a_char_boundary() {
        let r = StageResult::failure(Stage::Synthesize, 1, "é".repeat(5000));
        let json = r.to_termination_message();
        assert!(json.len() <= MAX_RESULT_BYTES);
        StageResult::from_json(&json).expect("valid");
    }
}
