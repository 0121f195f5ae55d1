//! Serving the best model: a Deployment running `llamaduo-trainer serve` and a ClusterIP
//! Service in front of it, named `{migration}-serve`, owned by the migration.
//!
//! One reconcile: [`needs_observation`] says whether to read the live objects, [`observe`]
//! reads them, [`plan_serving`] decides (pure), [`delete`] removes objects before the status
//! write that clears the endpoint, [`apply_serving`] puts the endpoint and the `Serving`
//! condition into the status, and [`act`] applies the objects and publishes the Event after
//! the status write.

mod act;
mod decide;
mod render;
#[cfg(test)]
mod tests;

pub use act::{act, delete, observe};
pub use decide::{
    Previous, REASON_AVAILABLE, REASON_DISABLED, REASON_FAILED, REASON_INVALID_SPEC,
    REASON_NAME_CONFLICT, REASON_NO_MODEL, REASON_NOT_SUCCEEDED, REASON_PROGRESSING,
    REASON_SCALED_TO_ZERO, ServingAction, ServingCondition, ServingObservation, ServingPlan,
    apply_serving, needs_observation, plan_serving, served_round, wanted,
};
pub use render::{
    HASH_ANNOTATION, ROUND_ANNOTATION, SERVE_CONTAINER, SERVE_PORT, SERVICE_PORT, ServingInputs,
    ServingObjects, ServingRenderError, base_model, endpoint, labels, render, selector_labels,
    serve_args,
};
