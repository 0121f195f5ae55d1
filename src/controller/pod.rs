//! Pod pieces shared by every workload the operator creates (stage Jobs and the serving
//! Deployment), so both run under the same security settings and see the artifact store the
//! same way.
//!
//! Every pod runs under the `restricted` Pod Security Standard: non-root (65532, distroless
//! `nonroot`), a read-only root filesystem with a writable `/tmp` emptyDir, no privilege
//! escalation, all capabilities dropped, RuntimeDefault seccomp.

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, EnvFromSource, EnvVar, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, ResourceRequirements, SeccompProfile, SecretEnvSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::{DEVICE_ENV, LlamaDuoMigration, LlamaDuoMigrationSpec};

/// UID and GID pods run as (distroless `nonroot`).
pub const NON_ROOT_ID: i64 = 65532;

/// Volumes, mounts and environment a pod needs to reach the migration's artifact store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StorageWiring {
    /// Pod volumes (the PVC of `file://` storage).
    pub volumes: Vec<Volume>,
    /// Container mounts of those volumes.
    pub mounts: Vec<VolumeMount>,
    /// `envFrom` of the object-store credentials Secret.
    pub env_from: Option<Vec<EnvFromSource>>,
}

/// The artifact store as pods see it: `file://PATH` storage mounts `storage.volume.claimName`
/// at PATH; an object store gets every key of `storage.credentialsSecretRef` as environment
/// variables.
pub fn storage_wiring(spec: &LlamaDuoMigrationSpec) -> StorageWiring {
    let mut wiring = StorageWiring::default();
    let Some(storage) = &spec.storage else {
        return wiring;
    };
    if let (Some(path), Some(v)) = (storage.url.strip_prefix("file://"), &storage.volume) {
        wiring.volumes.push(Volume {
            name: "artifacts".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: v.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
        wiring.mounts.push(VolumeMount {
            name: "artifacts".into(),
            mount_path: path.trim_end_matches('/').to_string(),
            ..VolumeMount::default()
        });
    }
    if let Some(s) = &storage.credentials_secret_ref {
        wiring.env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.name.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]);
    }
    wiring
}

/// The writable `/tmp` emptyDir (the root filesystem is read-only) and its mount.
pub fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    )
}

/// `HOME=/tmp`: the root filesystem is read-only, so caches go to the `/tmp` emptyDir.
pub fn home_env() -> EnvVar {
    EnvVar {
        name: "HOME".into(),
        value: Some("/tmp".into()),
        ..EnvVar::default()
    }
}

/// The resource name of NVIDIA's device plugin.
const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// Whether `resources` request or limit an NVIDIA GPU.
pub fn wants_gpu(resources: Option<&ResourceRequirements>) -> bool {
    resources.is_some_and(|r| {
        [&r.limits, &r.requests]
            .into_iter()
            .flatten()
            .filter_map(|m| m.get(NVIDIA_GPU))
            .any(|q| q.0.trim() != "0")
    })
}

/// `LLAMADUO_DEVICE=cuda` for a container whose resources request or limit an NVIDIA GPU:
/// such a pod computes on its GPU or fails in seconds, never on its CPU for hours.
pub fn gpu_device_env(resources: Option<&ResourceRequirements>) -> Option<EnvVar> {
    wants_gpu(resources).then(|| EnvVar {
        name: DEVICE_ENV.into(),
        value: Some("cuda".into()),
        ..EnvVar::default()
    })
}

/// The container security context of the restricted profile.
pub fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The pod security context of the restricted profile.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        fs_group: Some(NON_ROOT_ID),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// The controller owner reference to the migration (garbage collection and the watches of
/// owned objects).
pub fn owner_reference(migration: &str, uid: &str) -> OwnerReference {
    use kube::Resource;
    OwnerReference {
        api_version: LlamaDuoMigration::api_version(&()).into_owned(),
        kind: LlamaDuoMigration::kind(&()).into_owned(),
        name: migration.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `refs` make the migration with `uid` the controller of an object.
pub fn controlled_by(refs: Option<&Vec<OwnerReference>>, uid: &str) -> bool {
    refs.into_iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}
