//! Reconcile scenarios against a mocked API server (tower-test): each test scripts the exact
//! sequence of API calls one reconcile must make, answers them, and checks the requests (the
//! Job spec, the status patch, the Events). A request outside the script hangs the reconcile,
//! which the timeout turns into a failure, so "no Job created" is proven, not assumed.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::DynamicObject;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{Config, Context, Metrics, reconcile};
use crate::api::{FailureClass, Stage, StageResult, SynthesizeOutcome, TokenUsage};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The scripted API server.
struct ApiServer(Handle);

/// One request as the server saw it.
struct Seen {
    uri: String,
    content_type: String,
    body: Value,
}

impl ApiServer {
    /// Expect `method` on `path` (query ignored), answer `status` with `body` (JSON; Null
    /// echoes the request body).
    async fn expect(&mut self, method: Method, path: &str, status: u16, body: Value) -> Seen {
        self.respond(method, path, status, |seen| {
            let answer = if body.is_null() { &seen.body } else { &body };
            serde_json::to_vec(answer).expect("json")
        })
        .await
    }

    /// Expect `method` on `path`, answer `status` with a plain-text body (a pod log).
    async fn expect_text(&mut self, method: Method, path: &str, status: u16, text: &str) -> Seen {
        self.respond(method, path, status, |_| text.as_bytes().to_vec())
            .await
    }

    async fn respond(
        &mut self,
        method: Method,
        path: &str,
        status: u16,
        answer: impl FnOnce(&Seen) -> Vec<u8>,
    ) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        let uri = request.uri().to_string();
        assert_eq!(request.method(), method, "{uri}");
        assert_eq!(request.uri().path(), path, "{method} {uri}");
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        let seen = Seen {
            uri,
            content_type,
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("request body is JSON")
            },
        };
        let answer = answer(&seen);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(answer))
                .expect("response"),
        );
        seen
    }
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound", "code": 404})
}

fn context() -> (Arc<Context>, ApiServer) {
    // Progress reads add API calls; the scenarios that test them turn them on.
    context_reading_progress(Duration::ZERO)
}

fn context_reading_progress(every: Duration) -> (Arc<Context>, ApiServer) {
    context_with(every, true)
}

fn context_with(every: Duration, secret_checks: bool) -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(
        client,
        Config {
            trainer_image: "registry.example/llamaduo-trainer:1.0".into(),
            progress_interval: every,
            secret_checks,
        },
        Arc::new(Metrics::default()),
        Some("llamaduo-operator-0".into()),
    );
    (Arc::new(ctx), ApiServer(handle))
}

fn spec() -> Value {
    json!({
        "task": {"description": "Add two numbers"},
        "coverage": {"source": "configmap://coverage/rows.jsonl"},
        "teacher": {"provider": "openai", "model": "gpt-4o",
                    "apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        "student": {"fromScratch": {}},
        "target": {"meanScore": 80.0},
        "storage": {"url": "file:///artifacts", "volume": {"claimName": "artifacts"}}
    })
}

fn migration(spec: Value, status: Value) -> DynamicObject {
    let mut obj = json!({
        "apiVersion": "llamaduo.dev/v1alpha1",
        "kind": "LlamaDuoMigration",
        "metadata": {"name": "tickets", "namespace": "team-a", "uid": "uid-1",
                     "generation": 1, "resourceVersion": "10"},
        "spec": spec,
    });
    if !status.is_null() {
        obj["status"] = status;
    }
    serde_json::from_value(obj).expect("migration fixture")
}

/// Run one reconcile while `script` answers the API calls; both must finish.
async fn scenario<F>(obj: DynamicObject, script: F) -> (Result<Action, super::Error>, Vec<Seen>)
where
    F: AsyncFnOnce(&mut ApiServer) -> Vec<Seen>,
{
    let (ctx, mut server) = context();
    scenario_in(ctx, &mut server, obj, script).await
}

/// [`scenario`] with a given context, so a test can read its metrics afterwards.
async fn scenario_in<F>(
    ctx: Arc<Context>,
    server: &mut ApiServer,
    obj: DynamicObject,
    script: F,
) -> (Result<Action, super::Error>, Vec<Seen>)
where
    F: AsyncFnOnce(&mut ApiServer) -> Vec<Seen>,
{
    let reconciled = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(obj), ctx));
    let (result, seen) = tokio::join!(reconciled, script(server));
    let result = result.expect("reconcile made a request outside the script, or hung");
    (result, seen)
}

const JOBS: &str = "/apis/batch/v1/namespaces/team-a/jobs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";
const STATUS: &str =
    "/apis/llamaduo.dev/v1alpha1/namespaces/team-a/llamaduomigrations/tickets/status";

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("env {name} missing in {container}"))
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} missing in {status}"))
}

#[tokio::test]
async fn a_new_migration_starts_round_one_synthesis_as_a_restricted_job() {
    let obj = migration(spec(), Value::Null);
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        let mut seen = expect_start_prerequisites(s).await;
        seen.push(s.expect(Method::PATCH, STATUS, 200, Value::Null).await);
        seen.push(s.expect(Method::POST, JOBS, 201, Value::Null).await);
        seen.push(s.expect(Method::POST, EVENTS, 201, Value::Null).await);
        seen
    })
    .await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(5))
    );

    // Status first: server-side apply by one field manager, with the run recorded.
    let patch = &seen[4];
    assert!(
        patch.uri.contains("fieldManager=llamaduo-operator"),
        "{}",
        patch.uri
    );
    assert!(patch.uri.contains("force=true"), "{}", patch.uri);
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(patch.body["apiVersion"], "llamaduo.dev/v1alpha1");
    assert_eq!(patch.body["kind"], "LlamaDuoMigration");
    // Conditional on the object the decision was made from.
    assert_eq!(patch.body["metadata"]["resourceVersion"], "10");
    let status = &patch.body["status"];
    assert_eq!(status["phase"], "Synthesizing");
    assert_eq!(status["round"], 1);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["current"]["name"], "tickets-r1-synthesize");
    assert_eq!(condition(status, "Reconciling")["status"], "True");
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Stalled")["status"], "False");

    // Then the Job, exactly.
    let job = &seen[5].body;
    assert_eq!(job["metadata"]["name"], "tickets-r1-synthesize");
    assert_eq!(job["metadata"]["namespace"], "team-a");
    assert_eq!(
        job["metadata"]["ownerReferences"],
        json!([{"apiVersion": "llamaduo.dev/v1alpha1", "kind": "LlamaDuoMigration",
                "name": "tickets", "uid": "uid-1", "controller": true,
                "blockOwnerDeletion": true}])
    );
    let labels = &job["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "llamaduo-trainer");
    assert_eq!(labels["app.kubernetes.io/instance"], "tickets");
    assert_eq!(labels["app.kubernetes.io/component"], "synthesize");
    assert_eq!(labels["app.kubernetes.io/part-of"], "llamaduo");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "llamaduo-operator");
    assert_eq!(labels["llamaduo.dev/round"], "1");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    // A drained node or a preempted pod is not a failed attempt.
    assert_eq!(
        job["spec"]["podFailurePolicy"],
        json!({"rules": [{"action": "Ignore",
                          "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]})
    );
    let template = &job["spec"]["template"];
    assert_eq!(template["metadata"]["labels"], *labels);
    let pod = &template["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "trainer");
    assert_eq!(c["image"], "registry.example/llamaduo-trainer:1.0");
    assert_eq!(c["command"], json!(["llamaduo-trainer", "synthesize"]));
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(
        c["securityContext"],
        json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true,
               "allowPrivilegeEscalation": false, "privileged": false,
               "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        env(c, "LLAMADUO_TEACHER_API_KEY")["valueFrom"],
        json!({"secretKeyRef": {"name": "openai", "key": "api-key", "optional": false}})
    );
    let config: Value = serde_json::from_str(
        env(c, "LLAMADUO_STAGE_CONFIG")["value"]
            .as_str()
            .expect("config string"),
    )
    .expect("config JSON");
    assert_eq!(config["stage"], "synthesize");
    // Under the object's uid: a migration created again under this name starts afresh.
    assert_eq!(
        config["artifacts"],
        "file:///artifacts/team-a/tickets/uid-1"
    );
    assert_eq!(status["artifacts"], config["artifacts"]);
    assert_eq!(config["samples"], 1000);
    // The ConfigMap source is rewritten to its mounted file.
    assert_eq!(
        config["coverage"]["source"],
        "file:///etc/llamaduo/coverage/coverage/rows.jsonl"
    );
    assert!(
        !config.to_string().contains("c2VjcmV0"),
        "no secret in the config"
    );
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}: {mounts:?}"))
            .clone()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &Value| {
        volumes
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    assert_eq!(volume(&mount("/tmp")["name"])["emptyDir"], json!({}));
    assert_eq!(
        volume(&mount("/artifacts")["name"])["persistentVolumeClaim"]["claimName"],
        "artifacts"
    );
    assert_eq!(
        volume(&mount("/etc/llamaduo/coverage/coverage")["name"])["configMap"]["name"],
        "coverage"
    );

    // Then the Event.
    let event = &seen[6].body;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "StageStarted");
    // One action per run, so the recorder never folds round 2's start into round 1's Event.
    assert_eq!(event["action"], "StartStage:round-1:synthesize:attempt-1");
    assert_eq!(event["regarding"]["name"], "tickets");
    assert_eq!(event["regarding"]["kind"], "LlamaDuoMigration");
    assert_eq!(event["reportingController"], "llamaduo-operator");
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("tickets-r1-synthesize")
    );
}

/// The calls of a start whose prerequisites exist, up to (not including) the status write.
async fn expect_start_prerequisites(s: &mut ApiServer) -> Vec<Seen> {
    vec![
        s.expect(
            Method::GET,
            &format!("{JOBS}/tickets-r1-synthesize"),
            404,
            not_found("jobs.batch", "tickets-r1-synthesize"),
        )
        .await,
        s.expect(
            Method::GET,
            "/api/v1/namespaces/team-a/secrets/openai",
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "openai"},
                   "data": {"api-key": "c2VjcmV0"}}),
        )
        .await,
        s.expect(
            Method::GET,
            "/api/v1/namespaces/team-a/configmaps/coverage",
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coverage"},
                   "data": {"rows.jsonl": "{}"}}),
        )
        .await,
        s.expect(
            Method::GET,
            "/api/v1/namespaces/team-a/persistentvolumeclaims/artifacts",
            200,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "artifacts"}}),
        )
        .await,
    ]
}

#[tokio::test]
async fn a_job_the_api_server_refuses_stalls_the_run_until_it_is_created() {
    let quota = || {
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "message": "jobs.batch \"tickets-r1-synthesize\" is forbidden: exceeded quota: \
                           compute, requested: requests.cpu=2, used: requests.cpu=7, \
                           limited: requests.cpu=8",
               "reason": "Forbidden", "code": 403})
    };
    let obj = migration(spec(), Value::Null);
    let (result, seen) = scenario(obj, async move |s: &mut ApiServer| {
        let mut seen = expect_start_prerequisites(s).await;
        let mut written = migration(spec(), Value::Null);
        written.metadata.resource_version = Some("11".into());
        let written = serde_json::to_value(&written).expect("object");
        seen.push(s.expect(Method::PATCH, STATUS, 200, written).await);
        seen.push(s.expect(Method::POST, JOBS, 403, quota()).await);
        seen.push(s.expect(Method::PATCH, STATUS, 200, Value::Null).await);
        seen.push(s.expect(Method::POST, EVENTS, 201, Value::Null).await);
        seen
    })
    .await;
    // Backoff, not the quick requeue of progress: nothing changes until the quota does.
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(5))
    );
    let stalled = &seen[6].body;
    // Conditional on the status this reconcile just wrote, not the one it read.
    assert_eq!(stalled["metadata"]["resourceVersion"], "11");
    let status = &stalled["status"];
    let condition = condition(status, "Stalled");
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "JobRejected");
    let message = condition["message"].as_str().expect("message");
    assert!(message.contains("exceeded quota: compute"), "{message}");
    assert!(message.contains("tickets-r1-synthesize"), "{message}");
    assert_eq!(status["message"], message);
    // The refused run stays current: it is the one tried again.
    assert_eq!(status["current"]["name"], "tickets-r1-synthesize");
    assert_eq!(seen[7].body["type"], "Warning");
    assert_eq!(seen[7].body["reason"], "JobRejected");

    // Tried again: still refused, so nothing changes and no Event repeats.
    let after = migration(spec(), status.clone());
    let (ctx, mut server) = context();
    let (result, again) = scenario_in(
        ctx.clone(),
        &mut server,
        after.clone(),
        async move |s: &mut ApiServer| {
            let mut seen = expect_start_prerequisites(s).await;
            seen.push(s.expect(Method::POST, JOBS, 403, quota()).await);
            seen
        },
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(again.len(), 5, "no status write, no Event");

    // Once the quota allows it, the Job is created; the stall stays until the run is seen.
    let (result, started) = scenario_in(ctx, &mut server, after, async |s: &mut ApiServer| {
        let mut seen = expect_start_prerequisites(s).await;
        seen.push(s.expect(Method::POST, JOBS, 201, Value::Null).await);
        seen.push(s.expect(Method::POST, EVENTS, 201, Value::Null).await);
        seen
    })
    .await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(started[5].body["reason"], "StageStarted");
}

#[tokio::test]
async fn a_running_job_clears_the_stall_of_its_refused_start() {
    let mut status = started_status();
    status["message"] = json!("refused");
    status["conditions"] = json!([{"type": "Stalled", "status": "True", "reason": "JobRejected",
        "message": "refused", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    let mut job = finished_job("Complete");
    job["status"] = json!({"active": 1, "ready": 1});
    let obj = migration(spec(), status);
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                job,
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    let status = &seen[1].body["status"];
    assert_eq!(condition(status, "Stalled")["status"], "False");
    assert_eq!(condition(status, "Reconciling")["status"], "True");
}

#[tokio::test]
async fn the_backoff_of_deleted_migrations_is_forgotten() {
    let (ctx, _api) = context();
    assert_eq!(ctx.backoff("team-a/kept"), Duration::from_secs(5));
    assert_eq!(ctx.backoff("team-a/kept"), Duration::from_secs(10));
    assert_eq!(ctx.backoff("team-a/gone"), Duration::from_secs(5));
    assert_eq!(ctx.backoff("team-a/gone"), Duration::from_secs(10));
    ctx.forget_deleted(|ns, name| ns == "team-a" && name == "kept");
    assert_eq!(
        ctx.backoff("team-a/kept"),
        Duration::from_secs(20),
        "kept counting"
    );
    assert_eq!(
        ctx.backoff("team-a/gone"),
        Duration::from_secs(5),
        "started over"
    );
}

#[tokio::test]
async fn a_missing_secret_stalls_with_its_name_and_creates_no_job() {
    let obj = migration(spec(), Value::Null);
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                404,
                not_found("jobs.batch", "tickets-r1-synthesize"),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/secrets/openai",
                404,
                not_found("secrets", "openai"),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    // Retried with backoff (Secrets are not watched), starting at 5 s.
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(5))
    );
    let status = &seen[2].body["status"];
    let stalled = condition(status, "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "SecretNotFound");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap_or("")
            .contains("team-a/openai")
    );
    assert!(status.get("current").is_none(), "no run recorded: {status}");
    assert_eq!(seen[3].body["type"], "Warning");
    assert_eq!(seen[3].body["reason"], "SecretNotFound");
}

/// With `--secret-checks=false` (the chart's `secretChecks: false`, whose RBAC grants no
/// Secret access) no Secret is read: the run starts, and a missing Secret is reported from
/// the pod's CreateContainerConfigError instead.
#[tokio::test]
async fn without_secret_checks_a_stage_starts_without_reading_any_secret() {
    let (ctx, mut server) = context_with(Duration::ZERO, false);
    let obj = migration(spec(), Value::Null);
    let (result, seen) = scenario_in(ctx, &mut server, obj, async |s: &mut ApiServer| {
        let mut seen = vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                404,
                not_found("jobs.batch", "tickets-r1-synthesize"),
            )
            .await,
        ];
        // The prerequisites without the Secret: the ConfigMap and the claim.
        seen.push(
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/configmaps/coverage",
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coverage"},
                       "data": {"rows.jsonl": "{}"}}),
            )
            .await,
        );
        seen.push(
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/persistentvolumeclaims/artifacts",
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": "artifacts"}}),
            )
            .await,
        );
        seen.push(s.expect(Method::PATCH, STATUS, 200, Value::Null).await);
        seen.push(s.expect(Method::POST, JOBS, 201, Value::Null).await);
        seen.push(s.expect(Method::POST, EVENTS, 201, Value::Null).await);
        seen
    })
    .await;
    result.expect("reconcile");
    assert!(seen.iter().all(|s| !s.uri.contains("/secrets")));
    // The pod still gets its key by reference.
    let job = &seen[4].body;
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(container, "LLAMADUO_TEACHER_API_KEY")["valueFrom"]["secretKeyRef"]["name"],
        "openai"
    );
}

#[tokio::test]
async fn a_missing_service_account_stalls_naming_it_and_creates_no_job() {
    let mut s = spec();
    s["serviceAccountName"] = json!("llamaduo-stages");
    let obj = migration(s, Value::Null);
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        let mut seen = expect_start_prerequisites(s).await;
        seen.push(
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/serviceaccounts/llamaduo-stages",
                404,
                not_found("serviceaccounts", "llamaduo-stages"),
            )
            .await,
        );
        seen.push(s.expect(Method::PATCH, STATUS, 200, Value::Null).await);
        seen.push(s.expect(Method::POST, EVENTS, 201, Value::Null).await);
        seen
    })
    .await;
    result.expect("reconcile");
    let stalled = condition(&seen[5].body["status"], "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "ServiceAccountNotFound");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap_or("")
            .contains("ServiceAccount team-a/llamaduo-stages (from spec.serviceAccountName)"),
        "{stalled}"
    );
    assert_eq!(seen[6].body["reason"], "ServiceAccountNotFound");
}

#[tokio::test]
async fn an_undeserializable_spec_stalls_with_the_field_path() {
    let mut bad = spec();
    bad["target"]["meanScore"] = json!("high");
    let obj = migration(bad, Value::Null);
    let (result, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    // Waits for a change instead of hot-looping.
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(3600))
    );
    let stalled = condition(&seen[0].body["status"], "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "InvalidSpec");
    let message = stalled["message"].as_str().unwrap_or("");
    assert!(message.starts_with("spec.target.meanScore:"), "{message}");
    assert_eq!(seen[1].body["reason"], "InvalidSpec");
    assert_eq!(seen[1].body["type"], "Warning");
}

#[tokio::test]
async fn an_unchanged_stall_writes_nothing() {
    let mut bad = spec();
    bad["target"] = json!(5);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_000).expect("ts"),
    );
    let parsed = super::parse_spec(&migration(bad.clone(), Value::Null)).expect_err("invalid");
    let status = crate::plan::stalled(
        &Default::default(),
        &crate::plan::Stall::new("InvalidSpec", parsed),
        Some(1),
        &now,
    );
    let obj = migration(bad, serde_json::to_value(&status).expect("status"));
    let (result, seen) = scenario(obj, async |_s: &mut ApiServer| Vec::new()).await;
    assert!(result.is_ok());
    assert!(seen.is_empty());
}

fn started_status() -> Value {
    json!({
        "phase": "Synthesizing", "round": 1, "observedGeneration": 1,
        "current": {"round": 1, "stage": "synthesize", "attempt": 1,
                    "name": "tickets-r1-synthesize", "generation": 1},
        "rounds": [{"round": 1}]
    })
}

fn finished_job(condition: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "tickets-r1-synthesize", "namespace": "team-a", "uid": "job-uid-1",
                     "ownerReferences": [{"apiVersion": "llamaduo.dev/v1alpha1",
                        "kind": "LlamaDuoMigration", "name": "tickets", "uid": "uid-1",
                        "controller": true}]},
        "status": {"conditions": [{"type": condition, "status": "True"}]}
    })
}

fn pods_with_message(exit_code: i32, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [{
            "metadata": {"name": "tickets-r1-synthesize-x7k2p", "namespace": "team-a"},
            "status": {"containerStatuses": [{
                "name": "trainer", "image": "img", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "message": message}}
            }]}
        }]
    })
}

#[tokio::test]
async fn a_restart_records_a_finished_job_before_anything_else() {
    let mut result = StageResult::success(Stage::Synthesize, 1);
    result.service_tokens = TokenUsage {
        input: 700,
        output: 300,
    };
    result.synthesize = Some(SynthesizeOutcome {
        requested: 1000,
        produced: 990,
        ..SynthesizeOutcome::default()
    });
    let message = result.to_termination_message();
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                finished_job("Complete"),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                pods_with_message(0, &message),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    assert!(
        seen[1]
            .uri
            .contains("labelSelector=batch.kubernetes.io%2Fcontroller-uid%3Djob-uid-1"),
        "pods of this very Job: {}",
        seen[1].uri
    );
    let status = &seen[2].body["status"];
    assert!(status.get("current").is_none(), "{status}");
    assert_eq!(
        status["serviceTokens"],
        json!({"input": 700, "output": 300})
    );
    assert_eq!(status["rounds"][0]["synthesized"], 990);
    assert_eq!(status["rounds"][0]["stages"][0]["succeeded"], true);
    assert_eq!(seen[3].body["reason"], "StageSucceeded");
    assert_eq!(
        seen[3].body["action"],
        "RecordResult:round-1:synthesize:attempt-1"
    );
    assert_eq!(seen[3].body["type"], "Normal");
}

#[tokio::test]
async fn a_failed_job_is_recorded_with_its_log_tail_and_a_warning() {
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                finished_job("Failed"),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                pods_with_message(1, "loading\nError: teacher returned 401 Unauthorized\n"),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    let record = &seen[2].body["status"]["rounds"][0]["stages"][0];
    assert_eq!(record["succeeded"], false);
    assert_eq!(record["attempts"], 1);
    assert_eq!(
        record["message"],
        "container exited with code 1: Error: teacher returned 401 Unauthorized"
    );
    assert_eq!(seen[3].body["type"], "Warning");
    assert_eq!(seen[3].body["reason"], "StageFailed");
    // No result: a crash, transient.
    assert_eq!(record["failureClass"], "transient", "{record}");
    let note = seen[3].body["note"].as_str().unwrap_or_default();
    assert!(note.contains("(transient)"), "{note}");
}

#[tokio::test]
async fn a_permanent_failure_is_recorded_as_such_and_the_event_says_it_is_not_retried() {
    let result = StageResult::failure(
        Stage::Synthesize,
        1,
        "teacher: openai returned HTTP 404: The model `gpt-5-nano-typo` does not exist",
    )
    .classed(FailureClass::Permanent);
    let message = result.to_termination_message();
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                finished_job("Failed"),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                pods_with_message(1, &message),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    let record = &seen[2].body["status"]["rounds"][0]["stages"][0];
    assert_eq!(record["failureClass"], "permanent", "{record}");
    assert_eq!(seen[3].body["reason"], "StageFailed");
    let note = seen[3].body["note"].as_str().unwrap_or_default();
    assert!(note.contains("(permanent, not retried)"), "{note}");
    assert!(note.contains("gpt-5-nano-typo"), "{note}");
}

fn running_job() -> Value {
    let mut job = finished_job("Complete");
    // A ready pod: its container started, so no pod list is needed to know it runs.
    job["status"] = json!({"active": 1, "ready": 1});
    job
}

fn running_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [{
            "metadata": {"name": "tickets-r1-synthesize-x7k2p", "namespace": "team-a",
                         "creationTimestamp": "2026-12-08T00:00:00Z"},
            "status": {"phase": "Running"}
        }]
    })
}

const POD_LOG: &str = "/api/v1/namespaces/team-a/pods/tickets-r1-synthesize-x7k2p/log";

/// The last progress line of the pod log lands in status.current.progress.
#[tokio::test]
async fn a_running_stage_shows_its_last_progress_line_in_status() {
    let log = concat!(
        "{\"progress\":{\"done\":20,\"total\":100,\"unit\":\"samples\"}}\n",
        "{\"level\":\"INFO\",\"fields\":{\"message\":\"teacher call\"}}\n",
        "{\"progress\":{\"done\":45,\"total\":100,\"unit\":\"samples\",\"etaSeconds\":90}}\n",
        "{\"progress\":{\"done\":4",
    );
    let (ctx, mut server) = context_reading_progress(Duration::from_secs(30));
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario_in(ctx, &mut server, obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                running_job(),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                running_pod(),
            )
            .await,
            s.expect_text(Method::GET, POD_LOG, 200, log).await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    assert_eq!(
        r.expect("reconcile"),
        Action::requeue(Duration::from_secs(30))
    );
    assert!(
        seen[1]
            .uri
            .contains("labelSelector=batch.kubernetes.io%2Fjob-name%3Dtickets-r1-synthesize"),
        "{}",
        seen[1].uri
    );
    let query = &seen[2].uri;
    assert!(
        query.contains("container=trainer")
            && query.contains("tailLines=40")
            && query.contains("limitBytes=32768"),
        "{query}"
    );
    let progress = &seen[3].body["status"]["current"]["progress"];
    assert_eq!(progress["done"], 45, "{progress}");
    assert_eq!(progress["percent"], 45);
    assert_eq!(progress["unit"], "samples");
    assert_eq!(progress["eta"], "1m30s");
    assert!(progress["observedTime"].is_string(), "{progress}");
}

/// No progress line yet, or no running pod: the status says nothing of progress, and
/// nothing fails (the write is the running message the started status lacks).
#[tokio::test]
async fn a_stage_without_progress_or_pod_leaves_the_status_alone() {
    for (pods, log) in [
        (
            running_pod(),
            Some("{\"level\":\"INFO\"}\nloading the model\n"),
        ),
        (
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            None,
        ),
    ] {
        let (ctx, mut server) = context_reading_progress(Duration::from_secs(30));
        let obj = migration(spec(), started_status());
        let (r, seen) = scenario_in(ctx, &mut server, obj, async move |s: &mut ApiServer| {
            let mut seen = vec![
                s.expect(
                    Method::GET,
                    &format!("{JOBS}/tickets-r1-synthesize"),
                    200,
                    running_job(),
                )
                .await,
                s.expect(Method::GET, "/api/v1/namespaces/team-a/pods", 200, pods)
                    .await,
            ];
            if let Some(log) = log {
                seen.push(s.expect_text(Method::GET, POD_LOG, 200, log).await);
            }
            seen.push(s.expect(Method::PATCH, STATUS, 200, Value::Null).await);
            seen
        })
        .await;
        assert_eq!(
            r.expect("reconcile"),
            Action::requeue(Duration::from_secs(30))
        );
        let current = &seen.last().expect("patch").body["status"]["current"];
        assert_eq!(current["name"], "tickets-r1-synthesize");
        assert!(current.get("progress").is_none(), "{current}");
    }
}

/// Progress read less than an interval ago is not read again (whatever woke the reconciler),
/// and a pod log the kubelet cannot serve keeps the last figures.
#[tokio::test]
async fn progress_is_read_at_most_once_per_interval() {
    let mut status = started_status();
    let fresh = Time(Timestamp::now());
    status["current"]["progress"] = json!({
        "done": 10, "total": 40, "percent": 25, "unit": "steps",
        "observedTime": serde_json::to_value(&fresh).expect("time"),
    });
    let (ctx, mut server) = context_reading_progress(Duration::from_secs(30));
    let obj = migration(spec(), status.clone());
    let (r, seen) = scenario_in(ctx, &mut server, obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                running_job(),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    // Only the Job was read, and the progress written back is the one read before.
    let progress = &seen[1].body["status"]["current"]["progress"];
    assert_eq!(progress["done"], 10, "{progress}");
    assert_eq!(
        progress["observedTime"],
        serde_json::to_value(&fresh).expect("time")
    );
    // Read long ago, and the log cannot be served now: the old figures stay, no write.
    status["current"]["progress"]["observedTime"] = json!("2026-01-01T00:00:00Z");
    let (ctx, mut server) = context_reading_progress(Duration::from_secs(30));
    let obj = migration(spec(), status);
    let (r, seen) = scenario_in(ctx, &mut server, obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                running_job(),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                running_pod(),
            )
            .await,
            s.expect(
                Method::GET,
                POD_LOG,
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "kubelet unreachable", "code": 500}),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    let progress = &seen[3].body["status"]["current"]["progress"];
    assert_eq!(progress["done"], 10, "{progress}");
    assert_eq!(progress["observedTime"], "2026-01-01T00:00:00Z");
}

#[tokio::test]
async fn a_running_job_is_waited_for() {
    let mut job = finished_job("Complete");
    // A ready pod: its container started, so no pod list is needed.
    job["status"] = json!({"active": 1, "ready": 1});
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                job,
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    assert_eq!(
        r.expect("reconcile"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(seen[1].body["status"]["phase"], "Synthesizing");
}

/// A pod list with one pod created `age_s` seconds ago, with `status`.
fn pods_aged(age_s: i64, status: Value) -> Value {
    let created = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(age_s))
        .expect("timestamp");
    json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [{
            "metadata": {"name": "tickets-r1-synthesize-x7k2p", "namespace": "team-a",
                         "creationTimestamp": created.to_string()},
            "status": status
        }]
    })
}

fn image_pull_backoff() -> Value {
    json!({"phase": "Pending", "containerStatuses": [{
        "name": "trainer", "image": "registry.example/llamaduo-trainr:1.0", "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff",
                  "message": "Back-off pulling image \"registry.example/llamaduo-trainr:1.0\""}}
    }]})
}

#[tokio::test]
async fn a_pod_that_cannot_pull_its_image_stalls_the_migration_naming_the_fix() {
    let mut job = finished_job("Complete");
    job["status"] = json!({"active": 1, "ready": 0});
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                job,
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                pods_aged(300, image_pull_backoff()),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    let status = &seen[2].body["status"];
    let stalled = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Stalled")
        .expect("Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "ImagePullBackOff");
    let message = stalled["message"].as_str().expect("message");
    assert!(message.contains("tickets-r1-synthesize-x7k2p"), "{message}");
    assert!(message.contains("llamaduo-trainr"), "{message}");
    assert!(message.contains("fix spec.image"), "{message}");
    assert!(
        message.contains("delete Job team-a/tickets-r1-synthesize"),
        "{message}"
    );
    assert_eq!(seen[3].body["type"], "Warning");
    assert_eq!(seen[3].body["reason"], "ImagePullBackOff");
}

#[tokio::test]
async fn a_pod_pulling_its_image_for_a_short_while_is_just_running() {
    let mut job = finished_job("Complete");
    job["status"] = json!({"active": 1});
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                job,
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                pods_aged(30, image_pull_backoff()),
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
        ]
    })
    .await;
    assert_eq!(
        r.expect("reconcile"),
        Action::requeue(Duration::from_secs(300))
    );
    let conditions = seen[2].body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    assert!(
        conditions
            .iter()
            .all(|c| c["type"] != "Stalled" || c["status"] == "False"),
        "{conditions:?}"
    );
}

#[tokio::test]
async fn a_migration_being_deleted_is_not_acted_on() {
    // Its synthesize Job was just removed by the garbage collector (foreground deletion):
    // nothing is read, created or written.
    let mut obj = migration(spec(), started_status());
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    obj.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let (r, seen) = scenario(obj, async |_s: &mut ApiServer| Vec::new()).await;
    assert_eq!(r.expect("reconcile"), Action::await_change());
    assert!(seen.is_empty());
}

#[tokio::test]
async fn a_failed_status_write_is_a_warning_event_named_after_the_error() {
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                finished_job("Complete"),
            )
            .await,
            s.expect(
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                200,
                pods_with_message(0, "not json"),
            )
            .await,
            s.expect(
                Method::PATCH,
                STATUS,
                500,
                json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                       "message": "etcd timeout", "reason": "InternalError", "code": 500}),
            )
            .await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    let err = r.expect_err("the write failed");
    assert_eq!(err.reason(), "PatchStatus");
    assert_eq!(seen[3].body["type"], "Warning");
    assert_eq!(seen[3].body["reason"], "PatchStatus");
    let note = seen[3].body["note"].as_str().unwrap_or("");
    assert!(
        note.contains("team-a/tickets") && note.contains("etcd timeout"),
        "{note}"
    );
}

#[tokio::test]
async fn a_status_that_does_not_parse_is_never_overwritten() {
    // A phase this version does not know (a newer operator wrote it): the history must not
    // be replaced by a status decided from nothing. Only the Warning Event is sent.
    let mut status = started_status();
    status["phase"] = json!("Distilling");
    let obj = migration(spec(), status);
    let (r, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![s.expect(Method::POST, EVENTS, 201, Value::Null).await]
    })
    .await;
    let err = r.expect_err("refused");
    assert_eq!(err.reason(), "InvalidStatus");
    assert_eq!(seen[0].body["type"], "Warning");
    assert_eq!(seen[0].body["reason"], "InvalidStatus");
    let note = seen[0].body["note"].as_str().unwrap_or("");
    assert!(note.contains("status.phase"), "{note}");
    assert!(note.contains("Distilling"), "{note}");
}

/// The API server's answer to a write whose `resourceVersion` precondition failed.
fn conflict() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": "Operation cannot be fulfilled on llamaduomigrations.llamaduo.dev \"tickets\": the object has been modified; please apply your changes to the latest version and try again",
           "reason": "Conflict", "code": 409,
           "details": {"name": "tickets", "group": "llamaduo.dev", "kind": "llamaduomigrations"}})
}

/// Metric lines of `ctx` that start with `prefix`.
fn metric_lines(ctx: &Context, prefix: &str) -> Vec<String> {
    let text = ctx.metrics.encode().expect("metrics encode");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The lost status of the load test: a reconcile triggered by the stage's new Job reads the
/// migration from a watch cache that does not have the status just written yet (no
/// `current`), finds the Job running and decides Wait, whose status has no `current`. Its
/// write is conditional on the stale resourceVersion, the API server refuses it, and the
/// reconcile requeues soon: no Warning Event, no failure, no backoff step.
#[tokio::test]
async fn a_status_write_decided_from_a_stale_read_is_refused_and_requeued_quietly() {
    let mut job = finished_job("Complete");
    job["status"] = json!({"active": 1, "ready": 1});
    let obj = migration(spec(), Value::Null);
    let (ctx, mut server) = context();
    let (r, seen) = scenario_in(
        ctx.clone(),
        &mut server,
        obj,
        async move |s: &mut ApiServer| {
            vec![
                s.expect(
                    Method::GET,
                    &format!("{JOBS}/tickets-r1-synthesize"),
                    200,
                    job,
                )
                .await,
                s.expect(Method::PATCH, STATUS, 409, conflict()).await,
            ]
        },
    )
    .await;
    assert_eq!(
        r.expect("a stale read is not a failure"),
        Action::requeue(Duration::from_secs(1))
    );
    let patch = &seen[1].body;
    assert_eq!(patch["metadata"]["resourceVersion"], "10");
    // What the refusal prevented: a status without the running stage.
    assert_eq!(patch["status"]["phase"], "Synthesizing");
    assert!(patch["status"].get("current").is_none(), "{patch}");
    assert_eq!(
        metric_lines(&ctx, "llamaduo_stale_status_writes_total"),
        vec!["llamaduo_stale_status_writes_total 1"]
    );
    assert!(
        metric_lines(&ctx, "llamaduo_reconcile_failures_total{").is_empty(),
        "no failure counted"
    );
}

/// A start decided from a stale read creates no Job and publishes no Event: the Job is
/// created only after its status is written.
#[tokio::test]
async fn a_start_refused_as_stale_creates_no_job() {
    let obj = migration(spec(), Value::Null);
    let (r, seen) = scenario(obj, async |s: &mut ApiServer| {
        let mut seen = expect_start_prerequisites(s).await;
        seen.push(s.expect(Method::PATCH, STATUS, 409, conflict()).await);
        seen
    })
    .await;
    assert_eq!(
        r.expect("a stale read is not a failure"),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        seen[4].body["status"]["current"]["name"],
        "tickets-r1-synthesize"
    );
    assert_eq!(seen[4].body["metadata"]["resourceVersion"], "10");
}

/// The invalid-spec path writes status too: a refused stall publishes no Event.
#[tokio::test]
async fn a_stall_refused_as_stale_publishes_no_event() {
    let mut bad = spec();
    bad["target"]["meanScore"] = json!("high");
    let obj = migration(bad, Value::Null);
    let (r, seen) = scenario(obj, async |s: &mut ApiServer| {
        vec![s.expect(Method::PATCH, STATUS, 409, conflict()).await]
    })
    .await;
    assert_eq!(
        r.expect("a stale read is not a failure"),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(seen[0].body["metadata"]["resourceVersion"], "10");
}

#[tokio::test]
async fn a_job_we_do_not_own_blocks_the_run() {
    let mut job = finished_job("Complete");
    job["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
    let obj = migration(spec(), started_status());
    let (r, seen) = scenario(obj, async move |s: &mut ApiServer| {
        vec![
            s.expect(
                Method::GET,
                &format!("{JOBS}/tickets-r1-synthesize"),
                200,
                job,
            )
            .await,
            s.expect(Method::PATCH, STATUS, 200, Value::Null).await,
            s.expect(Method::POST, EVENTS, 201, Value::Null).await,
        ]
    })
    .await;
    r.expect("reconcile");
    assert_eq!(
        condition(&seen[1].body["status"], "Stalled")["reason"],
        "JobNameConflict"
    );
}

mod pure {
    use clap::Parser;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{Value, json};

    use super::super::job::{JobInputs, build_job, label_value, prerequisites};
    use super::super::{OperatorArgs, Prerequisite, observation_from};
    use super::{finished_job, pods_with_message, spec};
    use crate::api::{LlamaDuoMigrationSpec, Stage, StageRun};
    use crate::plan::{MigrationId, Observation, stage_config, stage_run_name};

    fn typed(v: Value) -> LlamaDuoMigrationSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn job_for(spec: &LlamaDuoMigrationSpec, migration: &str, stage: Stage) -> Value {
        let run = StageRun {
            round: 2,
            stage,
            attempt: 3,
            name: stage_run_name(migration, 2, stage, 3),
            generation: Some(4),
            progress: None,
        };
        let status = Default::default();
        let config = stage_config(
            &MigrationId::new("team-a", migration),
            spec,
            &status,
            &run,
            Some(99),
        )
        .expect("config");
        let job = build_job(&JobInputs {
            migration,
            namespace: "team-a",
            uid: "uid-1",
            spec,
            run: &run,
            config: &config,
            default_image: "img:1",
        })
        .expect("job");
        serde_json::to_value(job).expect("json")
    }

    #[test]
    fn train_pods_get_the_training_scheduling_and_no_keys() {
        let mut v = spec();
        v["training"] = json!({
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training"
        });
        v["image"] = json!("custom:2");
        let s = typed(v);
        let job = job_for(&s, "tickets", Stage::Train);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({"gpu": "h100"}));
        assert_eq!(pod["priorityClassName"], "training");
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "custom:2");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(c["command"], json!(["llamaduo-trainer", "train"]));
        let env = c["env"].to_string();
        assert!(!env.contains("API_KEY"), "train gets no API key: {env}");
        assert!(
            c["env"]
                .as_array()
                .expect("env")
                .contains(&json!({"name": "LLAMADUO_DEVICE", "value": "cuda"})),
            "a GPU train pod must not fall back to its CPU: {env}"
        );
        assert_eq!(job["metadata"]["name"], "tickets-r2-train-a3");
        assert_eq!(job["metadata"]["labels"]["llamaduo.dev/attempt"], "3");
        // Other stages are not scheduled like training.
        let synth = job_for(&s, "tickets", Stage::Synthesize);
        assert!(
            synth["spec"]["template"]["spec"]
                .get("nodeSelector")
                .is_none()
        );
        assert!(
            synth["spec"]["template"]["spec"]["containers"][0]
                .get("resources")
                .is_none()
        );
    }

    #[test]
    fn only_train_pods_with_an_nvidia_gpu_ask_for_cuda() {
        let device_env = |resources: serde_json::Value, stage: Stage| {
            let mut v = spec();
            v["training"] = json!({ "resources": resources });
            let job = job_for(&typed(v), "tickets", stage);
            job["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|e| e["name"] == "LLAMADUO_DEVICE")
                .map(|e| e["value"].clone())
        };
        let gpu = json!({"requests": {"nvidia.com/gpu": 2}});
        assert_eq!(device_env(gpu.clone(), Stage::Train), Some(json!("cuda")));
        assert_eq!(device_env(gpu.clone(), Stage::Synthesize), None);
        assert_eq!(
            device_env(gpu, Stage::Evaluate),
            None,
            "unless useTrainingResources"
        );
        let cpu = json!({"limits": {"cpu": "8", "memory": "16Gi"}});
        assert_eq!(device_env(cpu, Stage::Train), None, "auto: the CPU");
        let zero = json!({"limits": {"nvidia.com/gpu": "0"}});
        assert_eq!(device_env(zero, Stage::Train), None);
    }

    #[test]
    fn training_image_replaces_the_image_for_train_pods_only() {
        let image_of = |v: &serde_json::Value, stage| {
            job_for(&typed(v.clone()), "tickets", stage)["spec"]["template"]["spec"]["containers"]
                [0]["image"]
                .clone()
        };
        let mut v = spec();
        v["image"] = json!("llamaduo-trainer:cpu");
        v["training"] = json!({"image": "llamaduo-trainer:cuda"});
        assert_eq!(image_of(&v, Stage::Train), "llamaduo-trainer:cuda");
        assert_eq!(image_of(&v, Stage::Synthesize), "llamaduo-trainer:cpu");
        assert_eq!(image_of(&v, Stage::Evaluate), "llamaduo-trainer:cpu");
        // Without spec.image the other stages take the operator's default.
        v.as_object_mut().expect("object").remove("image");
        assert_eq!(image_of(&v, Stage::Train), "llamaduo-trainer:cuda");
        assert_ne!(image_of(&v, Stage::Evaluate), "llamaduo-trainer:cuda");
    }

    #[test]
    fn evaluate_pods_can_run_like_training_pods() {
        let mut v = spec();
        v["training"] = json!({
            "image": "llamaduo-trainer:cuda",
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training"
        });
        let pod_of = |v: &serde_json::Value, stage| {
            job_for(&typed(v.clone()), "tickets", stage)["spec"]["template"]["spec"].clone()
        };
        let plain = pod_of(&v, Stage::Evaluate);
        assert!(plain.get("nodeSelector").is_none());
        assert!(plain["containers"][0].get("resources").is_none());
        assert_ne!(plain["containers"][0]["image"], "llamaduo-trainer:cuda");
        assert!(
            !plain["containers"][0]["env"]
                .to_string()
                .contains("LLAMADUO_DEVICE")
        );

        v["evaluation"] = json!({"useTrainingResources": true});
        let pod = pod_of(&v, Stage::Evaluate);
        let train = pod_of(&v, Stage::Train);
        for field in ["nodeSelector", "tolerations", "priorityClassName"] {
            assert_eq!(pod[field], train[field], "{field}");
        }
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "llamaduo-trainer:cuda");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert!(
            c["env"]
                .as_array()
                .expect("env")
                .contains(&json!({"name": "LLAMADUO_DEVICE", "value": "cuda"}))
        );
        assert_eq!(c["command"], json!(["llamaduo-trainer", "evaluate"]));
        // Synthesis never takes the training scheduling.
        assert!(pod_of(&v, Stage::Synthesize).get("nodeSelector").is_none());
    }

    #[test]
    fn every_stage_can_ask_for_resources_for_namespaces_with_quotas() {
        let resources_of = |v: &serde_json::Value, stage| {
            job_for(&typed(v.clone()), "tickets", stage)["spec"]["template"]["spec"]["containers"]
                [0]["resources"]
                .clone()
        };
        let small = json!({"requests": {"cpu": "250m", "memory": "512Mi"}});
        let eval = json!({"requests": {"cpu": "2", "memory": "4Gi"}});
        let train = json!({"limits": {"nvidia.com/gpu": "1"}});
        let mut v = spec();
        v["synthesis"] = json!({"resources": small});
        v["evaluation"] = json!({"resources": eval});
        v["training"] = json!({"resources": train});
        assert_eq!(resources_of(&v, Stage::Synthesize), small);
        assert_eq!(resources_of(&v, Stage::Evaluate), eval);
        assert_eq!(resources_of(&v, Stage::Train), train);
        // useTrainingResources wins over evaluation.resources.
        v["evaluation"]["useTrainingResources"] = json!(true);
        assert_eq!(resources_of(&v, Stage::Evaluate), train);
    }

    #[test]
    fn evaluate_pods_get_the_judge_key_and_object_store_credentials() {
        let mut v = spec();
        v["judge"] = json!({"provider": "anthropic", "model": "claude",
                            "apiKeySecretRef": {"name": "anthropic", "key": "key"}});
        v["evaluation"] = json!({"baseline": true});
        v["storage"] = json!({"url": "s3://bucket/llamaduo",
                              "credentialsSecretRef": {"name": "s3-creds"}});
        let s = typed(v);
        let job = job_for(&s, "tickets", Stage::Evaluate);
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        let env = c["env"].as_array().expect("env");
        let key = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .map(|e| e["valueFrom"]["secretKeyRef"]["name"].clone())
        };
        assert_eq!(key("LLAMADUO_JUDGE_API_KEY"), Some(json!("anthropic")));
        assert_eq!(key("LLAMADUO_TEACHER_API_KEY"), Some(json!("openai")));
        assert_eq!(
            c["envFrom"],
            json!([{"secretRef": {"name": "s3-creds", "optional": false}}])
        );
        let volumes = job["spec"]["template"]["spec"]["volumes"].to_string();
        assert!(!volumes.contains("persistentVolumeClaim"), "{volumes}");
        assert_eq!(
            prerequisites(&s, Stage::Evaluate),
            vec![
                Prerequisite::SecretKey {
                    name: "anthropic".into(),
                    key: "key".into(),
                    field: "spec.judge.apiKeySecretRef"
                },
                Prerequisite::SecretKey {
                    name: "openai".into(),
                    key: "api-key".into(),
                    field: "spec.teacher.apiKeySecretRef"
                },
                Prerequisite::Secret {
                    name: "s3-creds".into(),
                    field: "spec.storage.credentialsSecretRef"
                },
            ]
        );
        assert_eq!(
            prerequisites(&s, Stage::Train),
            vec![Prerequisite::Secret {
                name: "s3-creds".into(),
                field: "spec.storage.credentialsSecretRef"
            }]
        );
    }

    #[test]
    fn private_registries_and_workload_identity_reach_every_pod() {
        let mut v = spec();
        v["imagePullSecrets"] = json!([{"name": "registry"}]);
        v["serviceAccountName"] = json!("llamaduo-stages");
        let s = typed(v);
        for stage in Stage::ALL {
            let job = job_for(&s, "tickets", stage);
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(
                pod["imagePullSecrets"],
                json!([{"name": "registry"}]),
                "{stage}"
            );
            assert_eq!(pod["serviceAccountName"], "llamaduo-stages", "{stage}");
            // The account's API token stays out: stages never call the API server.
            assert_eq!(pod["automountServiceAccountToken"], false, "{stage}");
            let needs = prerequisites(&s, stage);
            for p in [
                Prerequisite::Secret {
                    name: "registry".into(),
                    field: "spec.imagePullSecrets",
                },
                Prerequisite::ServiceAccount {
                    name: "llamaduo-stages".into(),
                    field: "spec.serviceAccountName",
                },
            ] {
                assert!(needs.contains(&p), "{stage}: {p:?} not in {needs:?}");
            }
        }
        // Unset: the pods use the namespace's default account and list no pull secrets.
        let job = job_for(&typed(spec()), "tickets", Stage::Train);
        let pod = &job["spec"]["template"]["spec"];
        assert!(pod.get("imagePullSecrets").is_none() && pod.get("serviceAccountName").is_none());
    }

    #[test]
    fn long_migration_names_give_valid_job_names_and_labels() {
        let name = format!("{}.example", "very-long-migration-name-".repeat(9));
        let s = typed(spec());
        let job = job_for(&s, &name, Stage::Evaluate);
        let job_name = job["metadata"]["name"].as_str().expect("name");
        assert!(job_name.len() <= 63, "{job_name}");
        assert!(job_name.ends_with("-r2-evaluate-a3"), "{job_name}");
        for (k, v) in job["metadata"]["labels"].as_object().expect("labels") {
            let v = v.as_str().expect("label value");
            assert!(v.len() <= 63 && !v.contains('.'), "{k}={v}");
        }
        assert_eq!(job["metadata"]["ownerReferences"][0]["name"], name.as_str());
        assert_eq!(label_value("tickets"), "tickets");
    }

    #[test]
    fn job_outcomes_map_to_observations() {
        let job = |c: &str| -> Job { serde_json::from_value(finished_job(c)).expect("job") };
        let pods = |code, msg: &str| -> Vec<Pod> {
            serde_json::from_value(pods_with_message(code, msg)["items"].clone()).expect("pods")
        };
        let mut running: Job = job("Complete");
        running.status = None;
        assert_eq!(observation_from(&running, &[]), Observation::Running);
        let ok = crate::api::StageResult::failure(Stage::Synthesize, 1, "x");
        let msg = ok.to_termination_message();
        assert_eq!(
            observation_from(&job("Complete"), &pods(0, &msg)),
            Observation::Succeeded(ok.clone())
        );
        assert!(matches!(
            observation_from(&job("Complete"), &pods(0, "plain log line")),
            Observation::Failed { result: None, .. }
        ));
        assert_eq!(
            observation_from(&job("Failed"), &pods(2, &msg)),
            Observation::Failed {
                reason: "container exited with code 2".into(),
                result: Some(ok)
            }
        );
        match observation_from(&job("Failed"), &[]) {
            Observation::Failed {
                reason,
                result: None,
            } => {
                assert!(reason.starts_with("Job failed"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_evicted_pod_says_why_the_job_failed() {
        let job: Job = serde_json::from_value(finished_job("Failed")).expect("job");
        let pods: Vec<Pod> = serde_json::from_value(json!([{
            "metadata": {"name": "tickets-r1-train-abcde"},
            "status": {"phase": "Failed", "reason": "Evicted",
                       "message": "The node was low on resource: ephemeral-storage."}
        }]))
        .expect("pods");
        match observation_from(&job, &pods) {
            Observation::Failed { reason, .. } => assert!(
                reason.contains(
                    "pod tickets-r1-train-abcde: Evicted: The node was low on resource: ephemeral-storage."
                ),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pods_that_cannot_start_are_reported_after_their_grace() {
        use super::super::observe::stuck;
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let now = Timestamp::from_second(1_800_000_000).expect("now");
        let at = |ago: i64| {
            now.checked_sub(SignedDuration::from_secs(ago))
                .expect("time")
                .to_string()
        };
        let mut job: Job = serde_json::from_value(finished_job("Complete")).expect("job");
        job.status = None;
        job.metadata.creation_timestamp = serde_json::from_value(json!(at(400))).ok();
        let pod = |ago: i64, status: Value| -> Vec<Pod> {
            serde_json::from_value(json!([{
                "metadata": {"name": "p", "creationTimestamp": at(ago)},
                "status": status
            }]))
            .expect("pod")
        };
        let reason = |o: Option<Observation>| match o {
            Some(Observation::Blocked { reason, message }) => Some((reason, message)),
            None => None,
            Some(other) => panic!("{other:?}"),
        };
        // A missing Secret key: reported after the grace, with the fix.
        let config_error = json!({"containerStatuses": [{"name": "trainer", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CreateContainerConfigError",
                                  "message": "couldn't find key api-key in Secret team-a/openai"}}}]});
        assert_eq!(
            reason(stuck(&job, &pod(60, config_error.clone()), now)),
            None
        );
        let (r, m) = reason(stuck(&job, &pod(200, config_error), now)).expect("stuck");
        assert_eq!(r, "CreateContainerConfigError");
        assert!(m.contains("couldn't find key api-key"), "{m}");
        assert!(m.contains("starts by itself"), "{m}");
        // Unschedulable: only after ten minutes (an autoscaler may be adding a node).
        let unschedulable = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]});
        assert_eq!(
            reason(stuck(&job, &pod(300, unschedulable.clone()), now)),
            None
        );
        let (r, m) = reason(stuck(&job, &pod(700, unschedulable), now)).expect("stuck");
        assert_eq!(r, "Unschedulable");
        assert!(m.contains("Insufficient nvidia.com/gpu"), "{m}");
        assert!(m.contains("11 min"), "{m}");
        // A running container is fine however old.
        let running = json!({"phase": "Running", "containerStatuses": [{"name": "trainer",
            "image": "i", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {}}}]});
        assert_eq!(reason(stuck(&job, &pod(7200, running), now)), None);
        // No pod at all for five minutes: the Job's events say why.
        let (r, m) = reason(stuck(&job, &[], now)).expect("no pod");
        assert_eq!(r, "NoPodCreated");
        assert!(m.contains("kubectl describe job"), "{m}");
        job.metadata.creation_timestamp = serde_json::from_value(json!(at(100))).ok();
        assert_eq!(reason(stuck(&job, &[], now)), None);
    }

    #[test]
    fn the_status_patch_is_conditional_on_the_resource_version_read() {
        let status = crate::api::LlamaDuoMigrationStatus {
            round: 2,
            ..Default::default()
        };
        let body = super::super::reconcile::status_patch("tickets", "4711", &status);
        assert_eq!(
            body["metadata"],
            json!({"name": "tickets", "resourceVersion": "4711"})
        );
        assert_eq!(body["apiVersion"], "llamaduo.dev/v1alpha1");
        assert_eq!(body["kind"], "LlamaDuoMigration");
        assert_eq!(body["status"]["round"], 2);
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    #[test]
    fn operator_args_parse_with_defaults() {
        let cli = Cli::try_parse_from([
            "llamaduo",
            "--trainer-image",
            "t:1",
            "--namespace",
            "",
            "--leader-election",
            "--log-filter",
            "debug",
        ])
        .expect("parses");
        assert_eq!(cli.args.trainer_image, "t:1");
        assert!(cli.args.watch_namespaces().is_empty());
        assert!(cli.args.secret_checks);
        let listed = Cli::try_parse_from([
            "llamaduo",
            "--namespace",
            " team-a,team-b,,team-a ",
            "--secret-checks",
            "false",
        ])
        .expect("parses");
        assert_eq!(listed.args.watch_namespaces(), ["team-a", "team-b"]);
        assert!(!listed.args.secret_checks);
        assert!(cli.args.leader_election);
        assert_eq!(cli.args.lease_name, "llamaduo-operator");
        assert_eq!(cli.args.metrics_addr.port(), 8080);
        assert_eq!(cli.args.log_filter(), "debug");
    }
}

mod serving;
