//! The decision logic of a migration: what to do next, given the spec, the recorded status and
//! what the executor observes of the current stage run.
//!
//! Everything here is pure (no I/O, no clock: the caller passes `now`), so the Kubernetes
//! operator and the local runner (`llamaduo run`) share exactly the same decisions, and every
//! transition is table-tested. The flow of one reconcile is:
//!
//! 1. [`run_to_observe`] names the stage run whose state the executor must look at;
//! 2. the executor turns what it finds into an [`Observation`];
//! 3. [`plan`] returns a [`Decision`];
//! 4. [`apply`] turns the decision into the next status, which the executor writes *before* it
//!    acts (creates a stage run, publishes an event), so status stays the record of progress.

mod conditions;
mod decide;
mod decision;
mod names;
mod observation;
mod progress;
mod render;
mod transition;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use conditions::{
    CONDITION_READY, CONDITION_RECONCILING, CONDITION_SERVING, CONDITION_STALLED,
    CONDITION_TARGET_REACHED, keep_transition_times, set_condition,
};
pub use decide::{plan, run_to_observe};
pub use decision::{Decision, Finish, REASON_JOB_REJECTED, Stall, StopReason};
pub use names::{MAX_NAME_LEN, serving_name, stage_run_name};
pub use observation::Observation;
pub use progress::{progress_due, record_progress};
pub use render::{RenderError, artifacts_root, samples_for_round, stage_config, token_budget};
pub use transition::{apply, apply_result, stalled};

/// Which migration a decision is about, and where its artifacts go when the spec names no
/// storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationId {
    /// Namespace of the migration ("local" for `llamaduo run`).
    pub namespace: String,
    /// Name of the migration.
    pub name: String,
    /// Storage root used when `spec.storage` is unset: the work directory for the local
    /// runner; `None` in a cluster, where `spec.storage` is required.
    pub default_storage_url: Option<String>,
    /// The object's uid in a cluster: the last segment of its artifacts root, so a migration
    /// created again under the same name never reads the files of the one it replaces.
    /// `None` for the local runner, whose work directory is the instance.
    pub uid: Option<String>,
}

impl MigrationId {
    /// A migration in a cluster (no storage fallback).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            default_storage_url: None,
            uid: None,
        }
    }

    /// The same migration as the object with this uid.
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    /// The same migration with a storage root used when the spec has none.
    pub fn with_default_storage(mut self, url: impl Into<String>) -> Self {
        self.default_storage_url = Some(url.into());
        self
    }
}
