//! Errors of the operator: one variant per failing action, each carrying what it acted on.
//!
//! The variant name is the reason of the Warning Event published for the error
//! ([`Error::reason`]), so `kubectl describe` shows which action failed, and the message carries
//! the whole source chain.

use std::error::Error as _;

/// A reconcile (or operator start-up) step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace, uid or resourceVersion (it cannot own a Job, or its
    /// status cannot be written on the condition that it is unchanged).
    #[error("LlamaDuoMigration {name} has no metadata.{field}")]
    MissingObjectKey {
        /// Name of the migration.
        name: String,
        /// The missing field.
        field: &'static str,
    },
    /// The recorded status does not parse (written by a newer operator, or edited by hand).
    /// Nothing is written: deciding from an empty status and applying it would erase the
    /// migration's history.
    #[error(
        "status of {name} does not parse at {message}; the operator leaves it untouched and acts on nothing (if a newer llamaduo wrote it, run that version)"
    )]
    InvalidStatus {
        /// Name of the migration.
        name: String,
        /// Field path and serde's message.
        message: String,
    },
    /// Reading the Job of a stage run failed.
    #[error("reading Job {namespace}/{name}")]
    GetJob {
        /// Namespace.
        namespace: String,
        /// Job name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Listing the pods of a finished Job failed.
    #[error("listing the pods of Job {namespace}/{job}")]
    ListPods {
        /// Namespace.
        namespace: String,
        /// Job name.
        job: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Checking that a referenced object exists failed (other than it being absent).
    #[error("reading {kind} {namespace}/{name}")]
    GetPrerequisite {
        /// Secret, PersistentVolumeClaim or ConfigMap.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("writing the status of LlamaDuoMigration {namespace}/{name}")]
    PatchStatus {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Creating the Job of a stage run failed.
    #[error("creating Job {namespace}/{name}")]
    CreateJob {
        /// Namespace.
        namespace: String,
        /// Job name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Reading the serving Deployment or Service failed (other than it being absent).
    #[error("reading {kind} {namespace}/{name}")]
    GetServing {
        /// Deployment or Service.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Server-side applying the serving Deployment or Service failed.
    #[error("applying {kind} {namespace}/{name}")]
    ApplyServing {
        /// Deployment or Service.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Deleting the serving Deployment or Service failed.
    #[error("deleting {kind} {namespace}/{name}")]
    DeleteServing {
        /// Deployment or Service.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Serializing a stage config or status failed.
    #[error("serializing the {what}")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The variant name: the reason of the Warning Event and the `error` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingObjectKey { .. } => "MissingObjectKey",
            Error::InvalidStatus { .. } => "InvalidStatus",
            Error::GetJob { .. } => "GetJob",
            Error::ListPods { .. } => "ListPods",
            Error::GetPrerequisite { .. } => "GetPrerequisite",
            Error::PatchStatus { .. } => "PatchStatus",
            Error::CreateJob { .. } => "CreateJob",
            Error::GetServing { .. } => "GetServing",
            Error::ApplyServing { .. } => "ApplyServing",
            Error::DeleteServing { .. } => "DeleteServing",
            Error::Serialize { .. } => "Serialize",
        }
    }

    /// The error and all its sources, joined with ": ".
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}
