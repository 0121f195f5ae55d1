//! One reconcile of a `LlamaDuoMigration`: observe -> plan -> act.
//!
//! The migration is watched as a `DynamicObject` and parsed here, so a spec that does not
//! deserialize becomes a Stalled status with the field path instead of a watch error that
//! would stop every other migration (or a hot loop). Status is written first (server-side
//! apply, one field manager, status subresource) and only when it changed; then the Job is
//! created; then the Event is published.
//!
//! The status write carries the `resourceVersion` of the object the decision was made from,
//! so the API server refuses it (409 Conflict) when that object was stale: a reconcile
//! triggered by a Job event can read the migration from the watch cache before the cache has
//! the status this operator just wrote, and a forced apply of a status decided from that old
//! status would erase the newer one (a running stage without `status.current`). A refused
//! write acts on nothing and requeues soon, so the next reconcile decides from the fresh
//! object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use crate::api::{
    LlamaDuoMigration, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, Stage, StageRun,
};
use crate::plan::{self, Decision, Finish, MigrationId, Observation, Stall};

use super::Context;
use super::error::Error;
use super::job::{FIELD_MANAGER, JobInputs, build_job};
use super::observe::observe;
use super::progress;
use super::serving::{self, ServingInputs, ServingObservation};

/// Requeue while a stage runs (Job events normally come first).
const WAIT_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue after progress (the status write's own watch event normally comes first).
const PROGRESS_REQUEUE: Duration = Duration::from_secs(5);
/// Requeue of finished, suspended or invalid migrations: only a change moves them.
const IDLE_REQUEUE: Duration = Duration::from_secs(3600);
/// Requeue after a status write refused as stale. The watch event of the write that made it
/// stale normally triggers the next reconcile first; this is the fallback.
const STALE_REQUEUE: Duration = Duration::from_secs(1);

/// What [`write_status`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StatusWrite {
    /// The status was already what the decision renders: nothing was sent.
    Unchanged,
    /// The status was written; the object is now at this `resourceVersion` (when the
    /// answer carried one).
    Written(Option<String>),
    /// The API server refused the write because the object changed since the read it was
    /// decided from (409 Conflict on the resourceVersion precondition).
    Stale,
}

/// Reconcile one migration; failures are published as Warning Events and counted.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&obj, &ctx).await;
    ctx.metrics.reconciled(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics.failed(e.reason());
        tracing::warn!(migration = %obj.name_any(), error = %e.chain(), "reconcile failed");
        publish(
            &ctx,
            &obj,
            EventType::Warning,
            e.reason(),
            "Reconcile",
            e.chain(),
        )
        .await;
    }
    result
}

/// Requeue a failed reconcile with a per-migration exponential backoff.
pub fn error_policy(obj: Arc<DynamicObject>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(&key(&obj)))
}

fn key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

async fn reconcile_inner(obj: &DynamicObject, ctx: &Context) -> Result<Action, Error> {
    let name = obj.name_any();
    // Being deleted (a foreground delete waits for the garbage collector to remove the Jobs
    // and serving objects first): act on nothing, or a Job the collector just deleted would be
    // created again, and its Deployment re-applied, for as long as the deletion takes.
    if obj.metadata.deletion_timestamp.is_some() {
        tracing::debug!(migration = %key(obj), "being deleted; not acting");
        return Ok(Action::await_change());
    }
    let namespace = obj.namespace().ok_or_else(|| Error::MissingObjectKey {
        name: name.clone(),
        field: "namespace",
    })?;
    let uid = obj.uid().ok_or_else(|| Error::MissingObjectKey {
        name: name.clone(),
        field: "uid",
    })?;
    let resource_version = obj
        .resource_version()
        .ok_or_else(|| Error::MissingObjectKey {
            name: name.clone(),
            field: "resourceVersion",
        })?;
    // Every status write below is conditional on the object this reconcile decides from.
    let target = StatusTarget {
        namespace: &namespace,
        name: &name,
        resource_version: &resource_version,
    };
    let generation = obj.metadata.generation;
    let status = parse_status(obj).map_err(|message| Error::InvalidStatus {
        name: name.clone(),
        message,
    })?;
    let now = Time(Timestamp::now());
    let spec = match parse_spec(obj) {
        Ok(spec) => spec,
        Err(message) => {
            // Waits for a spec change; writing the same stall again is a no-op.
            let stall = Stall::new("InvalidSpec", message);
            let next = plan::stalled(&status, &stall, generation, &now);
            let written = write_status(ctx, &target, &status, &next).await?;
            if written == StatusWrite::Stale {
                return Ok(stale(ctx, obj));
            }
            if matches!(written, StatusWrite::Written(_)) {
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    stall.message,
                )
                .await;
            }
            ctx.metrics.decided("stall");
            return Ok(Action::requeue(IDLE_REQUEUE));
        }
    };
    let id = MigrationId::new(&namespace, &name).with_uid(&uid);
    let run = plan::run_to_observe(&id, &spec, &status, generation);
    let observation = match &run {
        Some(run) => observe(ctx, &namespace, &uid, &spec, run).await?,
        None => Observation::Missing,
    };
    let decision = plan::plan(&id, &spec, &status, generation, &observation);
    ctx.metrics.decided(decision.kind());
    tracing::info!(migration = %key(obj), decision = decision.kind(), "planned");
    let mut next = plan::apply(&status, &decision, generation, &now);
    if let Decision::Wait { run } = &decision
        && plan::progress_due(&next, &now, ctx.config.progress_interval)
    {
        let read = progress::read(ctx, &namespace, run).await;
        plan::record_progress(&mut next, read.as_ref(), &now);
    }
    // Serving follows the status the round decision produced, so a migration that succeeds
    // in this reconcile starts serving in it too.
    let observed = if serving::needs_observation(&spec, &next) {
        serving::observe(ctx, &namespace, &name).await?
    } else {
        ServingObservation::default()
    };
    let artifacts = next.artifacts.clone();
    let inputs = ServingInputs {
        migration: &name,
        namespace: &namespace,
        uid: &uid,
        spec: &spec,
        default_image: &ctx.config.trainer_image,
        artifacts: artifacts.as_deref(),
    };
    let serving =
        serving::plan_serving(&inputs, &next, &observed).map_err(|source| Error::Serialize {
            what: "serving objects",
            source,
        })?;
    // Deletes come before the status write that clears the endpoint: an endpoint in status
    // is how a later reconcile knows serving objects may still exist.
    serving::delete(ctx, &namespace, &serving).await?;
    serving::apply_serving(&mut next, &serving, generation, &now);
    plan::keep_transition_times(&mut next, &status);
    let (changed, resource_version) = match write_status(ctx, &target, &status, &next).await? {
        // Decided from a stale read: acting on it could repeat or undo newer work.
        StatusWrite::Stale => return Ok(stale(ctx, obj)),
        StatusWrite::Written(rv) => (true, rv.unwrap_or_else(|| resource_version.clone())),
        StatusWrite::Unchanged => (false, resource_version.clone()),
    };
    let acted = act(ctx, obj, &namespace, &uid, &spec, &decision, changed).await?;
    if let Acted::Rejected(stall) = acted {
        // Recorded on top of the status just written, on the condition that it is unchanged.
        let target = StatusTarget {
            resource_version: &resource_version,
            ..target
        };
        let stalled = plan::stalled(&next, &stall, generation, &now);
        match write_status(ctx, &target, &next, &stalled).await? {
            StatusWrite::Stale => return Ok(stale(ctx, obj)),
            StatusWrite::Written(_) => {
                tracing::warn!(migration = %key(obj), message = %stall.message, "Job refused");
                publish(
                    ctx,
                    obj,
                    EventType::Warning,
                    &stall.reason,
                    "StartStage",
                    stall.message,
                )
                .await;
            }
            StatusWrite::Unchanged => {}
        }
        ctx.metrics.migration(&namespace, &name, &stalled);
        serving::act(ctx, obj, &serving).await?;
        return Ok(Action::requeue(ctx.backoff(&key(obj))));
    }
    ctx.metrics.migration(&namespace, &name, &next);
    serving::act(ctx, obj, &serving).await?;
    Ok(match decision {
        Decision::Stall(_) => Action::requeue(ctx.backoff(&key(obj))),
        Decision::Wait { .. } => {
            ctx.reset_backoff(&key(obj));
            // Often enough to keep status.current.progress as fresh as its interval allows.
            let every = ctx.config.progress_interval;
            Action::requeue(if every.is_zero() {
                WAIT_REQUEUE
            } else {
                every.min(WAIT_REQUEUE)
            })
        }
        Decision::Idle | Decision::Suspend | Decision::Finish(_) => {
            ctx.reset_backoff(&key(obj));
            Action::requeue(IDLE_REQUEUE)
        }
        Decision::StartStage { .. } | Decision::RecordResult { .. } => {
            ctx.reset_backoff(&key(obj));
            Action::requeue(PROGRESS_REQUEUE)
        }
    })
}

/// The spec, or a message naming the field that does not deserialize.
pub fn parse_spec(obj: &DynamicObject) -> Result<LlamaDuoMigrationSpec, String> {
    let Some(spec) = obj.data.get("spec") else {
        return Err("spec is missing".into());
    };
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("spec: {inner}")
        } else {
            format!("spec.{path}: {inner}")
        }
    })
}

/// The recorded status (empty when none was written yet); `Err` with the field path when it
/// does not parse.
fn parse_status(obj: &DynamicObject) -> Result<LlamaDuoMigrationStatus, String> {
    match obj.data.get("status") {
        None | Some(serde_json::Value::Null) => Ok(LlamaDuoMigrationStatus::default()),
        Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            format!("status.{path}: {}", e.into_inner())
        }),
    }
}

/// The end of a reconcile whose status write was refused as stale: no Event, no failure
/// count, no backoff step; a debug line and a quick requeue.
fn stale(ctx: &Context, obj: &DynamicObject) -> Action {
    ctx.metrics.stale_status_write();
    tracing::debug!(
        migration = %key(obj),
        resource_version = obj.resource_version().unwrap_or_default(),
        "status write refused: decided from a stale read; requeueing"
    );
    Action::requeue(STALE_REQUEUE)
}

/// The migration a status write goes to, and the `resourceVersion` it was read at.
struct StatusTarget<'a> {
    namespace: &'a str,
    name: &'a str,
    resource_version: &'a str,
}

/// The server-side apply body of a status write: `metadata.resourceVersion` makes it
/// conditional (the API server answers 409 Conflict when the object has changed since).
pub(super) fn status_patch(
    name: &str,
    resource_version: &str,
    next: &LlamaDuoMigrationStatus,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": LlamaDuoMigration::api_version(&()),
        "kind": LlamaDuoMigration::kind(&()),
        "metadata": {"name": name, "resourceVersion": resource_version},
        "status": next,
    })
}

/// Server-side apply `next` to the status subresource when it differs from `current`, on
/// the condition that the object is still at `target.resource_version`.
async fn write_status(
    ctx: &Context,
    target: &StatusTarget<'_>,
    current: &LlamaDuoMigrationStatus,
    next: &LlamaDuoMigrationStatus,
) -> Result<StatusWrite, Error> {
    if current == next {
        return Ok(StatusWrite::Unchanged);
    }
    // Untyped, so the answer parses even when the spec it carries does not.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), target.namespace, &ctx.api_resource);
    let body = status_patch(target.name, target.resource_version, next);
    // Forced: this operator owns the status; the precondition, not field ownership, is what
    // keeps a write from replacing a status it has not seen.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(target.name, &params, &Patch::Apply(&body))
        .await
    {
        Ok(written) => Ok(StatusWrite::Written(written.metadata.resource_version)),
        // A forced apply has no field conflicts, so a 409 is the resourceVersion precondition.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(StatusWrite::Stale),
        Err(source) => Err(Error::PatchStatus {
            namespace: target.namespace.into(),
            name: target.name.into(),
            source,
        }),
    }
}

/// What [`act`] did.
enum Acted {
    /// The decision was carried out (or had nothing to do).
    Done,
    /// The API server refused the stage run's Job; the stall says why and how to fix it.
    Rejected(Stall),
}

/// Whether a failed Job create is a refusal that waits for a change outside the operator
/// (quota, LimitRange, admission policy, RBAC, an invalid field) rather than a passing fault
/// worth retrying at once: any 4xx except Conflict (handled as "already created") and Too
/// Many Requests.
fn refused(e: &kube::core::Status) -> bool {
    (400..500).contains(&e.code) && e.code != 409 && e.code != 429
}

/// The stall of a stage run whose Job the API server refused.
fn rejection(namespace: &str, run: &StageRun, e: &kube::core::Status) -> Stall {
    let resources = match run.stage {
        Stage::Synthesize => "spec.synthesis.resources",
        Stage::Train => "spec.training.resources",
        Stage::Evaluate => "spec.evaluation.resources",
    };
    Stall::new(
        plan::REASON_JOB_REJECTED,
        format!(
            "round {}: the API server refused Job {namespace}/{} ({} {}): {}; it is tried again \
             with backoff: fix the ResourceQuota, LimitRange or admission policy of namespace \
             {namespace}, or {resources}",
            run.round, run.name, e.code, e.reason, e.message
        ),
    )
}

/// Carry out a decision after its status is written: create the Job, publish the Event.
async fn act(
    ctx: &Context,
    obj: &DynamicObject,
    namespace: &str,
    uid: &str,
    spec: &LlamaDuoMigrationSpec,
    decision: &Decision,
    status_changed: bool,
) -> Result<Acted, Error> {
    match decision {
        Decision::StartStage { run, config } => {
            let job = build_job(&JobInputs {
                migration: &obj.name_any(),
                namespace,
                uid,
                spec,
                run,
                config,
                default_image: &ctx.config.trainer_image,
            })
            .map_err(|source| Error::Serialize {
                what: "stage config",
                source,
            })?;
            let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
            match jobs.create(&PostParams::default(), &job).await {
                Ok(_) => {
                    let note = format!(
                        "round {}: {} started (attempt {}) as Job {}",
                        run.round, run.stage, run.attempt, run.name
                    );
                    let action = run_action("StartStage", run);
                    publish(ctx, obj, EventType::Normal, "StageStarted", &action, note).await;
                }
                // Created by an earlier reconcile whose status write we now repeated.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(kube::Error::Api(e)) if refused(&e) => {
                    return Ok(Acted::Rejected(rejection(namespace, run, &e)));
                }
                Err(source) => {
                    return Err(Error::CreateJob {
                        namespace: namespace.into(),
                        name: run.name.clone(),
                        source,
                    });
                }
            }
        }
        Decision::RecordResult { run, result } if status_changed => {
            let (type_, reason, note) = if result.succeeded {
                (
                    EventType::Normal,
                    "StageSucceeded",
                    format!(
                        "round {}: {} succeeded (attempt {}, {:.0}s, {} service tokens)",
                        run.round,
                        run.stage,
                        run.attempt,
                        result.duration_seconds,
                        result.service_tokens.total()
                    ),
                )
            } else {
                (
                    EventType::Warning,
                    "StageFailed",
                    format!(
                        "round {}: {} attempt {} failed ({}): {}",
                        run.round,
                        run.stage,
                        run.attempt,
                        if result.is_permanent_failure() {
                            "permanent, not retried"
                        } else {
                            "transient"
                        },
                        result.message.as_deref().unwrap_or("no reason given")
                    ),
                )
            };
            let action = run_action("RecordResult", run);
            publish(ctx, obj, type_, reason, &action, note).await;
        }
        Decision::Finish(f) if status_changed => {
            let (type_, reason, note) = match f {
                Finish::Succeeded { round, mean_score } => (
                    EventType::Normal,
                    "TargetReached",
                    format!("round {round} reached the target with mean score {mean_score:.2}"),
                ),
                Finish::Failed(r) => (EventType::Warning, r.reason(), r.to_string()),
            };
            publish(ctx, obj, type_, reason, "Finish", note).await;
        }
        Decision::Suspend if status_changed => {
            let note = "spec.suspend is set: no new stage starts".to_string();
            publish(ctx, obj, EventType::Normal, "Suspended", "Suspend", note).await;
        }
        Decision::Stall(s) if status_changed => {
            publish(
                ctx,
                obj,
                EventType::Warning,
                &s.reason,
                "Stall",
                s.message.clone(),
            )
            .await;
        }
        _ => {}
    }
    Ok(Acted::Done)
}

/// Publish an Event about the migration. A failed publish is logged, never fatal: events are
/// a courtesy, status is the record.
pub(super) async fn publish(
    ctx: &Context,
    obj: &DynamicObject,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let reference = obj.object_ref(&ctx.api_resource);
    let event = Event {
        type_,
        reason: reason.into(),
        // The events API caps notes at 1 KiB.
        note: Some(truncate(note, 1024)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, reason, "publishing an event failed");
    }
}

/// The Event action for a stage run: the verb plus the run's round, stage and attempt.
/// kube-rs's recorder folds events with equal (type, reason, action) within minutes into one
/// series that keeps the first note, so a shared action would show round 2's start under
/// round 1's message; one action per run keeps every start and result its own Event.
fn run_action(verb: &str, run: &StageRun) -> String {
    format!(
        "{verb}:round-{}:{}:attempt-{}",
        run.round, run.stage, run.attempt
    )
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
