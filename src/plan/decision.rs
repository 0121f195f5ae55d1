//! What [`super::plan`] decides.

use std::fmt;

use crate::api::{Stage, StageConfig, StageResult, StageRun};

/// The next step of a migration.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Record a finished run's result in status before anything else happens.
    RecordResult {
        /// The run that finished.
        run: StageRun,
        /// Its result (a failure result when the run wrote none).
        result: Box<StageResult>,
    },
    /// Start a stage run (or start it again under the same name when its run disappeared).
    StartStage {
        /// Round, stage, attempt, deterministic name and the spec generation it runs with.
        run: StageRun,
        /// The stage config rendered from the current spec.
        config: Box<StageConfig>,
    },
    /// The migration is over.
    Finish(Finish),
    /// `spec.suspend` is set and no run is in flight: start nothing.
    Suspend,
    /// A run is in flight: wait for it.
    Wait {
        /// The run being waited for.
        run: StageRun,
    },
    /// Something outside the migration must change before it can go on.
    Stall(Stall),
    /// The migration already finished; nothing to do.
    Idle,
}

impl Decision {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::RecordResult { .. } => "record_result",
            Decision::StartStage { .. } => "start_stage",
            Decision::Finish(Finish::Succeeded { .. }) => "succeed",
            Decision::Finish(Finish::Failed(_)) => "fail",
            Decision::Suspend => "suspend",
            Decision::Wait { .. } => "wait",
            Decision::Stall(_) => "stall",
            Decision::Idle => "idle",
        }
    }
}

/// How a migration ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// `round` reached the target; its model is promoted to `status.best`.
    Succeeded {
        /// The round that reached the target.
        round: u32,
        /// Its mean score.
        mean_score: f64,
    },
    /// A stop rule or a stage failure ended the migration.
    Failed(StopReason),
}

/// Why a migration stopped without reaching its target.
#[derive(Clone, Debug, PartialEq)]
pub enum StopReason {
    /// `stop.maxRounds` rounds ran.
    MaxRounds {
        /// The limit.
        max_rounds: u32,
        /// Best mean score reached.
        best: Option<f64>,
        /// The target mean score.
        target: f64,
    },
    /// The best score has not improved for `stop.plateauRounds` rounds.
    Plateau {
        /// Rounds without improvement.
        rounds: u32,
        /// Round of the best score.
        best_round: u32,
        /// Best mean score.
        best: f64,
    },
    /// `stop.maxServiceTokens` is spent.
    TokenBudget {
        /// Tokens spent.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// A stage failed on every attempt.
    StageFailed {
        /// Round of the failed stage.
        round: u32,
        /// The stage.
        stage: Stage,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        message: String,
        /// It was permanent, so it was not retried.
        permanent: bool,
    },
}

impl StopReason {
    /// CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            StopReason::MaxRounds { .. } => "MaxRoundsReached",
            StopReason::Plateau { .. } => "Plateau",
            StopReason::TokenBudget { .. } => "TokenBudgetExhausted",
            StopReason::StageFailed { .. } => "StageFailed",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::MaxRounds {
                max_rounds,
                best,
                target,
            } => match best {
                Some(b) => write!(
                    f,
                    "stop.maxRounds ({max_rounds}) reached: best mean score {b:.2} is below the target {target:.2}"
                ),
                None => write!(
                    f,
                    "stop.maxRounds ({max_rounds}) reached without a scored round"
                ),
            },
            StopReason::Plateau {
                rounds,
                best_round,
                best,
            } => write!(
                f,
                "plateau: the best mean score {best:.2} (round {best_round}) has not improved for {rounds} rounds (stop.plateauRounds)"
            ),
            StopReason::TokenBudget { used, budget } if used < budget => write!(
                f,
                "stop.maxServiceTokens exhausted: {used} of {budget} service tokens spent, and the next request could need more than the rest"
            ),
            StopReason::TokenBudget { used, budget } => write!(
                f,
                "stop.maxServiceTokens exhausted: {used} of {budget} service tokens spent"
            ),
            StopReason::StageFailed {
                round,
                stage,
                attempts,
                message,
                permanent: true,
            } => write!(
                f,
                "round {round}: {stage} failed with a permanent error on attempt {attempts}, not retried (another attempt cannot succeed with this spec; fix it and apply it again, which gives the stage one more attempt): {message}"
            ),
            StopReason::StageFailed {
                round,
                stage,
                attempts,
                message,
                permanent: false,
            } => write!(
                f,
                "round {round}: {stage} failed after {attempts} attempt(s) (stop.stageRetries exhausted): {message}"
            ),
        }
    }
}

/// Stalled reason of a run whose Job (or child process) the API server refused to create:
/// a ResourceQuota, LimitRange or admission policy. The run is tried again with backoff and
/// keeps this stall until it starts, so the status does not flip between running and stalled.
pub const REASON_JOB_REJECTED: &str = "JobRejected";

/// Why a migration cannot go on until something outside it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// CamelCase reason for the Stalled condition (e.g. `SecretNotFound`, `InvalidSpec`).
    pub reason: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Stall {
    /// A stall with a reason and message.
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}
