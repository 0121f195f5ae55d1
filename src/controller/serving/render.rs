//! The serving Deployment and Service of a migration, built purely from the spec and the
//! best round.
//!
//! The Deployment runs `llamaduo-trainer serve` on the best round's model (plus `--base` for a
//! LoRA adapter) with port 8000 named `http`, readiness on `/health` (503 while the model
//! loads), liveness on `/livez`, the spec's replicas and resources, the artifact store wired as
//! the stage Jobs get it, and the same restricted pod security. The Service maps port 80 to
//! `http`. Each object carries the SHA-256 of its own rendering in [`HASH_ANNOTATION`], so
//! the decision compares one string instead of defaulted fields.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{
    ArtifactLayout, BestRound, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, TrainingMethod,
};
use crate::plan::{MigrationId, RenderError, artifacts_root, serving_name};

use super::super::job::{FIELD_MANAGER, MIGRATION_LABEL, image_pull_secrets, label_value};
use super::super::pod::{
    container_security, gpu_device_env, home_env, owner_reference, pod_security, storage_wiring,
    tmp_volume, wants_gpu,
};

/// Name of the serving container.
pub const SERVE_CONTAINER: &str = "serve";
/// Port the server listens on (named `http`).
pub const SERVE_PORT: i32 = 8000;
/// Port of the Service (plain HTTP, so the endpoint URL needs no port).
pub const SERVICE_PORT: i32 = 80;
/// Annotation holding the SHA-256 of an object's rendering (without this annotation).
pub const HASH_ANNOTATION: &str = "llamaduo.dev/applied-hash";
/// Annotation naming the round whose model the Deployment serves.
pub const ROUND_ANNOTATION: &str = "llamaduo.dev/model-round";

/// Everything the serving objects are built from.
#[derive(Clone, Copy)]
pub struct ServingInputs<'a> {
    /// Name of the migration (also the served model name).
    pub migration: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its uid (for the owner references).
    pub uid: &'a str,
    /// Its spec.
    pub spec: &'a LlamaDuoMigrationSpec,
    /// The operator's `--trainer-image` (used when `spec.image` is unset).
    pub default_image: &'a str,
    /// `status.artifacts`: where a from-scratch base lives (`None` only in a status written
    /// by an older operator, whose root had no uid).
    pub artifacts: Option<&'a str>,
}

/// The desired serving objects and their rendering hashes.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingObjects {
    /// The Deployment, with [`HASH_ANNOTATION`] set.
    pub deployment: Deployment,
    /// The Service, with [`HASH_ANNOTATION`] set.
    pub service: Service,
    /// The Deployment's hash.
    pub deployment_hash: String,
    /// The Service's hash.
    pub service_hash: String,
    /// The round whose model is served.
    pub round: u32,
    /// The served model's URI.
    pub model_uri: String,
}

/// Rendering the serving objects failed.
#[derive(Debug, thiserror::Error)]
pub enum ServingRenderError {
    /// The spec cannot locate the artifacts (the `--base` of a from-scratch student).
    #[error(transparent)]
    Spec(#[from] RenderError),
    /// An object could not be serialized for its hash.
    #[error("serializing the serving objects: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The selector labels of the serving pods (immutable once the Deployment exists).
pub fn selector_labels(migration: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "llamaduo-serve".into()),
        ("app.kubernetes.io/instance".into(), label_value(migration)),
        (MIGRATION_LABEL.into(), label_value(migration)),
    ])
}

/// All labels of the serving objects and pods: the selector plus the `app.kubernetes.io/*`
/// labels the operator's watch of owned objects selects on.
pub fn labels(migration: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(migration);
    labels.extend([
        ("app.kubernetes.io/component".into(), "serve".into()),
        ("app.kubernetes.io/part-of".into(), "llamaduo".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
    ]);
    labels
}

/// The OpenAI base URL of a migration's Service.
pub fn endpoint(migration: &str, namespace: &str) -> String {
    format!("http://{}.{namespace}.svc/v1", serving_name(migration))
}

/// The `--base` of the server: with LoRA the round model is an adapter over
/// `student.baseModel`, or over the from-scratch base the first train stage wrote to
/// `student/base` in the artifacts; full weights need no base.
pub fn base_model(
    migration: &str,
    namespace: &str,
    artifacts: Option<&str>,
    spec: &LlamaDuoMigrationSpec,
) -> Result<Option<String>, RenderError> {
    if spec.training.method != TrainingMethod::Lora {
        return Ok(None);
    }
    if let Some(base) = &spec.student.base_model {
        return Ok(Some(base.clone()));
    }
    let root = match artifacts {
        Some(root) => root.to_string(),
        None => artifacts_root(
            &MigrationId::new(namespace, migration),
            spec,
            &LlamaDuoMigrationStatus::default(),
        )?,
    };
    Ok(Some(
        ArtifactLayout::from_root(&root).url(ArtifactLayout::STUDENT_BASE),
    ))
}

/// The server's arguments (after `llamaduo-trainer serve`).
pub fn serve_args(migration: &str, model: &str, base: Option<&str>) -> Vec<String> {
    let mut args = vec!["--model".to_string(), model.to_string()];
    if let Some(base) = base {
        args.extend(["--base".to_string(), base.to_string()]);
    }
    args.extend([
        "--served-model-name".to_string(),
        migration.to_string(),
        "--listen".to_string(),
        format!("0.0.0.0:{SERVE_PORT}"),
    ]);
    args
}

/// The Deployment and Service that serve `best`'s model.
pub fn render(
    inputs: &ServingInputs<'_>,
    best: &BestRound,
) -> Result<ServingObjects, ServingRenderError> {
    let mut deployment = deployment(inputs, best)?;
    let mut service = service(inputs);
    let deployment_hash = hash(&deployment)?;
    let service_hash = hash(&service)?;
    annotate(&mut deployment.metadata, &deployment_hash);
    annotate(&mut service.metadata, &service_hash);
    Ok(ServingObjects {
        deployment,
        service,
        deployment_hash,
        service_hash,
        round: best.round,
        model_uri: best.model_uri.clone(),
    })
}

fn deployment(inputs: &ServingInputs<'_>, best: &BestRound) -> Result<Deployment, RenderError> {
    let ServingInputs {
        migration,
        namespace,
        uid,
        spec,
        default_image,
        artifacts,
    } = *inputs;
    let base = base_model(migration, namespace, artifacts, spec)?;
    let (tmp, tmp_mount) = tmp_volume();
    let storage = storage_wiring(spec);
    let mut volumes = vec![tmp];
    volumes.extend(storage.volumes);
    let mut mounts = vec![tmp_mount];
    mounts.extend(storage.mounts);
    // A rollout that adds a pod before removing one needs a second GPU, or a second node to
    // attach a ReadWriteOnce claim: on a busy cluster it would never finish. Replace pods
    // one at a time instead (with one replica: stop, then start).
    let replace_in_place = wants_gpu(spec.serving.resources.as_ref())
        || volumes.iter().any(|v| v.persistent_volume_claim.is_some());
    let strategy = replace_in_place.then(|| DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    });
    let probe = |path: &str, period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: SERVE_CONTAINER.into(),
        image: Some(
            spec.serving
                .image
                .clone()
                .or_else(|| spec.image.clone())
                .unwrap_or_else(|| default_image.to_string()),
        ),
        command: Some(vec!["llamaduo-trainer".into(), "serve".into()]),
        args: Some(serve_args(migration, &best.model_uri, base.as_deref())),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: SERVE_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(
            std::iter::once(home_env())
                .chain(gpu_device_env(spec.serving.resources.as_ref()))
                .collect(),
        ),
        env_from: storage.env_from,
        volume_mounts: Some(mounts),
        resources: spec.serving.resources.clone(),
        // Not ready (503) while the model loads; ready once it answers.
        readiness_probe: Some(probe("/health", 5, 3)),
        // The process answers /livez while loading too, so a slow load is never killed.
        liveness_probe: Some(probe("/livez", 10, 6)),
        security_context: Some(container_security()),
        ..Container::default()
    };
    let labels = labels(migration);
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(serving_name(migration)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                ROUND_ANNOTATION.into(),
                best.round.to_string(),
            )])),
            owner_references: Some(vec![owner_reference(migration, uid)]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(spec.serving.replicas),
            strategy,
            selector: LabelSelector {
                match_labels: Some(selector_labels(migration)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    service_account_name: spec.service_account_name.clone(),
                    image_pull_secrets: image_pull_secrets(spec),
                    enable_service_links: Some(false),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod_security()),
                    node_selector: spec.serving.node_selector.clone(),
                    tolerations: spec.serving.tolerations.clone(),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

fn service(inputs: &ServingInputs<'_>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(serving_name(inputs.migration)),
            namespace: Some(inputs.namespace.to_string()),
            labels: Some(labels(inputs.migration)),
            owner_references: Some(vec![owner_reference(inputs.migration, inputs.uid)]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(inputs.migration)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The hex SHA-256 of an object's JSON (k8s-openapi serializes fields in a fixed order and
/// maps as sorted BTreeMaps, so equal objects hash equal).
fn hash<T: Serialize>(object: &T) -> Result<String, serde_json::Error> {
    let bytes = serde_json::to_vec(object)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn annotate(meta: &mut ObjectMeta, hash: &str) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), hash.to_string());
}
