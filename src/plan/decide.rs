//! [`plan`]: the round rules of ARCHITECTURE §4 as one pure function.
//!
//! A round runs synthesize (skipped after round 1 when it asks for no samples), train and evaluate, then
//! decides: target reached -> Succeeded; `stop.maxRounds`, a plateau or the token budget ->
//! Failed with the reason; else the next round. A failed stage is retried up to
//! `stop.stageRetries` more times (each attempt under its own run name), then the migration
//! fails; one whose result says the failure is permanent (`failureClass`) fails it at once.

use crate::api::{
    FailureClass, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, Phase, RoundStatus, Scores,
    Stage, StageRecord, StageResult, StageRun,
};

use super::MigrationId;
use super::decision::{Decision, Finish, Stall, StopReason};
use super::names::stage_run_name;
use super::observation::Observation;
use super::render::{samples_for_round, stage_config, token_budget};

/// What the recorded status says comes next, before looking at any run.
#[derive(Debug, PartialEq)]
enum Step {
    /// Run this stage (attempt from 1).
    Run {
        round: u32,
        stage: Stage,
        attempt: u32,
    },
    /// The migration ends.
    Finish(Finish),
    /// The migration already ended.
    Terminal,
}

/// The stage run an executor must observe before calling [`plan`]: the run in flight
/// (`status.current`), else the run the status says comes next. `None` when no run is due
/// (the migration is over or its last round is being decided).
///
/// Observing the next run too (not only `status.current`) means a run whose start was never
/// recorded is still found, so a restart never duplicates it.
pub fn run_to_observe(
    id: &MigrationId,
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    generation: Option<i64>,
) -> Option<StageRun> {
    if let Some(current) = &status.current {
        return Some(current.clone());
    }
    match next_step(spec, status, generation) {
        Step::Run {
            round,
            stage,
            attempt,
        } => Some(StageRun {
            round,
            stage,
            attempt,
            name: stage_run_name(&id.name, round, stage, attempt),
            generation,
            progress: None,
        }),
        Step::Finish(_) | Step::Terminal => None,
    }
}

/// Decide the next step of a migration. Pure: the same inputs always give the same decision.
///
/// `observation` is what the executor found for [`run_to_observe`]'s run (ignored when that
/// is `None`). A finished run is always recorded first, whatever else holds (suspend, a new
/// spec, a finished migration), so no result is ever lost.
pub fn plan(
    id: &MigrationId,
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    generation: Option<i64>,
    observation: &Observation,
) -> Decision {
    let Some(run) = run_to_observe(id, spec, status, generation) else {
        return match next_step(spec, status, generation) {
            Step::Finish(f) => Decision::Finish(f),
            Step::Terminal | Step::Run { .. } => Decision::Idle,
        };
    };
    match observation {
        Observation::Succeeded(result) => Decision::RecordResult {
            result: Box::new(checked(&run, result.clone(), None)),
            run,
        },
        Observation::Failed { reason, result } => {
            let result = match result {
                Some(r) => checked(&run, r.clone(), Some(reason)),
                None => StageResult::failure(run.stage, run.round, reason.clone()),
            };
            Decision::RecordResult {
                run,
                result: Box::new(result),
            }
        }
        Observation::Running => Decision::Wait { run },
        Observation::Blocked { .. } if spec.suspend => Decision::Suspend,
        Observation::Blocked { reason, message } => {
            Decision::Stall(Stall::new(reason.clone(), message.clone()))
        }
        Observation::Missing if spec.suspend => Decision::Suspend,
        Observation::Missing => start(id, spec, status, run, generation),
    }
}

/// Start `run` (new, or again under the same name when it vanished), unless the budget is
/// spent or the spec cannot be rendered.
fn start(
    id: &MigrationId,
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    mut run: StageRun,
    generation: Option<i64>,
) -> Decision {
    if let Some(reason) = budget_spent(spec, status) {
        return Decision::Finish(Finish::Failed(reason));
    }
    // The run starts with the spec as it is now; the name stays what it was.
    run.generation = generation;
    match stage_config(id, spec, status, &run, token_budget(spec, status)) {
        Ok(config) => Decision::StartStage {
            run,
            config: Box::new(config),
        },
        Err(e) => Decision::Stall(Stall::new("InvalidSpec", e.to_string())),
    }
}

/// A result as recorded: a success must name the run's round and stage and carry its stage's
/// details; a failed exit (`failed_exit`) is a failure whatever the result says.
fn checked(run: &StageRun, mut result: StageResult, failed_exit: Option<&String>) -> StageResult {
    let problem = if result.round != run.round || result.stage != run.stage {
        Some(format!(
            "the run reported round {} {}, expected round {} {}",
            result.round, result.stage, run.round, run.stage
        ))
    } else if result.succeeded {
        let has_details = match run.stage {
            Stage::Synthesize => result.synthesize.is_some(),
            Stage::Train => result.train.is_some(),
            Stage::Evaluate => result.evaluate.is_some(),
        };
        match failed_exit {
            Some(reason) => Some(reason.clone()),
            None if !has_details => Some(format!(
                "the {} result reports success without its {} section",
                run.stage, run.stage
            )),
            None => None,
        }
    } else {
        None
    };
    if let Some(p) = problem {
        result.round = run.round;
        result.stage = run.stage;
        result.succeeded = false;
        result.message = Some(p);
    } else if !result.succeeded && result.message.is_none() {
        result.message = Some(
            failed_exit
                .cloned()
                .unwrap_or_else(|| format!("{} failed without a reason", run.stage)),
        );
    }
    result
}

/// Stages round `round` runs, in order.
fn stages_of_round(spec: &LlamaDuoMigrationSpec, round: u32) -> impl Iterator<Item = Stage> {
    // The first round always synthesizes: besides new samples, it freezes
    // coverage/train.jsonl and coverage/test.jsonl, which every later stage reads. Round 0
    // (the base student) synthesizes nothing and trains nothing: it freezes the split and
    // evaluates the untrained student on it.
    let skip_synthesis = round > 1 && samples_for_round(spec, round) == 0;
    let skip_training = round == 0;
    Stage::ALL.into_iter().filter(move |s| {
        !(skip_synthesis && *s == Stage::Synthesize || skip_training && *s == Stage::Train)
    })
}

/// The first round of a migration: 0 when it evaluates the base student first, else 1.
fn first_round(spec: &LlamaDuoMigrationSpec) -> u32 {
    u32::from(!spec.evaluates_base_student())
}

fn first_run(spec: &LlamaDuoMigrationSpec, round: u32) -> Step {
    match stages_of_round(spec, round).next() {
        Some(stage) => Step::Run {
            round,
            stage,
            attempt: 1,
        },
        None => Step::Terminal,
    }
}

/// What comes next. A succeeded migration is over. A failed one goes on only when the spec
/// that stopped it has changed so that it no longer stops it: a raised `stop.maxRounds`,
/// `stop.plateauRounds` or `stop.maxServiceTokens`, or, for a stage that failed on every
/// attempt, any edit made since its last attempt started (the edit is presumed to be the fix,
/// and gets one more attempt; an edit during that attempt counts too). A GitOps user
/// fixes a stopped migration by pushing the change, instead of deleting it and paying for
/// every round again.
fn next_step(
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    generation: Option<i64>,
) -> Step {
    match status.phase {
        Some(Phase::Succeeded) => Step::Terminal,
        // Spent budget first: a migration the budget stopped between two stages has a stage
        // that never ran, which `progress` would otherwise offer to start.
        Some(Phase::Failed) if budget_spent(spec, status).is_some() => Step::Terminal,
        Some(Phase::Failed) => match progress(spec, status, generation) {
            run @ Step::Run { .. } => run,
            Step::Finish(_) | Step::Terminal => Step::Terminal,
        },
        _ => progress(spec, status, generation),
    }
}

/// The next step by the round rules, from the rounds recorded so far.
fn progress(
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    generation: Option<i64>,
) -> Step {
    let Some(last) = status.rounds.last() else {
        return first_run(spec, first_round(spec));
    };
    // A round is over once it was evaluated and decided; one a failed stage or a stop rule
    // ended before its evaluation goes on where it stopped when the migration resumes.
    if last.outcome.is_some() && last.scores.is_some() {
        return next_round(spec, status, last.round);
    }
    // Whether the spec changed since a stage's last attempt started.
    let edited = |rec: &StageRecord| matches!((rec.generation, generation), (Some(ran), Some(now)) if now > ran);
    for stage in stages_of_round(spec, last.round) {
        match last.stage(stage) {
            Some(rec) if rec.succeeded => continue,
            // Another attempt would hit the same budget: stop with the budget as the reason
            // (unless the spec, and so perhaps the budget, changed since).
            Some(rec) if rec.budget_exhausted && !edited(rec) => {
                let used = status.service_tokens.total();
                return Step::Finish(Finish::Failed(StopReason::TokenBudget {
                    used,
                    budget: spec.stop.max_service_tokens.unwrap_or(used),
                }));
            }
            // No other attempt can succeed until the spec changes.
            Some(rec) if rec.failure_class == Some(FailureClass::Permanent) && !edited(rec) => {
                return Step::Finish(Finish::Failed(StopReason::StageFailed {
                    round: last.round,
                    stage,
                    attempts: rec.attempts,
                    message: rec.message.clone().unwrap_or_default(),
                    permanent: true,
                }));
            }
            Some(rec) if rec.attempts <= spec.stop.stage_retries || edited(rec) => {
                return Step::Run {
                    round: last.round,
                    stage,
                    attempt: rec.attempts + 1,
                };
            }
            Some(rec) => {
                return Step::Finish(Finish::Failed(StopReason::StageFailed {
                    round: last.round,
                    stage,
                    attempts: rec.attempts,
                    message: rec.message.clone().unwrap_or_default(),
                    permanent: false,
                }));
            }
            None => {
                return Step::Run {
                    round: last.round,
                    stage,
                    attempt: 1,
                };
            }
        }
    }
    decide_round(spec, status, last)
}

/// The round's stages are done: succeed, stop, or go on.
fn decide_round(
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    round: &RoundStatus,
) -> Step {
    if round.round == 0 {
        // The base student is the reference, not a candidate: it neither reaches the target
        // nor counts as best (it has no trained model to promote).
        return next_round(spec, status, 0);
    }
    let Some(scores) = round.scores else {
        return Step::Finish(Finish::Failed(StopReason::StageFailed {
            round: round.round,
            stage: Stage::Evaluate,
            attempts: round.stage(Stage::Evaluate).map_or(0, |r| r.attempts),
            message: "evaluate recorded no scores".into(),
            permanent: false,
        }));
    };
    if target_reached(spec, &scores) {
        return Step::Finish(Finish::Succeeded {
            round: round.round,
            mean_score: scores.mean,
        });
    }
    next_round(spec, status, round.round)
}

/// After a round below target: a stop rule, or the first run of the next round.
fn next_round(spec: &LlamaDuoMigrationSpec, status: &LlamaDuoMigrationStatus, round: u32) -> Step {
    let best = status.best.as_ref();
    if round >= spec.stop.max_rounds {
        return Step::Finish(Finish::Failed(StopReason::MaxRounds {
            max_rounds: spec.stop.max_rounds,
            best: best.map(|b| b.mean_score),
            target: spec.target.mean_score,
        }));
    }
    if let Some(b) = best {
        let stale = round.saturating_sub(b.round);
        if stale >= spec.stop.plateau_rounds {
            return Step::Finish(Finish::Failed(StopReason::Plateau {
                rounds: stale,
                best_round: b.round,
                best: b.mean_score,
            }));
        }
    }
    if let Some(reason) = budget_spent(spec, status) {
        return Step::Finish(Finish::Failed(reason));
    }
    first_run(spec, round + 1)
}

/// Whether `scores` meet `spec.target` (mean score, and pass rate when set).
pub(crate) fn target_reached(spec: &LlamaDuoMigrationSpec, scores: &Scores) -> bool {
    scores.mean >= spec.target.mean_score
        && spec.target.pass_rate.is_none_or(|p| scores.pass_rate >= p)
}

fn budget_spent(
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
) -> Option<StopReason> {
    let budget = spec.stop.max_service_tokens?;
    let used = status.service_tokens.total();
    (used >= budget).then_some(StopReason::TokenBudget { used, budget })
}
