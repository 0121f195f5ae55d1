//! The Job of one stage run, built purely from the migration, the run and its stage config.
//!
//! Every Job runs `llamaduo-trainer <stage>` with the stage config in `LLAMADUO_STAGE_CONFIG`,
//! API keys by Secret reference, the artifact store mounted or configured by reference, under
//! the restricted Pod Security Standard, without a service-account token, and with
//! `backoffLimit: 0`: retries are `plan()`'s attempts, each a new Job under its own name.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, LocalObjectReference, PodSpec,
    PodTemplateSpec, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{
    DEFAULT_RESULT_PATH, JUDGE_API_KEY_ENV, LlamaDuoMigrationSpec, RESULT_PATH_ENV,
    STAGE_CONFIG_ENV, SecretKeyRef, Stage, StageConfig, StageRun, TEACHER_API_KEY_ENV,
};
use crate::plan::stage_run_name;

pub use super::pod::owner_reference;
use super::pod::{
    StorageWiring, container_security, gpu_device_env, home_env, pod_security, storage_wiring,
    tmp_volume,
};

/// Name of the stage container (the one whose termination message is the result).
pub const CONTAINER_NAME: &str = "trainer";
/// Field manager of every write.
pub const FIELD_MANAGER: &str = "llamaduo-operator";
/// Where ConfigMap coverage sources are mounted.
pub const COVERAGE_MOUNT: &str = "/etc/llamaduo/coverage";
/// Label naming the migration a Job belongs to.
pub const MIGRATION_LABEL: &str = "llamaduo.dev/migration";

/// Everything a stage Job is built from.
pub struct JobInputs<'a> {
    /// Name of the migration.
    pub migration: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its uid (for the owner reference).
    pub uid: &'a str,
    /// Its spec.
    pub spec: &'a LlamaDuoMigrationSpec,
    /// The run.
    pub run: &'a StageRun,
    /// The run's config from `plan()`.
    pub config: &'a StageConfig,
    /// The operator's `--trainer-image` (used when `spec.image` is unset).
    pub default_image: &'a str,
}

/// Something a stage run needs that must exist before its Job is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prerequisite {
    /// A key in a Secret.
    SecretKey {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
        /// The spec field that references it.
        field: &'static str,
    },
    /// A whole Secret (its keys become environment variables).
    Secret {
        /// Secret name.
        name: String,
        /// The spec field that references it.
        field: &'static str,
    },
    /// A PersistentVolumeClaim.
    Pvc {
        /// Claim name.
        name: String,
        /// The spec field that references it.
        field: &'static str,
    },
    /// A ServiceAccount the pods run as.
    ServiceAccount {
        /// Its name.
        name: String,
        /// The spec field that references it.
        field: &'static str,
    },
    /// A key in a ConfigMap.
    ConfigMapKey {
        /// ConfigMap name.
        name: String,
        /// Key.
        key: String,
        /// The spec field that references it.
        field: &'static str,
    },
}

/// Labels of a Job (and its pods): `app.kubernetes.io/*` plus the run's coordinates.
pub fn labels(migration: &str, run: &StageRun) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "llamaduo-trainer".into()),
        ("app.kubernetes.io/instance".into(), label_value(migration)),
        ("app.kubernetes.io/component".into(), run.stage.to_string()),
        ("app.kubernetes.io/part-of".into(), "llamaduo".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
        (MIGRATION_LABEL.into(), label_value(migration)),
        ("llamaduo.dev/round".into(), run.round.to_string()),
        ("llamaduo.dev/stage".into(), run.stage.to_string()),
        ("llamaduo.dev/attempt".into(), run.attempt.to_string()),
    ])
}

/// A label value for a migration name (names may be longer than a label allows).
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 && !name.contains('.') {
        return name.to_string();
    }
    // Reuse the run-name shortening: prefix + hash, then drop the run suffix.
    let full = stage_run_name(name, 0, Stage::Train, 1);
    full.trim_end_matches("-r0-train").to_string()
}

/// The secrets, claims and config maps a stage run of `stage` needs.
pub fn prerequisites(spec: &LlamaDuoMigrationSpec, stage: Stage) -> Vec<Prerequisite> {
    let mut out = Vec::new();
    let key = |r: &SecretKeyRef, field| Prerequisite::SecretKey {
        name: r.name.clone(),
        key: r.key.clone(),
        field,
    };
    match stage {
        Stage::Synthesize => {
            if let Some(r) = &spec.teacher.api_key_secret_ref {
                out.push(key(r, "spec.teacher.apiKeySecretRef"));
            }
            for (source, field) in [
                (Some(&spec.coverage.source), "spec.coverage.source"),
                (
                    spec.coverage.test_source.as_ref(),
                    "spec.coverage.testSource",
                ),
            ] {
                if let Some((name, k)) = source.and_then(|s| config_map_source(s)) {
                    out.push(Prerequisite::ConfigMapKey {
                        name: name.into(),
                        key: k.into(),
                        field,
                    });
                }
            }
        }
        Stage::Train => {}
        Stage::Evaluate => {
            if let Some(r) = &spec.judge().api_key_secret_ref {
                let field = if spec.judge.is_some() {
                    "spec.judge.apiKeySecretRef"
                } else {
                    "spec.teacher.apiKeySecretRef"
                };
                out.push(key(r, field));
            }
            if spec.evaluation.baseline
                && spec.judge.is_some()
                && let Some(r) = &spec.teacher.api_key_secret_ref
            {
                out.push(key(r, "spec.teacher.apiKeySecretRef"));
            }
        }
    }
    if let Some(storage) = &spec.storage {
        if let Some(v) = &storage.volume {
            out.push(Prerequisite::Pvc {
                name: v.claim_name.clone(),
                field: "spec.storage.volume.claimName",
            });
        }
        if let Some(s) = &storage.credentials_secret_ref {
            out.push(Prerequisite::Secret {
                name: s.name.clone(),
                field: "spec.storage.credentialsSecretRef",
            });
        }
    }
    out.extend(pod_prerequisites(spec));
    out
}

/// What every stage and serving pod of `spec` needs: its pull secrets and ServiceAccount.
/// Missing, the pods would wait in ImagePullBackOff or never be created at all.
pub fn pod_prerequisites(spec: &LlamaDuoMigrationSpec) -> Vec<Prerequisite> {
    let mut out: Vec<Prerequisite> = spec
        .image_pull_secrets
        .iter()
        .map(|s| Prerequisite::Secret {
            name: s.name.clone(),
            field: "spec.imagePullSecrets",
        })
        .collect();
    if let Some(name) = &spec.service_account_name {
        out.push(Prerequisite::ServiceAccount {
            name: name.clone(),
            field: "spec.serviceAccountName",
        });
    }
    out
}

/// The pull secrets of `spec` as a pod lists them (`None` when there are none).
pub fn image_pull_secrets(spec: &LlamaDuoMigrationSpec) -> Option<Vec<LocalObjectReference>> {
    (!spec.image_pull_secrets.is_empty()).then(|| spec.image_pull_secrets.clone())
}

/// `configmap://NAME/KEY` -> (NAME, KEY).
fn config_map_source(source: &str) -> Option<(&str, &str)> {
    source.strip_prefix("configmap://")?.split_once('/')
}

/// The Job of `inputs.run`.
pub fn build_job(inputs: &JobInputs<'_>) -> Result<Job, serde_json::Error> {
    let JobInputs {
        migration,
        namespace,
        uid,
        spec,
        run,
        config,
        default_image,
    } = *inputs;
    let labels = labels(migration, run);
    let mut config = config.clone();
    let (tmp, tmp_mount) = tmp_volume();
    let mut volumes = vec![tmp];
    let mut mounts = vec![tmp_mount];
    // ConfigMap coverage: mount the ConfigMap and point the stage at the mounted file.
    if let StageConfig::Synthesize(c) = &mut config {
        let sources = [
            Some(&mut c.coverage.source),
            c.coverage.test_source.as_mut(),
        ];
        for (i, source) in sources.into_iter().flatten().enumerate() {
            let Some((name, key)) = config_map_source(source) else {
                continue;
            };
            let (name, key) = (name.to_string(), key.to_string());
            let dir = format!("{COVERAGE_MOUNT}/{name}");
            let volume = format!("coverage-{i}");
            if !volumes
                .iter()
                .any(|v| v.config_map.as_ref().is_some_and(|cm| cm.name == name))
            {
                volumes.push(Volume {
                    name: volume.clone(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: name.clone(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                });
                mounts.push(VolumeMount {
                    name: volume,
                    mount_path: dir.clone(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
            }
            *source = format!("file://{dir}/{key}");
        }
    }
    let mut env = vec![
        EnvVar {
            name: STAGE_CONFIG_ENV.into(),
            value: Some(serde_json::to_string(&config)?),
            ..EnvVar::default()
        },
        EnvVar {
            name: RESULT_PATH_ENV.into(),
            value: Some(DEFAULT_RESULT_PATH.into()),
            ..EnvVar::default()
        },
        home_env(),
    ];
    let secret_env = |name: &str, r: &SecretKeyRef| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    match run.stage {
        Stage::Synthesize => {
            if let Some(r) = &spec.teacher.api_key_secret_ref {
                env.push(secret_env(TEACHER_API_KEY_ENV, r));
            }
        }
        Stage::Evaluate => {
            if let Some(r) = &spec.judge().api_key_secret_ref {
                env.push(secret_env(JUDGE_API_KEY_ENV, r));
            }
            if spec.evaluation.baseline
                && let Some(r) = &spec.teacher.api_key_secret_ref
            {
                env.push(secret_env(TEACHER_API_KEY_ENV, r));
            }
        }
        Stage::Train => {}
    }
    // Train pods, and evaluate pods with evaluation.useTrainingResources, run with the
    // training scheduling and image.
    let like_training = match run.stage {
        Stage::Train => true,
        Stage::Evaluate => spec.evaluation.use_training_resources,
        Stage::Synthesize => false,
    };
    // Such a pod given an NVIDIA GPU must compute on it.
    if like_training && let Some(device) = gpu_device_env(spec.training.resources.as_ref()) {
        env.push(device);
    }
    let StorageWiring {
        volumes: storage_volumes,
        mounts: storage_mounts,
        env_from,
    } = storage_wiring(spec);
    volumes.extend(storage_volumes);
    mounts.extend(storage_mounts);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(
            like_training
                .then(|| spec.training.image.clone())
                .flatten()
                .or_else(|| spec.image.clone())
                .unwrap_or_else(|| default_image.to_string()),
        ),
        command: Some(vec!["llamaduo-trainer".into(), run.stage.to_string()]),
        env: Some(env),
        env_from,
        volume_mounts: Some(mounts),
        resources: match run.stage {
            Stage::Train => spec.training.resources.clone(),
            Stage::Evaluate if like_training => spec.training.resources.clone(),
            Stage::Evaluate => spec.evaluation.resources.clone(),
            Stage::Synthesize => spec.synthesis.resources.clone(),
        },
        security_context: Some(container_security()),
        termination_message_path: Some(DEFAULT_RESULT_PATH.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        service_account_name: spec.service_account_name.clone(),
        image_pull_secrets: image_pull_secrets(spec),
        enable_service_links: Some(false),
        containers: vec![container],
        volumes: Some(volumes),
        security_context: Some(pod_security()),
        node_selector: like_training
            .then(|| spec.training.node_selector.clone())
            .flatten(),
        tolerations: like_training
            .then(|| spec.training.tolerations.clone())
            .flatten(),
        priority_class_name: like_training
            .then(|| spec.training.priority_class_name.clone())
            .flatten(),
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner_reference(migration, uid)]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            // A pod evicted by a node drain, preemption or a spot reclaim (condition
            // DisruptionTarget) is replaced without counting as a failure: the stage resumes
            // from what it stored, and the migration's stageRetries stay for real failures.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".into(),
                        status: Some("True".into()),
                    }]),
                    on_exit_codes: None,
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}
