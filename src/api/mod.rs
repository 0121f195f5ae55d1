//! The `LlamaDuoMigration` resource and the stage contract.
//!
//! This module is the contract between the operator, the local runner and the trainer
//! (`llamaduo-trainer`): it is compiled into both binaries and nothing here is declared twice.
//! It holds no I/O and no Kubernetes client, so the trainer can depend on it with the
//! `controller` feature switched off.

pub mod artifacts;
pub mod dataset;
mod families;
pub mod limits;
pub mod migration;
pub mod progress;
pub mod stage;

pub use artifacts::ArtifactLayout;
pub use dataset::*;
pub use migration::*;
pub use progress::{Progress, ProgressLine, RunProgress};
pub use stage::*;
