//! Observing a stage run: its Job, the termination message of its pod, and the objects it
//! needs before it may start.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::api::{LlamaDuoMigrationSpec, StageResult, StageRun};
use crate::plan::Observation;

use super::Context;
use super::error::Error;
use super::job::{CONTAINER_NAME, Prerequisite, prerequisites};

/// What the executor sees of `run`: its Job's state and result, or (when it has no Job yet)
/// whether everything it needs exists.
pub async fn observe(
    ctx: &Context,
    namespace: &str,
    uid: &str,
    spec: &LlamaDuoMigrationSpec,
    run: &StageRun,
) -> Result<Observation, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let job = jobs
        .get_opt(&run.name)
        .await
        .map_err(|source| Error::GetJob {
            namespace: namespace.into(),
            name: run.name.clone(),
            source,
        })?;
    let Some(job) = job else {
        return check_prerequisites(ctx, namespace, spec, run).await;
    };
    let owned = job
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true));
    if !owned {
        return Ok(Observation::Blocked {
            reason: "JobNameConflict".into(),
            message: format!(
                "Job {namespace}/{} exists but is not owned by this LlamaDuoMigration; delete or rename it",
                run.name
            ),
        });
    }
    if job_finished(&job).is_none() {
        return Ok(Observation::Running);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={}", run.name)))
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.into(),
            job: run.name.clone(),
            source,
        })?;
    Ok(observation_from(&job, &list.items))
}

/// `Some(true)` when the Job completed, `Some(false)` when it failed, `None` while it runs.
fn job_finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some(true),
            "Failed" => Some(false),
            _ => None,
        })
}

/// The observation of a finished Job from its pods' termination messages. Pure, so the
/// mapping of every Job outcome is unit-tested.
pub fn observation_from(job: &Job, pods: &[Pod]) -> Observation {
    let Some(complete) = job_finished(job) else {
        return Observation::Running;
    };
    // The newest pod's terminated trainer container carries the result.
    let mut terminated: Vec<_> = pods
        .iter()
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let s = statuses.iter().find(|s| s.name == CONTAINER_NAME)?;
            let t = s.state.as_ref()?.terminated.clone()?;
            Some((p.metadata.creation_timestamp.clone(), t))
        })
        .collect();
    terminated.sort_by(|a, b| a.0.as_ref().map(|t| t.0).cmp(&b.0.as_ref().map(|t| t.0)));
    let last = terminated.pop().map(|(_, t)| t);
    let message = last.as_ref().and_then(|t| t.message.clone());
    let result = message
        .as_deref()
        .and_then(|m| StageResult::from_json(m.trim()).ok());
    match (complete, result) {
        (true, Some(result)) => Observation::Succeeded(result),
        (true, None) => Observation::Failed {
            reason: "the run exited 0 without a result in its termination message".into(),
            result: None,
        },
        (false, result) => {
            let why = match &last {
                Some(t) => {
                    let mut why = format!(
                        "container exited with code {}{}",
                        t.exit_code,
                        t.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
                    // Without a result, the message is the log tail (FallbackToLogsOnError).
                    if result.is_none()
                        && let Some(tail) = message.as_deref().and_then(last_line)
                    {
                        why.push_str(": ");
                        why.push_str(tail);
                    }
                    why
                }
                None => job_failure_message(job),
            };
            Observation::Failed {
                reason: why,
                result,
            }
        }
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

fn job_failure_message(job: &Job) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
        .map(|c| {
            format!(
                "Job failed: {} {}",
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            )
            .trim()
            .to_string()
        })
        .unwrap_or_else(|| "Job failed and its pod is gone".into())
}

/// Blocked when a referenced Secret (key), PersistentVolumeClaim or ConfigMap (key) is
/// missing; otherwise Missing (the run may start).
async fn check_prerequisites(
    ctx: &Context,
    namespace: &str,
    spec: &LlamaDuoMigrationSpec,
    run: &StageRun,
) -> Result<Observation, Error> {
    for p in prerequisites(spec, run.stage) {
        if let Some(blocked) = check(ctx, namespace, &p).await? {
            return Ok(blocked);
        }
    }
    Ok(Observation::Missing)
}

async fn check(
    ctx: &Context,
    namespace: &str,
    p: &Prerequisite,
) -> Result<Option<Observation>, Error> {
    let err = |kind, name: &str| {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        move |source| Error::GetPrerequisite {
            kind,
            namespace,
            name,
            source,
        }
    };
    let blocked = |reason: &str, message: String| {
        Some(Observation::Blocked {
            reason: reason.into(),
            message,
        })
    };
    Ok(match p {
        Prerequisite::SecretKey { name, key, field } => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            match api.get_opt(name).await.map_err(err("Secret", name))? {
                None => blocked(
                    "SecretNotFound",
                    format!(
                        "Secret {namespace}/{name} (from {field}) not found; create it with key {key}"
                    ),
                ),
                Some(s) if !secret_has_key(&s, key) => blocked(
                    "SecretKeyNotFound",
                    format!("Secret {namespace}/{name} (from {field}) has no key {key}"),
                ),
                Some(_) => None,
            }
        }
        Prerequisite::Secret { name, field } => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            match api.get_opt(name).await.map_err(err("Secret", name))? {
                None => blocked(
                    "SecretNotFound",
                    format!("Secret {namespace}/{name} (from {field}) not found"),
                ),
                Some(_) => None,
            }
        }
        Prerequisite::Pvc { name, field } => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
            match api
                .get_opt(name)
                .await
                .map_err(err("PersistentVolumeClaim", name))?
            {
                None => blocked(
                    "PersistentVolumeClaimNotFound",
                    format!("PersistentVolumeClaim {namespace}/{name} (from {field}) not found"),
                ),
                Some(_) => None,
            }
        }
        Prerequisite::ConfigMapKey { name, key, field } => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
            match api.get_opt(name).await.map_err(err("ConfigMap", name))? {
                None => blocked(
                    "ConfigMapNotFound",
                    format!("ConfigMap {namespace}/{name} (from {field}) not found"),
                ),
                Some(cm) if !config_map_has_key(&cm, key) => blocked(
                    "ConfigMapKeyNotFound",
                    format!("ConfigMap {namespace}/{name} (from {field}) has no key {key}"),
                ),
                Some(_) => None,
            }
        }
    })
}

fn secret_has_key(s: &Secret, key: &str) -> bool {
    s.data.as_ref().is_some_and(|d| d.contains_key(key))
        || s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
}

fn config_map_has_key(cm: &ConfigMap, key: &str) -> bool {
    cm.data.as_ref().is_some_and(|d| d.contains_key(key))
        || cm.binary_data.as_ref().is_some_and(|d| d.contains_key(key))
}
