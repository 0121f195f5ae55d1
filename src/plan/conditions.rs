//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) plus `TargetReached`, computed from
//! the status alone so that writing the same state twice changes nothing: a condition's
//! `lastTransitionTime` moves only when its `status` flips, and an unchanged status write does
//! not retrigger a reconcile.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{LlamaDuoMigrationStatus, Phase};

use super::decision::Stall;

/// True once the target is reached and the best model promoted.
pub const CONDITION_READY: &str = "Ready";
/// True while the controller is working towards the target (kstatus).
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// True when the migration cannot progress without a change (kstatus).
pub const CONDITION_STALLED: &str = "Stalled";
/// Whether a round has reached the target.
pub const CONDITION_TARGET_REACHED: &str = "TargetReached";
/// Whether the serving Deployment has its replicas available (written by the operator only
/// when `spec.serving` was enabled; never touched by [`refresh`]).
pub const CONDITION_SERVING: &str = "Serving";

/// One desired condition before times are assigned.
struct Desired {
    type_: &'static str,
    status: &'static str,
    reason: String,
    message: String,
}

/// Set or update one condition. `lastTransitionTime` is kept unless `status` flips; reason,
/// message and observedGeneration are always updated.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
                c.status = status.to_string();
            }
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// Give every condition of `next` whose status equals the one it had in `previous` (the
/// status as last written) that condition's `lastTransitionTime`. Conditions are computed in
/// layers (the round decision, then serving may override `Ready`): an intermediate flip in
/// memory is not a transition anyone saw, and moving the time for it would make every
/// reconcile write a changed status.
pub fn keep_transition_times(
    next: &mut LlamaDuoMigrationStatus,
    previous: &LlamaDuoMigrationStatus,
) {
    for c in next.conditions.iter_mut() {
        if let Some(p) = previous
            .conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
        {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
}

/// Recompute all four conditions from `status` (its phase, message and rounds).
///
/// `stall` marks a blocking condition; `failure_reason` is the CamelCase reason of a Failed
/// phase (kept from the existing Stalled condition when `None`).
pub(crate) fn refresh(
    status: &mut LlamaDuoMigrationStatus,
    stall: Option<&Stall>,
    failure_reason: Option<&str>,
    generation: Option<i64>,
    now: &Time,
) {
    let phase = status.phase.unwrap_or_default();
    let message = status.message.clone().unwrap_or_default();
    let existing_failure = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_STALLED && c.status == "True")
        .map(|c| c.reason.clone());
    let mut desired = Vec::with_capacity(4);
    let mut push = |type_, status, reason: &str, message: &str| {
        desired.push(Desired {
            type_,
            status,
            reason: reason.to_string(),
            message: message.to_string(),
        })
    };
    match (stall, phase) {
        (Some(s), _) => {
            push(CONDITION_READY, "False", &s.reason, &s.message);
            push(CONDITION_RECONCILING, "False", &s.reason, &s.message);
            push(CONDITION_STALLED, "True", &s.reason, &s.message);
        }
        (None, Phase::Succeeded) => {
            push(CONDITION_READY, "True", "TargetReached", &message);
            push(CONDITION_RECONCILING, "False", "Succeeded", &message);
            push(CONDITION_STALLED, "False", "Succeeded", &message);
        }
        (None, Phase::Failed) => {
            let reason = failure_reason
                .map(str::to_string)
                .or(existing_failure)
                .unwrap_or_else(|| "Failed".to_string());
            push(CONDITION_READY, "False", &reason, &message);
            push(CONDITION_RECONCILING, "False", &reason, &message);
            push(CONDITION_STALLED, "True", &reason, &message);
        }
        (None, Phase::Suspended) => {
            push(CONDITION_READY, "False", "Suspended", &message);
            push(CONDITION_RECONCILING, "False", "Suspended", &message);
            push(CONDITION_STALLED, "False", "Suspended", &message);
        }
        (None, _) => {
            push(CONDITION_READY, "False", "Progressing", &message);
            push(CONDITION_RECONCILING, "True", "Progressing", &message);
            push(CONDITION_STALLED, "False", "Progressing", &message);
        }
    }
    let scored = status
        .rounds
        .iter()
        .filter_map(|r| r.scores.map(|s| (r.round, s.mean)))
        .fold(None::<(u32, f64)>, |best, (r, m)| match best {
            Some((_, bm)) if bm >= m => best,
            _ => Some((r, m)),
        });
    match (phase, scored) {
        (Phase::Succeeded, _) => push(
            CONDITION_TARGET_REACHED,
            "True",
            "TargetReached",
            &status
                .best
                .as_ref()
                .map(|b| format!("round {} reached mean score {:.2}", b.round, b.mean_score))
                .unwrap_or_default(),
        ),
        (_, Some((round, mean))) => push(
            CONDITION_TARGET_REACHED,
            "False",
            "BelowTarget",
            &format!("best mean score so far {mean:.2} (round {round})"),
        ),
        (_, None) => push(
            CONDITION_TARGET_REACHED,
            "Unknown",
            "NotEvaluated",
            "no round has been evaluated yet",
        ),
    }
    for d in desired {
        set_condition(
            &mut status.conditions,
            d.type_,
            d.status,
            &d.reason,
            &d.message,
            generation,
            now,
        );
    }
}
