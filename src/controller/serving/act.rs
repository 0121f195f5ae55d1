//! The I/O of serving: read the live Deployment and Service, delete them, server-side apply
//! them, and publish the serving Events.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::plan::serving_name;

use super::super::Context;
use super::super::error::Error;
use super::super::job::FIELD_MANAGER;
use super::super::reconcile::publish;
use super::decide::{ServingAction, ServingObservation, ServingPlan};

/// Read the Deployment and Service of the serving name (absent ones are `None`).
pub async fn observe(
    ctx: &Context,
    namespace: &str,
    migration: &str,
) -> Result<ServingObservation, Error> {
    let name = serving_name(migration);
    let err = |kind: &'static str| {
        let (namespace, name) = (namespace.to_string(), name.clone());
        move |source| Error::GetServing {
            kind,
            namespace,
            name,
            source,
        }
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(ServingObservation {
        deployment: deployments
            .get_opt(&name)
            .await
            .map_err(err("Deployment"))?,
        service: services.get_opt(&name).await.map_err(err("Service"))?,
    })
}

/// Delete the objects a [`ServingAction::Delete`] names (before the status write that clears
/// the endpoint, so a failed delete is retried). An object already gone is fine.
pub async fn delete(ctx: &Context, namespace: &str, plan: &ServingPlan) -> Result<(), Error> {
    let ServingAction::Delete {
        deployment,
        service,
        ..
    } = &plan.action
    else {
        return Ok(());
    };
    // Background: the API server answers at once and the garbage collector removes the
    // ReplicaSets and pods.
    let params = DeleteParams::background();
    let gone = |r: &Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 404);
    if let Some(name) = deployment {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
        let r = api.delete(name, &params).await.map(|_| ());
        if !gone(&r) {
            r.map_err(|source| Error::DeleteServing {
                kind: "Deployment",
                namespace: namespace.into(),
                name: name.clone(),
                source,
            })?;
        }
    }
    if let Some(name) = service {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
        let r = api.delete(name, &params).await.map(|_| ());
        if !gone(&r) {
            r.map_err(|source| Error::DeleteServing {
                kind: "Service",
                namespace: namespace.into(),
                name: name.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// After the status write: apply the objects of a [`ServingAction::Apply`], then publish the
/// Event of the action (`ServingStarted`, `ServingUpdated`, `ServingStopped`).
pub async fn act(ctx: &Context, obj: &DynamicObject, plan: &ServingPlan) -> Result<(), Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let endpoint = plan.endpoint.as_deref().unwrap_or_default();
    match &plan.action {
        ServingAction::Nothing => {}
        ServingAction::Apply { objects, previous } => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let name = objects.deployment.metadata.name.clone().unwrap_or_default();
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
            deployments
                .patch(&name, &params, &Patch::Apply(&objects.deployment))
                .await
                .map_err(|source| Error::ApplyServing {
                    kind: "Deployment",
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
            services
                .patch(&name, &params, &Patch::Apply(&objects.service))
                .await
                .map_err(|source| Error::ApplyServing {
                    kind: "Service",
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            let round = objects.round;
            let model = &objects.model_uri;
            // One action per served round and rendering, so the recorder never folds a later
            // update into an earlier Event's note.
            let hash = &objects.deployment_hash[..8];
            let (reason, action, note) = match previous {
                None => (
                    "ServingStarted",
                    format!("StartServing:round-{round}"),
                    format!(
                        "serving round {round} ({model}) as Deployment {name}; OpenAI base URL {endpoint}"
                    ),
                ),
                Some(p) => (
                    "ServingUpdated",
                    format!("UpdateServing:round-{round}:{hash}"),
                    match p.round {
                        Some(old) if old != round => format!(
                            "Deployment {name} rolls from round {old} to round {round} ({model})"
                        ),
                        _ => format!("Deployment {name} updated; serving round {round} ({model})"),
                    },
                ),
            };
            publish(ctx, obj, EventType::Normal, reason, &action, note).await;
        }
        ServingAction::Delete {
            deployment,
            service,
            round,
        } => {
            let removed: Vec<String> = [
                deployment.as_ref().map(|n| format!("Deployment {n}")),
                service.as_ref().map(|n| format!("Service {n}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let why = plan
                .condition
                .as_ref()
                .map(|c| c.message.clone())
                .unwrap_or_default();
            let action = match round {
                Some(r) => format!("StopServing:round-{r}"),
                None => "StopServing".into(),
            };
            let note = format!("removed {}: {why}", removed.join(" and "));
            publish(ctx, obj, EventType::Normal, "ServingStopped", &action, note).await;
        }
    }
    Ok(())
}
