//! Reading a running stage's progress: the last `{"progress": ...}` line of its pod's log
//! (docs/stage-contract.md, "Progress"), read with `tailLines` and `limitBytes` so a chatty
//! or hostile stage cannot make the operator read more than [`LOG_LIMIT_BYTES`]. The stage
//! pods get no API credentials for this: the operator reads, they only print.
//!
//! Every failure (no running pod yet, a pod that is gone, a log the kubelet cannot serve, no
//! progress line yet, a garbled one) is `None`: progress is advisory, and the status keeps
//! what it last said.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, LogParams};

use crate::api::{Progress, StageRun};

use super::Context;
use super::job::CONTAINER_NAME;

/// Log lines read from the end: the stage prints a progress line every few seconds between
/// its log lines, so one is among the last few dozen.
const TAIL_LINES: i64 = 40;
/// Bytes read at most (the kubelet cuts the tail there).
const LOG_LIMIT_BYTES: i64 = 32 * 1024;

/// The progress of `run` as its pod's log last reported it, if it can be read.
pub async fn read(ctx: &Context, namespace: &str, run: &StageRun) -> Option<Progress> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("batch.kubernetes.io/job-name={}", run.name);
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(e) => {
            tracing::debug!(run = %run.name, error = %e, "progress: cannot list the run's pods");
            return None;
        }
    };
    let pod = newest_running(&list.items)?;
    let params = LogParams {
        container: Some(CONTAINER_NAME.into()),
        tail_lines: Some(TAIL_LINES),
        limit_bytes: Some(LOG_LIMIT_BYTES),
        ..LogParams::default()
    };
    match pods.logs(&pod, &params).await {
        Ok(text) => Progress::last_in(&text),
        Err(e) => {
            tracing::debug!(run = %run.name, pod = %pod, error = %e, "progress: cannot read the pod log");
            None
        }
    }
}

/// The name of the newest pod in phase Running (a retried Job's older pods have ended).
fn newest_running(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .and_then(|p| p.metadata.name.clone())
}
