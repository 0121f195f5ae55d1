//! llamaduo: migrate a feature from a service LLM to a small model you own.
//!
//! The library holds the API types and the stage contract ([`api`]) and the generated CRD
//! ([`crd`]); with the default `controller` feature it also holds the operator, the offline
//! validator and the local runner.

pub mod api;
#[cfg(feature = "controller")]
pub mod controller;
pub mod crd;
pub mod plan;
#[cfg(feature = "controller")]
pub mod run;
#[cfg(feature = "controller")]
pub mod validate;
