//! Observing a stage run: its Job, the termination message of its pod, a pod that cannot
//! start, and the objects it needs before it may start.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
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
    let finished = job_finished(&job).is_some();
    // A running Job with a ready pod needs no pod list: its container has started.
    if !finished && job.status.as_ref().and_then(|s| s.ready).unwrap_or(0) > 0 {
        return Ok(Observation::Running);
    }
    let pods = job_pods(ctx, namespace, &run.name, &job).await?;
    if finished {
        return Ok(observation_from(&job, &pods));
    }
    Ok(match stuck(&job, &pods, Timestamp::now()) {
        Some(blocked) => blocked,
        None => Observation::Running,
    })
}

/// The pods of this very Job (by its uid: a Job re-created under the same name must not
/// see the old one's pods).
async fn job_pods(
    ctx: &Context,
    namespace: &str,
    name: &str,
    job: &Job,
) -> Result<Vec<Pod>, Error> {
    let selector = match job.metadata.uid.as_deref() {
        Some(uid) => format!("batch.kubernetes.io/controller-uid={uid}"),
        None => format!("batch.kubernetes.io/job-name={name}"),
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.into(),
            job: name.into(),
            source,
        })?;
    Ok(list.items)
}

/// Waiting reasons of a container that will not start without a change (a wrong image name,
/// a registry that refuses it, a Secret or ConfigMap key that is missing).
const STUCK_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];
/// How long a pod may wait on one of [`STUCK_WAITING`] before it is reported (an image pull
/// can fail once on a registry hiccup and then succeed).
const STUCK_WAITING_GRACE_S: i64 = 120;
/// How long a pod may stay unschedulable before it is reported (a cluster autoscaler may be
/// adding a GPU node).
const UNSCHEDULABLE_GRACE_S: i64 = 600;
/// How long a Job may have no pod at all before it is reported (a ResourceQuota, an unknown
/// priorityClassName or an admission webhook refuses every pod it tries to create).
const NO_POD_GRACE_S: i64 = 300;

/// A running Job whose pod cannot start, as a Blocked observation naming the pod, Kubernetes'
/// own reason and message, and the fix; `None` while it is starting normally or runs. Pure,
/// so every case is unit-tested. The Job is left alone: a fixed Secret or a new GPU node lets
/// the same pod start, and the condition clears on the next reconcile.
pub fn stuck(job: &Job, pods: &[Pod], now: Timestamp) -> Option<Observation> {
    let age = |meta: &ObjectMeta| {
        meta.creation_timestamp
            .as_ref()
            .map_or(0, |t| now.as_second() - t.0.as_second())
    };
    let job_name = format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or_default(),
        job.metadata.name.as_deref().unwrap_or_default()
    );
    let Some(pod) = newest(pods) else {
        return (age(&job.metadata) >= NO_POD_GRACE_S).then(|| Observation::Blocked {
            reason: "NoPodCreated".into(),
            message: format!(
                "Job {job_name} has created no pod in {} min; `kubectl describe job` shows why (a ResourceQuota, an unknown priorityClassName or an admission webhook refusing the pod)",
                age(&job.metadata) / 60
            ),
        });
    };
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| STUCK_WAITING.contains(&r))
        });
    if let Some(w) = waiting
        && age(&pod.metadata) >= STUCK_WAITING_GRACE_S
    {
        let reason = w.reason.clone().unwrap_or_default();
        let fix = if reason.contains("Image") {
            format!(
                "fix spec.image (spec.training.image for train, evaluate with useTrainingResources) or the registry credentials, then delete Job {job_name}: its container never ran, so nothing is lost, and the operator creates it again from the current spec"
            )
        } else {
            "create the Secret or ConfigMap key the pod needs; the pod then starts by itself"
                .to_string()
        };
        return Some(Observation::Blocked {
            message: format!(
                "stage pod {pod_name} cannot start: {reason}: {}; {fix}",
                w.message.as_deref().unwrap_or("no message")
            ),
            reason,
        });
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable
        && age(&pod.metadata) >= UNSCHEDULABLE_GRACE_S
    {
        return Some(Observation::Blocked {
            reason: "Unschedulable".into(),
            message: format!(
                "stage pod {pod_name} has not been scheduled for {} min: {}; check spec.training.resources, nodeSelector and tolerations against the nodes (the pod starts by itself once a node fits)",
                age(&pod.metadata) / 60,
                c.message.as_deref().unwrap_or("no message")
            ),
        });
    }
    None
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
                None => {
                    // No container ever ran to the end (evicted, deleted): the newest pod's own
                    // reason says more than the Job's BackoffLimitExceeded.
                    let mut why = job_failure_message(job);
                    if let Some(pod_why) = newest_pod_reason(pods) {
                        why.push_str("; ");
                        why.push_str(&pod_why);
                    }
                    why
                }
            };
            Observation::Failed {
                reason: why,
                result,
            }
        }
    }
}

/// The most recently created pod (a Job's replacement pods come after the ones they replace).
fn newest(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// `pod NAME: Reason: message` of the newest pod, when it has a status reason (Evicted,
/// Preempting, DeadlineExceeded, ...).
fn newest_pod_reason(pods: &[Pod]) -> Option<String> {
    let pod = newest(pods)?;
    let status = pod.status.as_ref()?;
    let reason = status.reason.as_deref()?;
    Some(format!(
        "pod {}: {reason}: {}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        status.message.as_deref().unwrap_or("no message")
    ))
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
        // Without Secret checks the operator reads no Secret at all: the pod reports a missing
        // one itself (CreateContainerConfigError, turned into a stall by `stuck`).
        let secret = matches!(
            p,
            Prerequisite::SecretKey { .. } | Prerequisite::Secret { .. }
        );
        if secret && !ctx.config.secret_checks {
            continue;
        }
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
        Prerequisite::ServiceAccount { name, field } => {
            let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
            match api
                .get_opt(name)
                .await
                .map_err(err("ServiceAccount", name))?
            {
                None => blocked(
                    "ServiceAccountNotFound",
                    format!(
                        "ServiceAccount {namespace}/{name} (from {field}) not found; create it, or unset {field} to use the namespace's default"
                    ),
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
