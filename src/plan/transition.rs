//! Status transitions: the status that follows a [`Decision`]. Both executors write exactly
//! what these functions return, so the status is the same whoever runs the stages.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    BestRound, LlamaDuoMigrationStatus, Phase, RoundOutcome, RoundStatus, Stage, StageRecord,
    StageResult, StageRun,
};

use super::conditions::refresh;
use super::decision::{Decision, Finish, REASON_JOB_REJECTED, Stall, StopReason};

/// The status after `decision`, with `observedGeneration` set to `generation` and the
/// conditions recomputed at `now` (a condition's time moves only when it flips).
pub fn apply(
    status: &LlamaDuoMigrationStatus,
    decision: &Decision,
    generation: Option<i64>,
    now: &Time,
) -> LlamaDuoMigrationStatus {
    let mut next = status.clone();
    let mut stall: Option<Stall> = None;
    let mut failure = None;
    match decision {
        Decision::RecordResult { run, result } => {
            apply_result(&mut next, run, result);
            next.message = Some(result_message(run, result));
        }
        Decision::StartStage { run, config } => {
            start(&mut next, run);
            // In a cluster the config's root is the recorded one once there is one; locally it
            // is derived again each time, and the status says where it is now.
            next.artifacts = Some(config.context().artifacts.clone());
            // Trying a refused run again: it stays stalled until its Job is created.
            if let Some(s) = rejected(status, run) {
                next.message = Some(s.message.clone());
                stall = Some(s);
            }
        }
        Decision::Finish(Finish::Succeeded { round, mean_score }) => {
            succeed(&mut next, *round, *mean_score)
        }
        Decision::Finish(Finish::Failed(reason)) => {
            fail(&mut next, reason);
            failure = Some(reason.reason());
        }
        Decision::Suspend => {
            next.phase = Some(Phase::Suspended);
            next.message = Some(match &next.current {
                Some(run) => format!(
                    "suspended (spec.suspend) before round {} {} started",
                    run.round, run.stage
                ),
                None => format!("suspended (spec.suspend) after round {}", next.round),
            });
        }
        Decision::Wait { run } => {
            next.phase = Some(run.stage.phase());
            next.message = Some(running_message(run));
        }
        Decision::Stall(s) => {
            next.phase.get_or_insert(Phase::Pending);
            next.message = Some(s.message.clone());
            stall = Some(s.clone());
        }
        Decision::Idle => note_unapplied_edit(&mut next, generation),
    }
    next.observed_generation = generation;
    refresh(&mut next, stall.as_ref(), failure, generation, now);
    next
}

/// Marker of the note [`note_unapplied_edit`] appends to a finished migration's message.
const UNAPPLIED_EDIT: &str = " (spec generation";

/// A finished migration whose spec was edited since its last stage ran says so in its message:
/// `observedGeneration` moves on (the edit was seen), but it started nothing, and a user
/// watching a GitOps sync should not take that for an applied change.
fn note_unapplied_edit(status: &mut LlamaDuoMigrationStatus, generation: Option<i64>) {
    let last_run = status
        .rounds
        .iter()
        .flat_map(|r| r.stages.iter().filter_map(|s| s.generation))
        .max();
    let (Some(now), Some(ran)) = (generation, last_run) else {
        return;
    };
    let hint = match status.phase {
        Some(Phase::Succeeded) => {
            "a succeeded migration starts no new round (spec.serving changes still apply); create another migration to migrate again"
        }
        Some(Phase::Failed) => {
            "it goes on only when the change lifts what stopped it, e.g. a raised stop limit"
        }
        _ => return,
    };
    let Some(message) = status.message.as_mut() else {
        return;
    };
    if let Some(at) = message.find(UNAPPLIED_EDIT) {
        message.truncate(at);
    }
    if now > ran {
        message.push_str(&format!(
            "{UNAPPLIED_EDIT} {now} is newer than its last stage's, {ran}: {hint})"
        ));
    }
}

/// The stall of `run` when the API server refused to create it last time (Stalled with
/// [`REASON_JOB_REJECTED`] while it is the current run).
fn rejected(status: &LlamaDuoMigrationStatus, run: &StageRun) -> Option<Stall> {
    if status.current.as_ref().is_none_or(|c| c.name != run.name) {
        return None;
    }
    status
        .conditions
        .iter()
        .find(|c| c.type_ == super::CONDITION_STALLED && c.status == "True")
        .filter(|c| c.reason == REASON_JOB_REJECTED)
        .map(|c| Stall::new(c.reason.clone(), c.message.clone()))
}

/// The status of a migration whose spec cannot be used at all (for example it does not
/// deserialize), or whose run the API server refused to create: Stalled with the reason;
/// nothing else changes (`current` stays, so the refused run is the one tried again).
pub fn stalled(
    status: &LlamaDuoMigrationStatus,
    stall: &Stall,
    generation: Option<i64>,
    now: &Time,
) -> LlamaDuoMigrationStatus {
    apply(status, &Decision::Stall(stall.clone()), generation, now)
}

/// Record a finished run's result: tokens (round and total), the stage's numbers, the stage
/// record, the best round; clears `current`. Applying the same result twice changes nothing,
/// so a reconcile that reads a stale status cannot count tokens twice.
pub fn apply_result(status: &mut LlamaDuoMigrationStatus, run: &StageRun, result: &StageResult) {
    if status.current.as_ref().is_some_and(|c| c.name == run.name) {
        status.current = None;
    }
    let round = round_mut(status, run.round);
    if round
        .stage(run.stage)
        .is_some_and(|r| r.attempts >= run.attempt)
    {
        return;
    }
    round.service_tokens += result.service_tokens;
    if result.succeeded {
        match run.stage {
            Stage::Synthesize => {
                round.synthesized = result.synthesize.as_ref().map(|s| s.produced);
            }
            Stage::Train => {
                if let Some(t) = &result.train {
                    round.training_samples = Some(t.training_samples);
                    round.train_loss = Some(t.final_loss);
                    round.eval_loss = t.eval_loss;
                    round.best_epoch = t.best_epoch;
                    round.model_uri = Some(t.model_uri.clone());
                }
            }
            Stage::Evaluate => {
                round.scores = result.evaluate.as_ref().map(|e| e.scores);
                round.failed_judgements = result.evaluate.as_ref().map(|e| e.failed_judgements);
            }
        }
    }
    let record = StageRecord {
        stage: run.stage,
        attempts: run.attempt,
        succeeded: result.succeeded,
        message: result.message.clone(),
        duration_seconds: result.succeeded.then_some(result.duration_seconds),
        budget_exhausted: !result.succeeded && result.budget_exhausted,
        failure_class: (!result.succeeded).then(|| result.failure_class.unwrap_or_default()),
        generation: run.generation,
    };
    match round.stages.iter_mut().find(|s| s.stage == run.stage) {
        Some(existing) => *existing = record,
        None => round.stages.push(record),
    }
    let candidate = match (round.scores, &round.model_uri) {
        (Some(s), Some(uri)) if result.succeeded && run.stage == Stage::Evaluate => {
            Some(BestRound {
                round: run.round,
                mean_score: s.mean,
                model_uri: uri.clone(),
            })
        }
        _ => None,
    };
    status.service_tokens += result.service_tokens;
    if let Some(c) = candidate
        && status
            .best
            .as_ref()
            .is_none_or(|b| c.mean_score > b.mean_score)
    {
        status.best = Some(c);
    }
}

fn result_message(run: &StageRun, result: &StageResult) -> String {
    if result.succeeded {
        format!(
            "round {}: {} succeeded (attempt {}, {:.0}s)",
            run.round, run.stage, run.attempt, result.duration_seconds
        )
    } else {
        format!(
            "round {}: {} attempt {} failed{}: {}",
            run.round,
            run.stage,
            run.attempt,
            if result.is_permanent_failure() {
                " (permanent, not retried)"
            } else {
                ""
            },
            result.message.as_deref().unwrap_or("no reason given")
        )
    }
}

fn start(status: &mut LlamaDuoMigrationStatus, run: &StageRun) {
    for r in status.rounds.iter_mut() {
        // Earlier rounds were below target; one a stop rule had ended is so too once the
        // migration goes on.
        if r.round < run.round && matches!(r.outcome, None | Some(RoundOutcome::Stopped)) {
            r.outcome = Some(if r.round == 0 {
                RoundOutcome::Baseline
            } else {
                RoundOutcome::BelowTarget
            });
        }
    }
    // A round resumed after its stage failed is running again.
    round_mut(status, run.round).outcome = None;
    status.round = run.round;
    status.phase = Some(run.stage.phase());
    status.message = Some(running_message(run));
    status.current = Some(run.clone());
}

/// The message of a stage run in flight. Starting a run and waiting for it write the same one,
/// so the reconcile that the new Job triggers finds nothing to change and writes no status
/// (one status apply per stage run instead of two: measured on the API server under load).
fn running_message(run: &StageRun) -> String {
    format!(
        "round {}: {} running (attempt {}, {})",
        run.round, run.stage, run.attempt, run.name
    )
}

fn succeed(status: &mut LlamaDuoMigrationStatus, round: u32, mean_score: f64) {
    status.current = None;
    status.phase = Some(Phase::Succeeded);
    let r = round_mut(status, round);
    r.outcome = Some(RoundOutcome::TargetReached);
    let model_uri = r.model_uri.clone().unwrap_or_default();
    status.best = Some(BestRound {
        round,
        mean_score,
        model_uri: model_uri.clone(),
    });
    status.message = Some(format!(
        "round {round} reached the target with mean score {mean_score:.2}; best model {model_uri}"
    ));
}

fn fail(status: &mut LlamaDuoMigrationStatus, reason: &StopReason) {
    status.current = None;
    status.phase = Some(Phase::Failed);
    if let Some(last) = status.rounds.last_mut()
        && last.outcome.is_none()
    {
        last.outcome = Some(match reason {
            StopReason::StageFailed { .. } => RoundOutcome::Failed,
            _ if last.round == 0 && last.scores.is_some() => RoundOutcome::Baseline,
            _ => RoundOutcome::Stopped,
        });
    }
    status.message = Some(reason.to_string());
}

/// The entry of `round`, created (in order) when missing.
fn round_mut(status: &mut LlamaDuoMigrationStatus, round: u32) -> &mut RoundStatus {
    let index = match status.rounds.iter().position(|r| r.round == round) {
        Some(i) => i,
        None => {
            status.rounds.push(RoundStatus {
                round,
                ..RoundStatus::default()
            });
            status.rounds.sort_by_key(|r| r.round);
            status
                .rounds
                .iter()
                .position(|r| r.round == round)
                .unwrap_or(status.rounds.len() - 1)
        }
    };
    &mut status.rounds[index]
}
