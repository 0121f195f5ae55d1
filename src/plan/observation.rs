//! What an executor reports about the stage run that [`super::run_to_observe`] named.

use crate::api::StageResult;

/// The observed state of one stage run (a Job in a cluster, a child process locally), or a
/// condition that blocks starting it.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// No run exists under the expected name (never created, or deleted).
    Missing,
    /// The run exists and has not finished.
    Running,
    /// The run finished and reported this result.
    Succeeded(StageResult),
    /// The run failed. `result` is its own report when it wrote one (it may still carry the
    /// tokens it spent); `reason` explains the failure when it did not.
    Failed {
        /// Why the run failed, as the executor saw it (exit code, OOM kill, missing result).
        reason: String,
        /// The result the run wrote, if any.
        result: Option<StageResult>,
    },
    /// The run cannot be started: something it needs is missing (a Secret, a
    /// PersistentVolumeClaim, a ConfigMap) or a foreign object holds its name.
    Blocked {
        /// CamelCase reason for the Stalled condition, e.g. `SecretNotFound`.
        reason: String,
        /// What is missing and how to fix it, naming the object.
        message: String,
    },
}
