//! `llamaduo validate` refuses text, lists and maps over the schema's limits (`api::limits`),
//! naming the field, the limit and the actual size, and passes realistic manifests.

use llamaduo::api::limits;
use llamaduo::validate::{Problem, Target, validate_yaml};

const VALID: &str = r#"
apiVersion: llamaduo.dev/v1alpha1
kind: LlamaDuoMigration
metadata:
  name: tickets
  namespace: support
spec:
  task:
    description: DESCRIPTION
  coverage:
    source: configmap://tickets-coverage/coverage.jsonl
  teacher:
    provider: simulated
    model: triage
  student:
    baseModel: hf://Qwen/Qwen2.5-0.5B-Instruct
  target:
    meanScore: 80
  storage:
    url: s3://ml-artifacts/llamaduo
"#;

fn manifest(description: &str, extra_spec: &str) -> String {
    VALID.replace("DESCRIPTION", description) + extra_spec
}

fn problems(yaml: &str) -> Vec<Problem> {
    validate_yaml(yaml, Target::Cluster)
        .expect("YAML parses")
        .into_iter()
        .flat_map(|r| r.problems)
        .collect()
}

fn only_problem_at<'a>(problems: &'a [Problem], path: &str) -> &'a Problem {
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].path, path, "{problems:#?}");
    &problems[0]
}

#[test]
fn a_50_mb_description_is_refused_naming_the_field_the_limit_and_its_length() {
    let huge = "x".repeat(50 * 1024 * 1024);
    let found = problems(&manifest(&huge, ""));
    let p = only_problem_at(&found, "spec.task.description");
    assert_eq!(
        p.message,
        format!(
            "is {} characters long, over the limit of {}: shorten it",
            50 * 1024 * 1024,
            limits::TASK_DESCRIPTION
        )
    );
}

#[test]
fn length_is_counted_in_characters_as_the_api_server_counts_it() {
    // 'é' is two bytes: a byte count would refuse the description at its limit.
    let at_limit = "é".repeat(limits::TASK_DESCRIPTION);
    assert_eq!(problems(&manifest(&at_limit, "")), vec![]);
    let over = "é".repeat(limits::TASK_DESCRIPTION + 1);
    let found = problems(&manifest(&over, ""));
    let p = only_problem_at(&found, "spec.task.description");
    assert!(
        p.message.starts_with(&format!(
            "is {} characters long",
            limits::TASK_DESCRIPTION + 1
        )),
        "{}",
        p.message
    );
}

#[test]
fn every_kind_of_bound_names_its_field() {
    let long = |n: usize| "a".repeat(n);
    let modules: Vec<&str> = ["q_proj"; limits::TARGET_MODULES + 1].to_vec();
    let tolerations = "\n".to_string()
        + &"      - {key: gpu, operator: Exists}\n".repeat(limits::TOLERATIONS + 1);
    let cases: Vec<(String, &str, String)> = vec![
        (
            format!(
                "  judge:\n    provider: simulated\n    model: {}\n",
                long(257)
            ),
            "spec.judge.model",
            "is 257 characters long, over the limit of 256".into(),
        ),
        (
            format!(
                "  image: ghcr.io/{}\n",
                long(limits::IMAGE - "ghcr.io/".len() + 1)
            ),
            "spec.image",
            format!("over the limit of {}", limits::IMAGE),
        ),
        (
            format!("  serviceAccountName: {}\n", long(254)),
            "spec.serviceAccountName",
            "over the limit of 253".into(),
        ),
        (
            format!("  training:\n    lora:\n      targetModules: {modules:?}\n"),
            "spec.training.lora.targetModules",
            format!(
                "has {} items, over the limit of {}: remove some",
                limits::TARGET_MODULES + 1,
                limits::TARGET_MODULES
            ),
        ),
        (
            format!(
                "  training:\n    lora:\n      targetModules: [{}]\n",
                long(65)
            ),
            "spec.training.lora.targetModules[0]",
            "over the limit of 64".into(),
        ),
        (
            format!("  training:\n    nodeSelector:\n      pool: {}\n", long(64)),
            "spec.training.nodeSelector.pool",
            "over the limit of 63".into(),
        ),
        (
            format!("  serving:\n    tolerations:{tolerations}"),
            "spec.serving.tolerations",
            format!("has {} items", limits::TOLERATIONS + 1),
        ),
        (
            format!(
                "  training:\n    tolerations:\n      - {{key: gpu, operator: Exists, effect: {}}}\n",
                long(17)
            ),
            "spec.training.tolerations[0].effect",
            "over the limit of 16".into(),
        ),
        (
            format!(
                "  synthesis:\n    resources:\n      requests: {{cpu: '{}'}}\n",
                long(65)
            ),
            "spec.synthesis.resources.requests.cpu",
            "over the limit of 64".into(),
        ),
    ];
    for (extra, path, message) in cases {
        let found = problems(&manifest("Route the ticket.", &extra));
        let p = only_problem_at(&found, path);
        assert!(p.message.contains(&message), "{path}: {}", p.message);
    }
}

#[test]
fn map_keys_are_bounded_by_cel() {
    // A schema cannot bound a map's keys; the CEL rule does, and validate runs it.
    let key = format!("example.com/{}", "k".repeat(limits::LABEL_KEY));
    for extra in [
        format!("  serving:\n    nodeSelector:\n      {key}: 'true'\n"),
        format!("  training:\n    resources:\n      limits:\n        {key}: 1\n"),
    ] {
        let found = problems(&manifest("Route the ticket.", &extra));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].path.ends_with("nodeSelector") || found[0].path.ends_with("limits"),
            "{found:#?}"
        );
        assert!(found[0].message.contains("317"), "{found:#?}");
    }
}

#[test]
fn realistic_long_text_fits() {
    // Pages of instructions, a chat template of the size published with models, long URLs.
    let description = "Summarize the support ticket for the on-call engineer, naming the product, \
        the symptom, what the customer already tried and how urgent it is. "
        .repeat(80);
    assert!(description.len() > 10_000 && description.len() < limits::TASK_DESCRIPTION);
    let template = "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
        message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
        .repeat(60);
    assert!(template.len() > 6_000);
    let extra = format!(
        "  student:\n    baseModel: hf://Qwen/Qwen2.5-0.5B-Instruct@{rev}\n    chatTemplate: \"{template}\"\n\
         \x20 training:\n    nodeSelector:\n      cloud.google.com/gke-accelerator: nvidia-l4\n\
         \x20   tolerations:\n      - {{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}\n\
         \x20   resources:\n      limits: {{nvidia.com/gpu: 1, memory: 24Gi}}\n",
        rev = "0123456789abcdef0123456789abcdef01234567",
    );
    let yaml = manifest(&description, "").replace(
        "  student:\n    baseModel: hf://Qwen/Qwen2.5-0.5B-Instruct\n",
        "",
    ) + &extra;
    assert_eq!(problems(&yaml), vec![]);
}
