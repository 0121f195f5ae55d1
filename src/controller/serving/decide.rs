//! The serving decision, pure in the style of `plan()`: from the spec, the status that the
//! round decision produced and the observed Deployment and Service, decide whether to apply
//! them, delete them or do nothing, and what `status.endpoint` and the `Serving` condition
//! say.
//!
//! Serving runs when `spec.serving.enabled`, `status.best` is set and the migration ended in a
//! way `spec.serving.when` serves: `Succeeded`, or with `best` also `Failed` (a stop rule or a
//! failed stage below the target; see [`wanted`]). The objects are applied whenever their
//! rendering hash differs from the one recorded on the live objects (a better best round
//! changes `--model`, which rolls the pods). When serving should not run, objects this
//! migration controls are deleted. `status.endpoint` is set before the first apply and cleared
//! only after the deletes, so an unset endpoint means no serving object of this migration
//! exists and a migration that never served costs no API call.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::api::{BestRound, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, Phase, ServingWhen};
use crate::plan::{
    CONDITION_READY, CONDITION_RECONCILING, CONDITION_SERVING, CONDITION_STALLED, serving_name,
    set_condition,
};

use super::super::pod::controlled_by;
use super::render::{
    HASH_ANNOTATION, ROUND_ANNOTATION, ServingInputs, ServingObjects, ServingRenderError, endpoint,
    render,
};

/// `Serving=True`: the Deployment has its desired replicas updated and available.
pub const REASON_AVAILABLE: &str = "Available";
/// `Serving=False`: the Deployment is being created or rolled out, or its pods are not ready.
pub const REASON_PROGRESSING: &str = "DeploymentProgressing";
/// `Serving=False`: the rollout exceeded its progress deadline (Deployment condition
/// `Progressing=False`, `ProgressDeadlineExceeded`).
pub const REASON_FAILED: &str = "DeploymentFailed";
/// `Serving=False`: `spec.serving.replicas` is 0.
pub const REASON_SCALED_TO_ZERO: &str = "ScaledToZero";
/// `Serving=False`: serving is enabled but the migration has not succeeded (no model yet, or
/// it failed and `spec.serving.when` is `succeeded`); with `when: best`, it has not stopped
/// yet.
pub const REASON_NOT_SUCCEEDED: &str = "NotSucceeded";
/// `Serving=False`: `spec.serving.when` is `best` and the migration stopped, but no round was
/// evaluated, so there is no model to serve.
pub const REASON_NO_MODEL: &str = "NoModel";
/// `Serving=False`: a Deployment or Service of the serving name exists and is not controlled
/// by this migration; it is left alone.
pub const REASON_NAME_CONFLICT: &str = "NameConflict";
/// `Serving=False`: the spec cannot be rendered into serving objects (e.g. no storage).
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// `Serving=False`: `spec.serving.enabled` was turned off; the objects are deleted.
pub const REASON_DISABLED: &str = "Disabled";

/// The live serving objects (by the serving name), as read from the API server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServingObservation {
    /// The Deployment, if one exists.
    pub deployment: Option<Deployment>,
    /// The Service, if one exists.
    pub service: Option<Service>,
}

/// What to do with the serving objects.
#[derive(Clone, Debug, PartialEq)]
pub enum ServingAction {
    /// Leave them as they are.
    Nothing,
    /// Server-side apply the Deployment and the Service.
    Apply {
        /// The desired objects.
        objects: Box<ServingObjects>,
        /// The previously served round (from the live Deployment); `None` when the
        /// Deployment does not exist yet (serving starts).
        previous: Option<Previous>,
    },
    /// Delete the objects this migration controls.
    Delete {
        /// Name of the Deployment to delete, if it exists and is ours.
        deployment: Option<String>,
        /// Name of the Service to delete, if it exists and is ours.
        service: Option<String>,
        /// The round the Deployment served, when known.
        round: Option<u32>,
    },
}

/// The live Deployment an update replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    /// The round it served, when its annotation says.
    pub round: Option<u32>,
}

/// The desired `Serving` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServingCondition {
    /// "True" or "False".
    pub status: &'static str,
    /// One of the `REASON_*` constants.
    pub reason: &'static str,
    /// What a person reads.
    pub message: String,
}

/// The serving decision and the status it implies.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingPlan {
    /// What to do with the objects.
    pub action: ServingAction,
    /// The new `status.endpoint`.
    pub endpoint: Option<String>,
    /// The new `Serving` condition; `None` leaves the conditions alone (serving never enabled).
    pub condition: Option<ServingCondition>,
}

/// The best round when serving should run: enabled, with a best round, in a phase
/// `spec.serving.when` serves.
///
/// `best` serves a `Failed` migration whatever stopped it: `status.best` is only ever a round
/// whose evaluate succeeded, with the model its train stage wrote, so the model is as good as
/// its score whether the budget, a plateau, `stop.maxRounds` or a later stage's failure ended
/// the rounds. The user chose to accept a score below the target; the `Serving` condition
/// says how far below.
pub fn wanted<'a>(
    spec: &LlamaDuoMigrationSpec,
    status: &'a LlamaDuoMigrationStatus,
) -> Option<&'a BestRound> {
    if !spec.serving.enabled {
        return None;
    }
    let best = status.best.as_ref()?;
    let serves = match (spec.serving.when, status.phase) {
        (_, Some(Phase::Succeeded)) => true,
        (ServingWhen::Best, Some(Phase::Failed)) => true,
        // An edit (more rounds, a lower target) resumed a stopped migration that serves: keep
        // serving, rolling to a better round as soon as one is evaluated, instead of taking
        // the endpoint away from its clients for the rounds the edit asked for. An endpoint
        // in status is how the decision knows serving runs (it is set before the first apply).
        (ServingWhen::Best, _) => status.endpoint.is_some(),
        (ServingWhen::Succeeded, _) => false,
    };
    serves.then_some(best)
}

/// Whether the live objects must be read: serving should run, or the status says objects may
/// exist (`status.endpoint` is set).
pub fn needs_observation(spec: &LlamaDuoMigrationSpec, status: &LlamaDuoMigrationStatus) -> bool {
    wanted(spec, status).is_some() || status.endpoint.is_some()
}

/// Decide what to do with the serving objects of a migration whose next status is `status`.
/// Errors only when an object cannot be serialized for its hash.
pub fn plan_serving(
    inputs: &ServingInputs<'_>,
    status: &LlamaDuoMigrationStatus,
    observed: &ServingObservation,
) -> Result<ServingPlan, serde_json::Error> {
    let spec = inputs.spec;
    let name = serving_name(inputs.migration);
    let ours = |meta: &ObjectMeta| controlled_by(meta.owner_references.as_ref(), inputs.uid);
    let Some(best) = wanted(spec, status) else {
        let deployment = observed
            .deployment
            .as_ref()
            .filter(|d| ours(&d.metadata))
            .map(|_| name.clone());
        let service = observed
            .service
            .as_ref()
            .filter(|s| ours(&s.metadata))
            .map(|_| name.clone());
        let action = if deployment.is_some() || service.is_some() {
            ServingAction::Delete {
                round: observed.deployment.as_ref().and_then(served_round),
                deployment,
                service,
            }
        } else {
            ServingAction::Nothing
        };
        let had_condition = status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_SERVING);
        let condition = if spec.serving.enabled {
            Some(not_served(spec, status))
        } else if had_condition {
            Some(not_ready(
                REASON_DISABLED,
                "spec.serving.enabled is false; the serving Deployment and Service are removed"
                    .into(),
            ))
        } else {
            None
        };
        return Ok(ServingPlan {
            action,
            endpoint: None,
            condition,
        });
    };
    let foreign = [
        (
            "Deployment",
            observed.deployment.as_ref().map(|d| &d.metadata),
        ),
        ("Service", observed.service.as_ref().map(|s| &s.metadata)),
    ]
    .into_iter()
    .find_map(|(kind, meta)| meta.filter(|m| !ours(m)).map(|_| kind));
    if let Some(kind) = foreign {
        return Ok(ServingPlan {
            action: ServingAction::Nothing,
            endpoint: None,
            condition: Some(not_ready(
                REASON_NAME_CONFLICT,
                format!(
                    "{kind} {}/{name} exists but is not controlled by this LlamaDuoMigration; delete or rename it",
                    inputs.namespace
                ),
            )),
        });
    }
    let objects = match render(inputs, best) {
        Ok(objects) => objects,
        Err(ServingRenderError::Spec(e)) => {
            return Ok(ServingPlan {
                action: ServingAction::Nothing,
                endpoint: status.endpoint.clone(),
                condition: Some(not_ready(REASON_INVALID_SPEC, e.to_string())),
            });
        }
        Err(ServingRenderError::Serialize(e)) => return Err(e),
    };
    let endpoint = Some(endpoint(inputs.migration, inputs.namespace));
    let live_hash = |meta: Option<&ObjectMeta>| {
        meta.and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(HASH_ANNOTATION))
            .cloned()
    };
    let deployment_current = live_hash(observed.deployment.as_ref().map(|d| &d.metadata))
        .as_deref()
        == Some(objects.deployment_hash.as_str());
    let service_current = live_hash(observed.service.as_ref().map(|s| &s.metadata)).as_deref()
        == Some(objects.service_hash.as_str());
    let target = format!(
        "Deployment {name} serving round {} ({}){}",
        best.round,
        best.model_uri,
        below_target(spec, status, best).unwrap_or_default()
    );
    match &observed.deployment {
        Some(d) if deployment_current && service_current => Ok(ServingPlan {
            action: ServingAction::Nothing,
            endpoint,
            condition: Some(availability(d, spec.serving.replicas, &target)),
        }),
        live => {
            let previous = live.as_ref().map(|d| Previous {
                round: served_round(d),
            });
            let verb = if previous.is_some() {
                "updating"
            } else {
                "creating"
            };
            Ok(ServingPlan {
                action: ServingAction::Apply {
                    objects: Box::new(objects),
                    previous,
                },
                endpoint,
                condition: Some(not_ready(REASON_PROGRESSING, format!("{verb} {target}"))),
            })
        }
    }
}

/// Write the plan's endpoint and `Serving` condition into `status` (the condition's time moves
/// only when its status flips; the other conditions are not touched).
pub fn apply_serving(
    status: &mut LlamaDuoMigrationStatus,
    plan: &ServingPlan,
    generation: Option<i64>,
    now: &Time,
) {
    status.endpoint = plan.endpoint.clone();
    if let Some(c) = &plan.condition {
        set_condition(
            &mut status.conditions,
            CONDITION_SERVING,
            c.status,
            c.reason,
            &c.message,
            generation,
            now,
        );
        gate_ready_on_serving(status, c, generation, now);
    }
}

/// A succeeded migration whose model is to be served is `Ready` only once the endpoint
/// serves: Flux's `wait`, Argo CD's health check and `kubectl wait --for=condition=Ready` gate
/// the applications that call the endpoint, and must not release them onto a Deployment still
/// rolling out. A rollout in progress keeps the migration `Reconciling`; one that cannot
/// finish without a change (deadline exceeded, a foreign object under the name, a spec that
/// does not render) makes it `Stalled`. Serving scaled to zero or turned off gates nothing.
fn gate_ready_on_serving(
    status: &mut LlamaDuoMigrationStatus,
    serving: &ServingCondition,
    generation: Option<i64>,
    now: &Time,
) {
    if status.phase != Some(Phase::Succeeded)
        || matches!(
            serving.reason,
            REASON_AVAILABLE | REASON_SCALED_TO_ZERO | REASON_DISABLED
        )
    {
        return;
    }
    let message = format!("target reached; not serving yet: {}", serving.message);
    let in_progress = serving.reason == REASON_PROGRESSING;
    let (reconciling, stalled) = if in_progress {
        ("True", "False")
    } else {
        ("False", "True")
    };
    for (type_, value) in [
        (CONDITION_READY, "False"),
        (CONDITION_RECONCILING, reconciling),
        (CONDITION_STALLED, stalled),
    ] {
        set_condition(
            &mut status.conditions,
            type_,
            value,
            serving.reason,
            &message,
            generation,
            now,
        );
    }
}

/// The round a live Deployment serves, from its annotation.
pub fn served_round(d: &Deployment) -> Option<u32> {
    d.metadata
        .annotations
        .as_ref()?
        .get(ROUND_ANNOTATION)?
        .parse()
        .ok()
}

fn not_ready(reason: &'static str, message: String) -> ServingCondition {
    ServingCondition {
        status: "False",
        reason,
        message,
    }
}

/// The `Serving` condition of an enabled migration that serves nothing (see [`wanted`]).
fn not_served(spec: &LlamaDuoMigrationSpec, status: &LlamaDuoMigrationStatus) -> ServingCondition {
    let when = spec.serving.when;
    let stop = stop_reason(status);
    let (reason, message) = match (status.phase, &status.best, when) {
        (Some(Phase::Failed), None, ServingWhen::Best) => (
            REASON_NO_MODEL,
            format!(
                "the migration stopped on {stop} before any round was evaluated: there is no model to serve (spec.serving.when: best)"
            ),
        ),
        (Some(Phase::Failed), None, ServingWhen::Succeeded) => (
            REASON_NOT_SUCCEEDED,
            format!(
                "the migration stopped on {stop} before reaching its target: there is no model to serve"
            ),
        ),
        // Only under `succeeded`: `best` serves a failed migration that has a best round.
        (Some(Phase::Failed), Some(b), _) => (
            REASON_NOT_SUCCEEDED,
            format!(
                "the migration stopped on {stop} below its target: nothing is served (spec.serving.when: succeeded; set it to best to serve round {}'s model, mean score {:.2})",
                b.round, b.mean_score
            ),
        ),
        (Some(Phase::Succeeded), _, _) => (
            REASON_NOT_SUCCEEDED,
            "the migration succeeded without a best round".into(),
        ),
        (phase, _, ServingWhen::Best) => (
            REASON_NOT_SUCCEEDED,
            format!(
                "waiting for the migration to stop (phase {:?}); spec.serving.when: best then serves its best round",
                phase.unwrap_or_default()
            ),
        ),
        (phase, _, ServingWhen::Succeeded) => (
            REASON_NOT_SUCCEEDED,
            format!(
                "waiting for the migration to succeed (phase {:?})",
                phase.unwrap_or_default()
            ),
        ),
    };
    not_ready(reason, message)
}

/// Why a `Failed` migration stopped: the reason of its `Stalled=True` condition, where the
/// round decision puts the stop rule (`MaxRoundsReached`, `Plateau`, `TokenBudgetExhausted`,
/// `StageFailed`).
fn stop_reason(status: &LlamaDuoMigrationStatus) -> &str {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_STALLED && c.status == "True")
        .map_or("Failed", |c| c.reason.as_str())
}

/// What the `Serving` condition adds when the served round did not reach the target (served
/// only under `spec.serving.when: best`): its scores against the target, and why the
/// migration stopped or that it runs on. `None` for a succeeded migration.
fn below_target(
    spec: &LlamaDuoMigrationSpec,
    status: &LlamaDuoMigrationStatus,
    best: &BestRound,
) -> Option<String> {
    if status.phase == Some(Phase::Succeeded) {
        return None;
    }
    let target = &spec.target;
    let mut scores = format!(
        "mean score {:.2}, target {:.2}",
        best.mean_score, target.mean_score
    );
    // The pass rate is part of the target when set: a mean above it can still fall short.
    let pass_rate = status
        .rounds
        .iter()
        .find(|r| r.round == best.round)
        .and_then(|r| r.scores)
        .map(|s| s.pass_rate);
    if let (Some(want), Some(got)) = (target.pass_rate, pass_rate) {
        scores.push_str(&format!("; pass rate {got:.2}, target {want:.2}"));
    }
    let why = match status.phase {
        Some(Phase::Failed) => format!("the migration stopped on {}", stop_reason(status)),
        phase => format!(
            "the migration runs on (phase {:?}) and serving follows its best round",
            phase.unwrap_or_default()
        ),
    };
    Some(format!(
        ", the best round's model, below the target ({scores}): {why} (spec.serving.when: best)"
    ))
}

/// The `Serving` condition of a Deployment whose live rendering is the desired one, judged as
/// `kubectl rollout status` does: the controller saw the latest generation, every desired
/// replica is updated, no old replica remains, every replica is available.
fn availability(d: &Deployment, replicas: i32, target: &str) -> ServingCondition {
    let progressing = |detail: String| not_ready(REASON_PROGRESSING, format!("{target}: {detail}"));
    let status = d.status.clone().unwrap_or_default();
    let deadline = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.status.as_deref() == Some("False")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = deadline {
        return not_ready(
            REASON_FAILED,
            format!(
                "{target}: {}",
                c.message.as_deref().unwrap_or("progress deadline exceeded")
            ),
        );
    }
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return progressing(format!(
            "the Deployment controller has not yet observed generation {generation}"
        ));
    }
    if replicas == 0 {
        return not_ready(
            REASON_SCALED_TO_ZERO,
            format!("{target}: spec.serving.replicas is 0"),
        );
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < replicas {
        return progressing(format!("{updated} of {replicas} replicas updated"));
    }
    if total > updated {
        return progressing(format!(
            "{} old replicas are pending termination",
            total - updated
        ));
    }
    if available < replicas {
        return progressing(format!("{available} of {replicas} replicas available"));
    }
    ServingCondition {
        status: "True",
        reason: REASON_AVAILABLE,
        message: format!("{target}: {available} of {replicas} replicas available"),
    }
}
