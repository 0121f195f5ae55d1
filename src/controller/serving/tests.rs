//! Decision table of serving: every (spec, status, live objects) case and the action,
//! endpoint and `Serving` condition it yields; plus the rendering rules that are not part of
//! the mocked-API scenarios (`--base`, hashes, names).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::api::{BestRound, LlamaDuoMigrationSpec, LlamaDuoMigrationStatus, Phase};
use crate::plan::{
    CONDITION_READY, CONDITION_RECONCILING, CONDITION_SERVING, CONDITION_STALLED,
    CONDITION_TARGET_REACHED,
};

mod when;

fn spec_json() -> Value {
    json!({
        "task": {"description": "Add two numbers"},
        "coverage": {"source": "file:///artifacts/rows.jsonl"},
        "teacher": {"provider": "simulated", "model": "add", "baseUrl": "http://t/v1"},
        "student": {"baseModel": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "target": {"meanScore": 80.0},
        "serving": {"enabled": true},
        "storage": {"url": "file:///artifacts", "volume": {"claimName": "artifacts"}}
    })
}

fn spec_from(v: Value) -> LlamaDuoMigrationSpec {
    serde_json::from_value(v).expect("spec")
}

fn best(round: u32) -> BestRound {
    BestRound {
        round,
        mean_score: 85.0,
        model_uri: format!("file:///artifacts/team-a/tickets/round-{round}/model"),
    }
}

fn succeeded(round: u32) -> LlamaDuoMigrationStatus {
    LlamaDuoMigrationStatus {
        phase: Some(Phase::Succeeded),
        round,
        best: Some(best(round)),
        ..LlamaDuoMigrationStatus::default()
    }
}

fn inputs(spec: &LlamaDuoMigrationSpec) -> ServingInputs<'_> {
    ServingInputs {
        migration: "tickets",
        namespace: "team-a",
        uid: "uid-1",
        spec,
        default_image: "img:1",
        artifacts: Some("file:///artifacts/team-a/tickets/uid-1"),
    }
}

/// The live objects as the API server would return them after applying the rendering of
/// `round`, with the Deployment's status.
fn live(spec: &LlamaDuoMigrationSpec, round: u32, status: Value) -> ServingObservation {
    let objects = render(&inputs(spec), &best(round)).expect("render");
    let mut d = serde_json::to_value(&objects.deployment).expect("json");
    d["metadata"]["generation"] = json!(2);
    d["status"] = status;
    ServingObservation {
        deployment: Some(serde_json::from_value(d).expect("deployment")),
        service: Some(objects.service),
    }
}

fn rolled_out(replicas: i32) -> Value {
    json!({"observedGeneration": 2, "replicas": replicas, "updatedReplicas": replicas,
           "availableReplicas": replicas, "readyReplicas": replicas})
}

fn progressing() -> Value {
    json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0})
}

fn deadline_exceeded() -> Value {
    json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
           "conditions": [{"type": "Progressing", "status": "False",
                           "reason": "ProgressDeadlineExceeded",
                           "message": "ReplicaSet \"tickets-serve-7d\" has timed out progressing."}]})
}

fn condition(plan: &ServingPlan) -> (&'static str, &'static str, &str) {
    let c = plan.condition.as_ref().expect("a Serving condition");
    (c.status, c.reason, c.message.as_str())
}

const ENDPOINT: &str = "http://tickets-serve.team-a.svc/v1";

#[test]
fn enabled_and_succeeded_starts_serving() {
    let spec = spec_from(spec_json());
    let status = succeeded(3);
    assert!(needs_observation(&spec, &status));
    let plan = plan_serving(&inputs(&spec), &status, &ServingObservation::default()).expect("plan");
    let ServingAction::Apply { objects, previous } = &plan.action else {
        panic!("{:?}", plan.action)
    };
    assert_eq!(previous, &None);
    assert_eq!(objects.round, 3);
    assert_eq!(plan.endpoint.as_deref(), Some(ENDPOINT));
    let (s, reason, message) = condition(&plan);
    assert_eq!((s, reason), ("False", REASON_PROGRESSING));
    assert!(
        message.starts_with("creating Deployment tickets-serve serving round 3"),
        "{message}"
    );
}

#[test]
fn unchanged_objects_are_left_alone_and_available_means_serving() {
    let spec = spec_from(spec_json());
    let plan = plan_serving(
        &inputs(&spec),
        &succeeded(3),
        &live(&spec, 3, rolled_out(1)),
    )
    .expect("plan");
    assert_eq!(plan.action, ServingAction::Nothing);
    assert_eq!(plan.endpoint.as_deref(), Some(ENDPOINT));
    let (s, reason, message) = condition(&plan);
    assert_eq!((s, reason), ("True", REASON_AVAILABLE));
    assert!(message.contains("1 of 1 replicas available"), "{message}");
}

#[test]
fn a_rollout_in_progress_is_not_serving_yet() {
    let spec = spec_from(spec_json());
    let cases = [
        (
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                "availableReplicas": 1}),
            REASON_PROGRESSING,
            "not yet observed generation 2",
        ),
        (
            json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 0}),
            REASON_PROGRESSING,
            "0 of 1 replicas updated",
        ),
        (
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
                "availableReplicas": 1}),
            REASON_PROGRESSING,
            "1 old replicas",
        ),
        (
            json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                "availableReplicas": 0}),
            REASON_PROGRESSING,
            "0 of 1 replicas available",
        ),
        (
            json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                "conditions": [{"type": "Progressing", "status": "False",
                                "reason": "ProgressDeadlineExceeded",
                                "message": "ReplicaSet \"tickets-serve-7d\" has timed out progressing."}]}),
            REASON_FAILED,
            "timed out progressing",
        ),
        (json!({}), REASON_PROGRESSING, "not yet observed"),
    ];
    for (status, want_reason, want_text) in cases {
        let plan = plan_serving(
            &inputs(&spec),
            &succeeded(3),
            &live(&spec, 3, status.clone()),
        )
        .expect("plan");
        assert_eq!(plan.action, ServingAction::Nothing, "{status}");
        let (s, reason, message) = condition(&plan);
        assert_eq!((s, reason), ("False", want_reason), "{status}");
        assert!(message.contains(want_text), "{status}: {message}");
    }
    let mut zero = spec_json();
    zero["serving"]["replicas"] = json!(0);
    let zero = spec_from(zero);
    let plan = plan_serving(
        &inputs(&zero),
        &succeeded(3),
        &live(&zero, 3, rolled_out(0)),
    )
    .expect("plan");
    assert_eq!(condition(&plan).1, REASON_SCALED_TO_ZERO);
}

#[test]
fn a_better_best_round_rolls_the_deployment_to_its_model() {
    let spec = spec_from(spec_json());
    let plan = plan_serving(
        &inputs(&spec),
        &succeeded(4),
        &live(&spec, 2, rolled_out(1)),
    )
    .expect("plan");
    let ServingAction::Apply { objects, previous } = &plan.action else {
        panic!("{:?}", plan.action)
    };
    assert_eq!(previous, &Some(Previous { round: Some(2) }));
    let args = objects
        .deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(
        args[..2],
        ["--model", "file:///artifacts/team-a/tickets/round-4/model"]
    );
    let (s, reason, message) = condition(&plan);
    assert_eq!((s, reason), ("False", REASON_PROGRESSING));
    assert!(message.starts_with("updating"), "{message}");
    // The Service renders the same for every round: only the Deployment changes.
    let old = render(&inputs(&spec), &best(2)).expect("render");
    assert_eq!(old.service_hash, objects.service_hash);
    assert_ne!(old.deployment_hash, objects.deployment_hash);
}

#[test]
fn a_spec_change_of_serving_fields_reapplies() {
    let spec = spec_from(spec_json());
    let mut more = spec_json();
    more["serving"]["replicas"] = json!(3);
    more["serving"]["resources"] = json!({"limits": {"cpu": "2", "memory": "2Gi"}});
    more["serving"]["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
    let more = spec_from(more);
    let plan = plan_serving(
        &inputs(&more),
        &succeeded(3),
        &live(&spec, 3, rolled_out(1)),
    )
    .expect("plan");
    assert!(
        matches!(plan.action, ServingAction::Apply { .. }),
        "{:?}",
        plan.action
    );
    // A removed Service is applied again too.
    let mut no_service = live(&spec, 3, rolled_out(1));
    no_service.service = None;
    let plan = plan_serving(&inputs(&spec), &succeeded(3), &no_service).expect("plan");
    assert!(matches!(
        plan.action,
        ServingAction::Apply {
            previous: Some(_),
            ..
        }
    ));
}

#[test]
fn gpu_serving_gets_its_image_scheduling_and_the_cuda_device() {
    let mut v = spec_json();
    v["image"] = json!("llamaduo-trainer:cpu");
    v["serving"] = json!({
        "enabled": true,
        "image": "llamaduo-trainer:cuda",
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "nodeSelector": {"gpu": "l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    });
    let gpu = spec_from(v);
    let objects = render(&inputs(&gpu), &best(2)).expect("render");
    let pod = serde_json::to_value(&objects.deployment).expect("json")["spec"]["template"]["spec"]
        .clone();
    assert_eq!(pod["nodeSelector"], json!({"gpu": "l4"}));
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "llamaduo-trainer:cuda");
    assert!(
        c["env"]
            .as_array()
            .expect("env")
            .contains(&json!({"name": "LLAMADUO_DEVICE", "value": "cuda"})),
        "{c}"
    );
    // Without a GPU: spec.image, no device pinned, no scheduling constraints.
    let mut v = spec_json();
    v["image"] = json!("llamaduo-trainer:cpu");
    let cpu = spec_from(v);
    let objects = render(&inputs(&cpu), &best(2)).expect("render");
    let pod = serde_json::to_value(&objects.deployment).expect("json")["spec"]["template"]["spec"]
        .clone();
    assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none());
    assert_eq!(pod["containers"][0]["image"], "llamaduo-trainer:cpu");
    assert!(
        !pod["containers"][0]["env"]
            .to_string()
            .contains("LLAMADUO_DEVICE")
    );
}

#[test]
fn rollouts_never_need_a_second_gpu_or_a_second_claim_attachment() {
    let strategy = |v: Value| {
        let spec = spec_from(v);
        let objects = render(&inputs(&spec), &best(2)).expect("render");
        serde_json::to_value(&objects.deployment).expect("json")["spec"]["strategy"].clone()
    };
    let one_at_a_time =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}});
    // The model on a PersistentVolumeClaim (ReadWriteOnce attaches to one node).
    assert_eq!(strategy(spec_json()), one_at_a_time);
    // On an object store, CPU only: Kubernetes' default surge rollout.
    let mut s3 = spec_json();
    s3["storage"] = json!({"url": "s3://bucket/llamaduo"});
    assert_eq!(strategy(s3.clone()), Value::Null);
    // A GPU per replica.
    s3["serving"]["resources"] = json!({"requests": {"nvidia.com/gpu": "1"}});
    assert_eq!(strategy(s3), one_at_a_time);
}

#[test]
fn disabling_serving_deletes_both_objects() {
    let mut off = spec_json();
    off["serving"]["enabled"] = json!(false);
    let off = spec_from(off);
    let on = spec_from(spec_json());
    let mut status = succeeded(3);
    let now = Time(Timestamp::from_second(1_000).expect("ts"));
    let serving = plan_serving(&inputs(&on), &status, &live(&on, 3, rolled_out(1))).expect("plan");
    apply_serving(&mut status, &serving, Some(1), &now);
    assert_eq!(status.endpoint.as_deref(), Some(ENDPOINT));
    // Disabled: the endpoint in status says objects may exist, so they are read and deleted.
    assert!(needs_observation(&off, &status));
    let plan = plan_serving(&inputs(&off), &status, &live(&on, 3, rolled_out(1))).expect("plan");
    assert_eq!(
        plan.action,
        ServingAction::Delete {
            deployment: Some("tickets-serve".into()),
            service: Some("tickets-serve".into()),
            round: Some(3),
        }
    );
    assert_eq!(plan.endpoint, None);
    assert_eq!(condition(&plan).0, "False");
    assert_eq!(condition(&plan).1, REASON_DISABLED);
    // Once gone and recorded, nothing is read or done again.
    apply_serving(&mut status, &plan, Some(2), &now);
    assert!(!needs_observation(&off, &status));
    let again = plan_serving(&inputs(&off), &status, &ServingObservation::default()).expect("plan");
    assert_eq!(again.action, ServingAction::Nothing);
    assert_eq!(condition(&again).1, REASON_DISABLED);
}

#[test]
fn a_migration_that_has_not_succeeded_serves_nothing() {
    let spec = spec_from(spec_json());
    for phase in [
        Phase::Pending,
        Phase::Training,
        Phase::Failed,
        Phase::Suspended,
    ] {
        let status = LlamaDuoMigrationStatus {
            phase: Some(phase),
            // A best round below target exists while rounds go on; it is not served.
            best: Some(best(1)),
            ..LlamaDuoMigrationStatus::default()
        };
        assert!(!needs_observation(&spec, &status), "{phase:?}");
        let plan =
            plan_serving(&inputs(&spec), &status, &ServingObservation::default()).expect("plan");
        assert_eq!(plan.action, ServingAction::Nothing, "{phase:?}");
        assert_eq!(plan.endpoint, None);
        assert_eq!(condition(&plan).1, REASON_NOT_SUCCEEDED, "{phase:?}");
    }
    // Objects left from an earlier success (status.endpoint set) are deleted.
    let status = LlamaDuoMigrationStatus {
        phase: Some(Phase::Failed),
        endpoint: Some(ENDPOINT.into()),
        ..LlamaDuoMigrationStatus::default()
    };
    assert!(needs_observation(&spec, &status));
    let plan = plan_serving(&inputs(&spec), &status, &live(&spec, 3, rolled_out(1))).expect("plan");
    assert!(
        matches!(plan.action, ServingAction::Delete { .. }),
        "{:?}",
        plan.action
    );
}

#[test]
fn a_migration_that_never_enabled_serving_gets_no_condition_and_no_reads() {
    let mut off = spec_json();
    off["serving"] = json!({});
    let off = spec_from(off);
    let status = succeeded(2);
    assert!(!needs_observation(&off, &status));
    let plan = plan_serving(&inputs(&off), &status, &ServingObservation::default()).expect("plan");
    assert_eq!(
        plan,
        ServingPlan {
            action: ServingAction::Nothing,
            endpoint: None,
            condition: None
        }
    );
}

#[test]
fn objects_of_someone_else_are_never_applied_or_deleted() {
    let spec = spec_from(spec_json());
    let mut foreign = live(&spec, 3, rolled_out(1));
    if let Some(d) = foreign.deployment.as_mut() {
        d.metadata.owner_references = None;
    }
    let plan = plan_serving(&inputs(&spec), &succeeded(3), &foreign).expect("plan");
    assert_eq!(plan.action, ServingAction::Nothing);
    assert_eq!(plan.endpoint, None);
    let (_, reason, message) = condition(&plan);
    assert_eq!(reason, REASON_NAME_CONFLICT);
    assert!(
        message.contains("Deployment team-a/tickets-serve"),
        "{message}"
    );
    // Disabled: only our Service is deleted.
    let mut off = spec_json();
    off["serving"]["enabled"] = json!(false);
    let off = spec_from(off);
    let mut status = succeeded(3);
    status.endpoint = Some(ENDPOINT.into());
    let plan = plan_serving(&inputs(&off), &status, &foreign).expect("plan");
    assert_eq!(
        plan.action,
        ServingAction::Delete {
            deployment: None,
            service: Some("tickets-serve".into()),
            round: Some(3)
        }
    );
}

/// The status of condition `type_`: (status, reason, lastTransitionTime).
fn cond(s: &LlamaDuoMigrationStatus, type_: &str) -> (String, String, Time) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("{type_} missing"));
    (
        c.status.clone(),
        c.reason.clone(),
        c.last_transition_time.clone(),
    )
}

/// One reconcile of a finished migration at `secs`: the round decision, then serving, then
/// the transition times kept against what was written before.
fn reconcile_at(
    spec: &LlamaDuoMigrationSpec,
    written: &LlamaDuoMigrationStatus,
    observed: &ServingObservation,
    secs: i64,
) -> LlamaDuoMigrationStatus {
    let now = Time(Timestamp::from_second(secs).expect("ts"));
    let mut next = crate::plan::apply(written, &crate::plan::Decision::Idle, Some(1), &now);
    let plan = plan_serving(&inputs(spec), &next, observed).expect("plan");
    apply_serving(&mut next, &plan, Some(1), &now);
    crate::plan::keep_transition_times(&mut next, written);
    next
}

#[test]
fn a_served_migration_is_ready_only_once_its_endpoint_serves() {
    let spec = spec_from(spec_json());
    let decided = crate::plan::apply(
        &succeeded(3),
        &crate::plan::Decision::Idle,
        Some(1),
        &Time(Timestamp::from_second(1_000).expect("ts")),
    );
    assert_eq!(cond(&decided, CONDITION_READY).0, "True");
    // The Deployment is created and rolls out: target reached, but not Ready yet, and still
    // Reconciling (kstatus: in progress), so Flux and Argo CD keep consumers waiting.
    let rolling = reconcile_at(&spec, &decided, &ServingObservation::default(), 2_000);
    let ready = cond(&rolling, CONDITION_READY);
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "DeploymentProgressing")
    );
    assert_eq!(cond(&rolling, CONDITION_RECONCILING).0, "True");
    assert_eq!(cond(&rolling, CONDITION_STALLED).0, "False");
    assert_eq!(cond(&rolling, CONDITION_TARGET_REACHED).0, "True");
    let serving_since = cond(&rolling, CONDITION_SERVING).2;
    // Reconciled again while it rolls out: the round decision sets Ready=True in memory before
    // serving gates it, yet nothing changes, so nothing is written.
    let rolling = reconcile_at(&spec, &rolling, &live(&spec, 3, progressing()), 2_500);
    assert_eq!(
        cond(&rolling, CONDITION_READY).2,
        ready.2,
        "no transition seen"
    );
    let again = reconcile_at(&spec, &rolling, &live(&spec, 3, progressing()), 3_000);
    assert_eq!(again, rolling);
    // Rolled out: Ready flips to True (its time moves), Serving too.
    let served = reconcile_at(&spec, &rolling, &live(&spec, 3, rolled_out(1)), 4_000);
    let at = Time(Timestamp::from_second(4_000).expect("ts"));
    assert_eq!(
        cond(&served, CONDITION_READY),
        ("True".into(), "TargetReached".into(), at.clone())
    );
    assert_eq!(cond(&served, CONDITION_RECONCILING).0, "False");
    assert_eq!(cond(&served, CONDITION_SERVING).0, "True");
    assert_ne!(cond(&served, CONDITION_SERVING).2, serving_since);
    assert_eq!(
        reconcile_at(&spec, &served, &live(&spec, 3, rolled_out(1)), 5_000),
        served
    );
    // A rollout past its deadline needs a change: Stalled with the Deployment's reason.
    let failed = reconcile_at(&spec, &served, &live(&spec, 3, deadline_exceeded()), 6_000);
    assert_eq!(cond(&failed, CONDITION_READY).0, "False");
    assert_eq!(
        (
            cond(&failed, CONDITION_STALLED).0,
            cond(&failed, CONDITION_STALLED).1
        ),
        ("True".into(), "DeploymentFailed".into())
    );
    // Scaled to zero on purpose: serving gates nothing.
    let mut zero = spec_json();
    zero["serving"]["replicas"] = json!(0);
    let zero = spec_from(zero);
    let scaled = reconcile_at(&zero, &decided, &live(&zero, 3, rolled_out(0)), 7_000);
    assert_eq!(cond(&scaled, CONDITION_READY).0, "True");
}

#[test]
fn the_base_model_follows_the_training_method_and_student() {
    let lora = spec_from(spec_json());
    assert_eq!(
        base_model("tickets", "team-a", None, &lora).expect("base"),
        Some("hf://HuggingFaceTB/SmolLM2-135M-Instruct".into())
    );
    let mut scratch = spec_json();
    scratch["student"] = json!({"fromScratch": {}});
    let scratch = spec_from(scratch);
    // The base the first train stage wrote under the recorded root...
    assert_eq!(
        base_model(
            "tickets",
            "team-a",
            Some("file:///artifacts/team-a/tickets/uid-1"),
            &scratch
        )
        .expect("base"),
        Some("file:///artifacts/team-a/tickets/uid-1/student/base".into())
    );
    // ...or, in a status an older operator wrote without one, under the root it used.
    assert_eq!(
        base_model("tickets", "team-a", None, &scratch).expect("base"),
        Some("file:///artifacts/team-a/tickets/student/base".into())
    );
    let mut full = spec_json();
    full["training"] = json!({"method": "full"});
    assert_eq!(
        base_model("tickets", "team-a", None, &spec_from(full)).expect("base"),
        None
    );
    assert_eq!(
        serve_args("tickets", "m", None),
        [
            "--model",
            "m",
            "--served-model-name",
            "tickets",
            "--listen",
            "0.0.0.0:8000"
        ]
    );
    // Without storage the from-scratch base cannot be located: InvalidSpec, nothing applied.
    let mut nowhere = spec_json();
    nowhere["student"] = json!({"fromScratch": {}});
    nowhere.as_object_mut().expect("object").remove("storage");
    let nowhere = spec_from(nowhere);
    let plan = plan_serving(
        &ServingInputs {
            artifacts: None,
            ..inputs(&nowhere)
        },
        &succeeded(3),
        &ServingObservation::default(),
    )
    .expect("plan");
    assert_eq!(plan.action, ServingAction::Nothing);
    assert_eq!(condition(&plan).1, REASON_INVALID_SPEC);
    assert!(
        condition(&plan).2.contains("spec.storage"),
        "{:?}",
        plan.condition
    );
}

#[test]
fn serving_pods_use_the_pull_secrets_and_service_account_of_the_spec() {
    let mut v = spec_json();
    v["imagePullSecrets"] = json!([{"name": "registry"}]);
    v["serviceAccountName"] = json!("llamaduo-stages");
    let spec = spec_from(v);
    let d = render(&inputs(&spec), &best(3)).expect("render").deployment;
    let d = serde_json::to_value(&d).expect("json");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "registry"}]));
    assert_eq!(pod["serviceAccountName"], "llamaduo-stages");
    assert_eq!(pod["automountServiceAccountToken"], false);
}

#[test]
fn rendering_is_deterministic_and_long_names_stay_valid() {
    let spec = spec_from(spec_json());
    let a = render(&inputs(&spec), &best(3)).expect("render");
    let b = render(&inputs(&spec), &best(3)).expect("render");
    assert_eq!(a, b);
    let name = format!("{}.example", "very-long-migration-name-".repeat(9));
    let long = ServingInputs {
        migration: &name,
        ..inputs(&spec)
    };
    let objects = render(&long, &best(1)).expect("render");
    let d: Deployment = objects.deployment;
    let dn = d.metadata.name.clone().expect("name");
    assert!(dn.len() <= 63 && dn.ends_with("-serve"), "{dn}");
    assert_eq!(objects.service.metadata.name.as_deref(), Some(dn.as_str()));
    for (k, v) in d.metadata.labels.iter().flatten() {
        assert!(v.len() <= 63 && !v.contains('.'), "{k}={v}");
    }
    assert_eq!(
        endpoint(&name, "team-a"),
        format!("http://{dn}.team-a.svc/v1")
    );
    // The served model name is the migration's own name.
    let args = d.spec.template.spec.expect("pod").containers[0]
        .args
        .clone()
        .expect("args");
    let at = args
        .iter()
        .position(|a| a == "--served-model-name")
        .expect("flag");
    assert_eq!(args[at + 1], name);
}
