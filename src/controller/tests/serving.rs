//! Serving scenarios against the mocked API server: the exact Deployment and Service a
//! succeeded migration gets, the status patch with the endpoint and the `Serving` condition,
//! the roll to a better round, the deletes when serving is disabled, and the Events.

use http::Method;
use serde_json::{Value, json};

use super::{ApiServer, EVENTS, STATUS, condition, migration, not_found, scenario, spec};
use crate::controller::serving::{ServingInputs, render};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/team-a/deployments/tickets-serve";
const SERVICE: &str = "/api/v1/namespaces/team-a/services/tickets-serve";
const ENDPOINT: &str = "http://tickets-serve.team-a.svc/v1";

fn serving_spec() -> Value {
    let mut s = spec();
    s["serving"] = json!({"enabled": true, "replicas": 2,
                          "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                        "limits": {"memory": "2Gi"}}});
    s
}

fn model(round: u32) -> String {
    format!("file:///artifacts/team-a/tickets/round-{round}/model")
}

/// A migration whose round `round` reached the target.
fn succeeded(round: u32) -> Value {
    let rounds: Vec<Value> = (1..=round)
        .map(|r| {
            let stages: Vec<Value> = ["synthesize", "train", "evaluate"]
                .iter()
                .map(|s| json!({"stage": s, "attempts": 1, "succeeded": true}))
                .collect();
            json!({"round": r, "modelUri": model(r), "stages": stages,
                   "scores": {"mean": 70.0 + 10.0 * r as f64, "passRate": 0.9},
                   "outcome": if r == round { "targetReached" } else { "belowTarget" }})
        })
        .collect();
    json!({"phase": "Succeeded", "round": round, "observedGeneration": 1, "rounds": rounds,
           "best": {"round": round, "meanScore": 70.0 + 10.0 * round as f64,
                    "modelUri": model(round)}})
}

/// The live objects as the API server holds them after the operator applied the rendering
/// for `round` under `spec`, with the Deployment rolled out.
fn live(spec: &Value, round: u32, available: i32) -> (Value, Value) {
    let spec = serde_json::from_value(spec.clone()).expect("spec");
    let best = serde_json::from_value(succeeded(round)["best"].clone()).expect("best");
    let objects = render(
        &ServingInputs {
            migration: "tickets",
            namespace: "team-a",
            uid: "uid-1",
            spec: &spec,
            default_image: "registry.example/llamaduo-trainer:1.0",
            artifacts: None,
        },
        &best,
    )
    .expect("render");
    let mut d = serde_json::to_value(&objects.deployment).expect("json");
    d["metadata"]["generation"] = json!(1);
    d["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                         "availableReplicas": available, "readyReplicas": available});
    let s = serde_json::to_value(&objects.service).expect("json");
    (d, s)
}

#[tokio::test]
async fn a_succeeded_migration_gets_a_restricted_deployment_and_service() {
    let obj = migration(serving_spec(), succeeded(3));
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                DEPLOYMENT,
                404,
                not_found("deployments.apps", "tickets-serve"),
            )
            .await,
            s.expect(
                Method::GET,
                SERVICE,
                404,
                not_found("services", "tickets-serve"),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::PATCH, DEPLOYMENT, 200, Value::Null).await,
            s.expect(Method::PATCH, SERVICE, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    result.expect("reconcile");

    // Status first: the endpoint, Serving=False while the Deployment rolls out, and the
    // migration's own conditions as the round decision left them.
    let status = &seen[2].body["status"];
    assert_eq!(status["endpoint"], ENDPOINT);
    let serving = condition(status, "Serving");
    assert_eq!(serving["status"], "False");
    assert_eq!(serving["reason"], "DeploymentProgressing");
    assert_eq!(serving["observedGeneration"], 1);
    assert!(
        serving["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("creating Deployment tickets-serve serving round 3"),
        "{serving}"
    );
    // Ready waits for the endpoint: consumers gated on it must not call a rolling Deployment.
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(
        condition(status, "Ready")["reason"],
        "DeploymentProgressing"
    );
    assert_eq!(condition(status, "Reconciling")["status"], "True");
    assert_eq!(condition(status, "TargetReached")["status"], "True");

    // The Deployment, by server-side apply under the operator's field manager.
    let apply = &seen[3];
    assert!(
        apply.uri.contains("fieldManager=llamaduo-operator"),
        "{}",
        apply.uri
    );
    assert!(apply.uri.contains("force=true"), "{}", apply.uri);
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    let d = &apply.body;
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["metadata"]["name"], "tickets-serve");
    assert_eq!(d["metadata"]["namespace"], "team-a");
    let owner = json!([{"apiVersion": "llamaduo.dev/v1alpha1", "kind": "LlamaDuoMigration",
                        "name": "tickets", "uid": "uid-1", "controller": true,
                        "blockOwnerDeletion": true}]);
    assert_eq!(d["metadata"]["ownerReferences"], owner);
    let labels = json!({
        "app.kubernetes.io/name": "llamaduo-serve",
        "app.kubernetes.io/instance": "tickets",
        "app.kubernetes.io/component": "serve",
        "app.kubernetes.io/part-of": "llamaduo",
        "app.kubernetes.io/managed-by": "llamaduo-operator",
        "llamaduo.dev/migration": "tickets"
    });
    let selector = json!({
        "app.kubernetes.io/name": "llamaduo-serve",
        "app.kubernetes.io/instance": "tickets",
        "llamaduo.dev/migration": "tickets"
    });
    assert_eq!(d["metadata"]["labels"], labels);
    let annotations = &d["metadata"]["annotations"];
    assert_eq!(annotations["llamaduo.dev/model-round"], "3");
    assert_eq!(
        annotations["llamaduo.dev/applied-hash"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"], json!({"matchLabels": selector}));
    assert_eq!(d["spec"]["template"]["metadata"]["labels"], labels);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "tmp", "emptyDir": {}},
               {"name": "artifacts",
                "persistentVolumeClaim": {"claimName": "artifacts", "readOnly": false}}])
    );
    assert_eq!(pod["containers"].as_array().map(Vec::len), Some(1));
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "serve");
    assert_eq!(c["image"], "registry.example/llamaduo-trainer:1.0");
    assert_eq!(c["command"], json!(["llamaduo-trainer", "serve"]));
    // LoRA over a from-scratch student: the adapter needs the base the first round wrote.
    assert_eq!(
        c["args"],
        json!([
            "--model",
            model(3),
            "--base",
            "file:///artifacts/team-a/tickets/student/base",
            "--served-model-name",
            "tickets",
            "--listen",
            "0.0.0.0:8000"
        ])
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "http", "containerPort": 8000, "protocol": "TCP"}])
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5,
               "timeoutSeconds": 5, "failureThreshold": 3})
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 10,
               "timeoutSeconds": 5, "failureThreshold": 6})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}})
    );
    assert_eq!(
        c["securityContext"],
        json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true,
               "allowPrivilegeEscalation": false, "privileged": false,
               "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    // No API key: the server talks to no service LLM.
    assert_eq!(c["env"], json!([{"name": "HOME", "value": "/tmp"}]));
    assert!(c.get("envFrom").is_none(), "{c}");
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "tmp", "mountPath": "/tmp"},
               {"name": "artifacts", "mountPath": "/artifacts"}])
    );

    // The Service: ClusterIP, port 80 to the named port, selecting the serving pods.
    let apply = &seen[4];
    assert!(
        apply.uri.contains("fieldManager=llamaduo-operator"),
        "{}",
        apply.uri
    );
    let svc = &apply.body;
    assert_eq!(svc["apiVersion"], "v1");
    assert_eq!(svc["kind"], "Service");
    assert_eq!(svc["metadata"]["name"], "tickets-serve");
    assert_eq!(svc["metadata"]["labels"], labels);
    assert_eq!(svc["metadata"]["ownerReferences"], owner);
    assert_eq!(
        svc["spec"],
        json!({"type": "ClusterIP", "selector": selector,
               "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]})
    );

    let event = &seen[5].body;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "ServingStarted");
    assert_eq!(event["action"], "StartServing:round-3");
    let note = event["note"].as_str().unwrap_or("");
    assert!(
        note.contains(&model(3)) && note.contains(ENDPOINT),
        "{note}"
    );
}

#[tokio::test]
async fn an_available_deployment_sets_serving_true_and_applies_nothing() {
    let (d, svc) = live(&serving_spec(), 3, 2);
    let mut status = succeeded(3);
    status["endpoint"] = json!(ENDPOINT);
    let obj = migration(serving_spec(), status);
    let (result, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(Method::GET, DEPLOYMENT, 200, d).await,
            s.expect(Method::GET, SERVICE, 200, svc).await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    result.expect("reconcile");
    let status = &seen[2].body["status"];
    assert_eq!(status["endpoint"], ENDPOINT);
    let serving = condition(status, "Serving");
    assert_eq!(serving["status"], "True");
    assert_eq!(serving["reason"], "Available");
}

#[tokio::test]
async fn a_better_round_rolls_the_deployment_to_its_model() {
    // The live objects serve round 2; the status now names round 3 as best.
    let (d, svc) = live(&serving_spec(), 2, 2);
    let mut status = succeeded(3);
    status["endpoint"] = json!(ENDPOINT);
    let obj = migration(serving_spec(), status);
    let (result, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(Method::GET, DEPLOYMENT, 200, d).await,
            s.expect(Method::GET, SERVICE, 200, svc).await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::PATCH, DEPLOYMENT, 200, Value::Null).await,
            s.expect(Method::PATCH, SERVICE, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    result.expect("reconcile");
    assert_eq!(
        condition(&seen[2].body["status"], "Serving")["reason"],
        "DeploymentProgressing"
    );
    let c = &seen[3].body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][1], model(3));
    assert_eq!(
        seen[3].body["metadata"]["annotations"]["llamaduo.dev/model-round"],
        "3"
    );
    let event = &seen[5].body;
    assert_eq!(event["reason"], "ServingUpdated");
    let action = event["action"].as_str().unwrap_or("");
    assert!(action.starts_with("UpdateServing:round-3:"), "{action}");
    let note = event["note"].as_str().unwrap_or("");
    assert!(note.contains("from round 2 to round 3"), "{note}");
}

#[tokio::test]
async fn disabling_serving_deletes_the_deployment_and_service_then_clears_the_endpoint() {
    let (d, svc) = live(&serving_spec(), 3, 2);
    let mut status = succeeded(3);
    status["endpoint"] = json!(ENDPOINT);
    status["conditions"] = json!([{"type": "Serving", "status": "True", "reason": "Available",
                                   "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    let mut off = serving_spec();
    off["serving"]["enabled"] = json!(false);
    let obj = migration(off, status);
    let (d2, svc2) = (d.clone(), svc.clone());
    let (result, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(Method::GET, DEPLOYMENT, 200, d).await,
            s.expect(Method::GET, SERVICE, 200, svc).await,
            s.expect(Method::DELETE, DEPLOYMENT, 200, d2).await,
            s.expect(Method::DELETE, SERVICE, 200, svc2).await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    result.expect("reconcile");
    assert_eq!(seen[2].body["propagationPolicy"], "Background");
    let status = &seen[4].body["status"];
    assert!(status.get("endpoint").is_none(), "{status}");
    let serving = condition(status, "Serving");
    assert_eq!(serving["status"], "False");
    assert_eq!(serving["reason"], "Disabled");
    assert_eq!(condition(status, "Ready")["status"], "True");
    let event = &seen[5].body;
    assert_eq!(event["reason"], "ServingStopped");
    assert_eq!(event["action"], "StopServing:round-3");
    let note = event["note"].as_str().unwrap_or("");
    assert!(
        note.contains("Deployment tickets-serve and Service tickets-serve"),
        "{note}"
    );
}

#[tokio::test]
async fn a_failed_delete_keeps_the_endpoint_and_is_retried() {
    let (d, svc) = live(&serving_spec(), 3, 2);
    let mut status = succeeded(3);
    status["endpoint"] = json!(ENDPOINT);
    let mut off = serving_spec();
    off["serving"]["enabled"] = json!(false);
    let obj = migration(off, status);
    let (result, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(Method::GET, DEPLOYMENT, 200, d).await,
            s.expect(Method::GET, SERVICE, 200, svc).await,
            s.expect(
                Method::DELETE,
                DEPLOYMENT,
                403,
                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                       "message": "deployments.apps \"tickets-serve\" is forbidden",
                       "reason": "Forbidden", "code": 403}),
            )
            .await,
            // No status write: the endpoint stays, so the next reconcile deletes again.
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    let err = result.expect_err("the delete failed");
    assert_eq!(err.reason(), "DeleteServing");
    assert_eq!(seen[3].body["reason"], "DeleteServing");
    assert_eq!(seen[3].body["type"], "Warning");
}

#[tokio::test]
async fn a_migration_that_succeeds_starts_serving_in_the_same_reconcile() {
    // Round 1 evaluated above the target (80): the round decision finishes the migration.
    let mut status = succeeded(1);
    status["phase"] = json!("Evaluating");
    status["rounds"][0]
        .as_object_mut()
        .expect("round")
        .remove("outcome");
    status["rounds"][0]["scores"]["mean"] = json!(90.0);
    status["best"]["meanScore"] = json!(90.0);
    let obj = migration(serving_spec(), status);
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                DEPLOYMENT,
                404,
                not_found("deployments.apps", "tickets-serve"),
            )
            .await,
            s.expect(
                Method::GET,
                SERVICE,
                404,
                not_found("services", "tickets-serve"),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
            s.expect(Method::PATCH, DEPLOYMENT, 200, Value::Null).await,
            s.expect(Method::PATCH, SERVICE, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    result.expect("reconcile");
    let status = &seen[2].body["status"];
    assert_eq!(status["phase"], "Succeeded");
    assert_eq!(status["endpoint"], ENDPOINT);
    assert_eq!(
        condition(status, "Serving")["reason"],
        "DeploymentProgressing"
    );
    assert_eq!(seen[3].body["reason"], "TargetReached");
    assert_eq!(
        seen[4].body["spec"]["template"]["spec"]["containers"][0]["args"][1],
        model(1)
    );
    assert_eq!(seen[6].body["reason"], "ServingStarted");
}

/// A migration that stopped on a plateau: rounds 1-3 scored 61, 71, 65 against the target
/// 80, round 2 the best.
fn plateaued() -> Value {
    let rounds: Vec<Value> = [61.0, 71.0, 65.0]
        .iter()
        .zip(1u32..)
        .map(|(mean, r)| {
            let stages: Vec<Value> = ["synthesize", "train", "evaluate"]
                .iter()
                .map(|s| json!({"stage": s, "attempts": 1, "succeeded": true}))
                .collect();
            json!({"round": r, "modelUri": model(r), "stages": stages,
                   "scores": {"mean": mean, "passRate": 0.5},
                   "outcome": if r == 3 { "stopped" } else { "belowTarget" }})
        })
        .collect();
    let message = "plateau: the best mean score 71.00 (round 2) has not improved for 1 rounds (stop.plateauRounds)";
    json!({"phase": "Failed", "round": 3, "observedGeneration": 1, "rounds": rounds,
           "message": message,
           "best": {"round": 2, "meanScore": 71.0, "modelUri": model(2)},
           "conditions": [{"type": "Stalled", "status": "True", "reason": "Plateau",
                           "message": message, "observedGeneration": 1,
                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
}

/// The serving spec with `serving.when` and the stop rule that ended [`plateaued`] (so the
/// round decision keeps it stopped).
fn plateau_spec(when: &str) -> Value {
    let mut spec = serving_spec();
    spec["serving"]["when"] = json!(when);
    spec["stop"] = json!({"maxRounds": 10, "plateauRounds": 1});
    spec
}

#[tokio::test]
async fn a_plateaued_migration_with_when_best_serves_its_best_round() {
    let obj = migration(plateau_spec("best"), plateaued());
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                DEPLOYMENT,
                404,
                not_found("deployments.apps", "tickets-serve"),
            )
            .await,
            s.expect(
                Method::GET,
                SERVICE,
                404,
                not_found("services", "tickets-serve"),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::PATCH, DEPLOYMENT, 200, Value::Null).await,
            s.expect(Method::PATCH, SERVICE, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    result.expect("reconcile");

    let status = &seen[2].body["status"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["endpoint"], ENDPOINT);
    let serving = condition(status, "Serving");
    assert_eq!(serving["status"], "False");
    assert_eq!(serving["reason"], "DeploymentProgressing");
    let message = serving["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(&format!(
            "creating Deployment tickets-serve serving round 2 ({}), the best round's model, below \
             the target (mean score 71.00, target 80.00): the migration stopped on Plateau",
            model(2)
        )),
        "{message}"
    );
    // The migration failed: Ready stays False with the stop, whatever is served.
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "Plateau");
    assert_eq!(condition(status, "Stalled")["status"], "True");
    assert_eq!(condition(status, "TargetReached")["status"], "False");

    // The same Deployment and Service a succeeded migration gets, on round 2's model.
    let d = &seen[3].body;
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["metadata"]["name"], "tickets-serve");
    assert_eq!(
        d["metadata"]["annotations"]["llamaduo.dev/model-round"],
        "2"
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "--model");
    assert_eq!(c["args"][1], model(2));
    let svc = &seen[4].body;
    assert_eq!(svc["kind"], "Service");
    assert_eq!(svc["metadata"]["name"], "tickets-serve");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);

    let event = &seen[5].body;
    assert_eq!(event["reason"], "ServingStarted");
    assert_eq!(event["action"], "StartServing:round-2");
}

#[tokio::test]
async fn a_plateaued_migration_serves_nothing_by_default_and_reads_nothing() {
    // when: succeeded (the default): no Deployment or Service is read or written, only the
    // status says why and how to serve the best round anyway.
    let obj = migration(plateau_spec("succeeded"), plateaued());
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![s.expect(Method::PATCH, STATUS, 200, Value::Null).await]
    })
    .await;
    result.expect("reconcile");
    let status = &seen[0].body["status"];
    assert!(status.get("endpoint").is_none(), "{status}");
    let serving = condition(status, "Serving");
    assert_eq!(serving["status"], "False");
    assert_eq!(serving["reason"], "NotSucceeded");
    let message = serving["message"].as_str().unwrap_or("");
    assert!(
        message.contains("stopped on Plateau below its target")
            && message.contains("set it to best to serve round 2's model"),
        "{message}"
    );
}
