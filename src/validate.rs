//! Offline validation of `LlamaDuoMigration` manifests (`llamaduo validate`), so GitOps
//! pipelines can refuse a bad spec before it reaches a cluster.
//!
//! It applies what the API server applies, from the same generated schema: types, required
//! fields, enums and unknown fields (as `kubectl apply`'s strict field validation does), ranges
//! and sizes (`maxLength`, `maxItems`, `maxProperties`), schema defaults, then every CEL rule
//! (`x-kubernetes-validations`) evaluated by kube-cel. On top come the semantic checks that
//! need no cluster (URL schemes, names, the simulated teacher's families). Every problem
//! carries its field path.

use std::fmt;

use serde_json::Value;

use crate::api::{LlamaDuoMigration, ProviderKind};
use crate::crd::openapi_schema;

pub mod files;

pub use crate::api::SIMULATED_FAMILIES;
use crate::api::{ALL_LINEAR, LORA_TARGET_MODULES};

/// One problem found in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.target.meanScore`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        message: message.into(),
    }
}

/// Where the manifest will run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Applied to a cluster: spec.storage is required.
    Cluster,
    /// Run with `llamaduo run`: storage defaults to the work directory.
    Local,
}

/// The report for one YAML document.
#[derive(Clone, Debug)]
pub struct DocumentReport {
    /// 1-based index of the document in its file.
    pub index: usize,
    /// `namespace/name` or `name` when known.
    pub object: Option<String>,
    /// Whether this document is a LlamaDuoMigration (others are skipped).
    pub checked: bool,
    /// Problems found; empty when valid.
    pub problems: Vec<Problem>,
}

/// Alias events one manifest file may replay. serde_saphyr's default, 1,000,000, let an
/// alias bomb of 1.7 KB expand into a 64 MiB tree that validation then copies twice; a real
/// manifest replays none or a few.
pub const MAX_REPLAYED_ALIAS_EVENTS: usize = 100_000;

/// The YAML documents of a manifest file, as `llamaduo validate` and `llamaduo run` read
/// them (alias expansion capped at [`MAX_REPLAYED_ALIAS_EVENTS`]).
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_ALIAS_EVENTS,
        },
    };
    serde_saphyr::from_str_multiple_with_options(text, options)
}

/// Validates every document of a YAML text. Documents of other kinds are skipped.
pub fn validate_yaml(text: &str, target: Target) -> Result<Vec<DocumentReport>, String> {
    let docs: Vec<Value> = yaml_documents(text).map_err(|e| format!("not valid YAML: {e}"))?;
    Ok(docs
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.is_null())
        .map(|(i, d)| validate_document(d, target, i + 1))
        .collect())
}

fn validate_document(doc: &Value, target: Target, index: usize) -> DocumentReport {
    let kind = doc.get("kind").and_then(Value::as_str);
    let api_version = doc.get("apiVersion").and_then(Value::as_str);
    let object = doc.get("metadata").and_then(|m| {
        let name = m.get("name")?.as_str()?;
        Some(match m.get("namespace").and_then(Value::as_str) {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        })
    });
    // A document of our API group with another kind is a typo (`LlamaDuoMigratoin`), not
    // someone else's object: report it instead of skipping it, or the gate would pass.
    if kind != Some("LlamaDuoMigration")
        && api_version.is_some_and(|v| v.starts_with("llamaduo.dev/"))
    {
        return DocumentReport {
            index,
            object,
            checked: true,
            problems: vec![problem(
                "kind",
                format!(
                    "{} is not a kind of llamaduo.dev; the only kind is LlamaDuoMigration",
                    kind.map_or_else(|| "nothing".to_string(), |k| format!("{k:?}"))
                ),
            )],
        };
    }
    if kind != Some("LlamaDuoMigration") {
        return DocumentReport {
            index,
            object,
            checked: false,
            problems: vec![],
        };
    }
    let mut problems = Vec::new();
    if api_version != Some("llamaduo.dev/v1alpha1") {
        problems.push(problem(
            "apiVersion",
            format!(
                "must be llamaduo.dev/v1alpha1, found {}",
                api_version.unwrap_or("nothing")
            ),
        ));
    }
    problems.extend(validate_object(doc, target));
    DocumentReport {
        index,
        object,
        checked: true,
        problems,
    }
}

/// Validates one LlamaDuoMigration object (as JSON). Empty when valid.
pub fn validate_object(doc: &Value, target: Target) -> Vec<Problem> {
    let schema = openapi_schema();
    let mut problems = Vec::new();
    check_metadata(doc.get("metadata"), &mut problems);
    // Null where the schema does not allow it is dropped (then defaulted), as the API server
    // does, so `serving: null` passes here exactly when `kubectl apply` accepts it.
    let mut doc = doc.clone();
    prune_nulls(&schema, &mut doc);
    let doc = &doc;

    // The API server checks the object against the schema first and runs CEL only on objects
    // whose shape fits it (out-of-range values do not stop CEL); so do we.
    let mut body = doc.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.remove("metadata");
        obj.remove("apiVersion");
        obj.remove("kind");
    }
    let mut found = SchemaFindings::default();
    check_schema(&schema, &body, "", &mut found);
    if !found.blocking.is_empty() {
        problems.append(&mut found.blocking);
        problems.append(&mut found.out_of_range);
        return problems;
    }
    problems.append(&mut found.out_of_range);

    let validator = kube_cel::Validator::new();
    for err in validator.validate_with_defaults(&schema, &body, None) {
        let path = err.field_path.trim_start_matches('.').to_string();
        problems.push(problem(
            if path.is_empty() { "spec".into() } else { path },
            err.message,
        ));
    }
    if !problems.is_empty() {
        return problems;
    }

    match serde_json::from_value::<LlamaDuoMigration>(doc.clone()) {
        Ok(m) => semantic_checks(&m, target, &mut problems),
        Err(e) => problems.push(problem("spec", format!("does not deserialize: {e}"))),
    }
    problems
}

fn check_metadata(meta: Option<&Value>, problems: &mut Vec<Problem>) {
    let Some(name) = meta.and_then(|m| m.get("name")).and_then(Value::as_str) else {
        problems.push(problem("metadata.name", "is required"));
        return;
    };
    let valid = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label);
    if !valid {
        problems.push(problem(
            "metadata.name",
            format!("{name:?} is not a DNS-1123 subdomain: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"),
        ));
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `doc` as the API server stores it, without the nulls it prunes: what [`validate_object`]
/// checks, so what `llamaduo run` loads after validation is what was validated (it once
/// loaded the raw document, and `plateauRounds:` with no value validated, then failed to load
/// with no field named).
pub fn without_pruned_nulls(doc: &Value) -> Value {
    let mut doc = doc.clone();
    prune_nulls(&openapi_schema(), &mut doc);
    doc
}

/// Removes every object field that is null where its schema is not `nullable`: the API
/// server prunes such nulls before defaulting (a required field so removed is then missing).
fn prune_nulls(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            obj.retain(|key, sub| {
                let sub_schema = props.and_then(|m| m.get(key)).or(extra);
                let nullable = sub_schema
                    .and_then(|s| s.get("nullable"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                // Unknown fields stay, to be reported as unknown.
                !(sub.is_null() && sub_schema.is_some() && !nullable)
            });
            for (key, sub) in obj.iter_mut() {
                if let Some(s) = props.and_then(|m| m.get(key)).or(extra) {
                    prune_nulls(s, sub);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune_nulls(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

/// What the structural schema check found, split as the API server splits it.
#[derive(Default)]
struct SchemaFindings {
    /// Type, enum, required and unknown-field problems: the object does not have the shape
    /// the CEL rules were written for, so they are not evaluated.
    blocking: Vec<Problem>,
    /// Values outside their minimum or maximum, and strings, lists and maps over their
    /// `maxLength`, `maxItems` or `maxProperties`: CEL rules still run, so every problem is
    /// listed at once (apiextensions-apiserver's `hasBlockingErr`).
    out_of_range: Vec<Problem>,
}

/// Type, enum, required, unknown-field and range checks of a value against a structural schema.
fn check_schema(schema: &Value, value: &Value, path: &str, found: &mut SchemaFindings) {
    if value.is_null() {
        if !schema
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            found.blocking.push(problem(path, "must not be null"));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            found.blocking.push(problem(
                path,
                format!("must be an integer or a string, found {}", type_name(value)),
            ));
        }
        check_size(schema, value, path, found);
        return;
    }
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let Some(ty) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    let actual = type_name(value);
    let fits = match ty {
        "number" => value.is_number(),
        "integer" => actual == "integer",
        other => other == actual,
    };
    if !fits {
        found
            .blocking
            .push(problem(path, format!("must be {ty}, found {actual}")));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        found.blocking.push(problem(
            path,
            format!("{value} is not one of {}", list.join(", ")),
        ));
    }
    check_size(schema, value, path, found);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && value.as_f64().is_some_and(|v| v < min)
    {
        found
            .out_of_range
            .push(problem(path, format!("must be at least {min}")));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && value.as_f64().is_some_and(|v| v > max)
    {
        found
            .out_of_range
            .push(problem(path, format!("must be at most {max}")));
    }
    match value {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(r) {
                        found.blocking.push(problem(join(path, r), "is required"));
                    }
                }
            }
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            for (key, sub) in obj {
                let p = join(path, key);
                match (props.and_then(|m| m.get(key)), extra) {
                    (Some(s), _) => check_schema(s, sub, &p, found),
                    (None, Some(s)) => check_schema(s, sub, &p, found),
                    (None, None) if preserve => {}
                    (None, None) => {
                        let known: Vec<&str> = props
                            .map(|m| m.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        found.blocking.push(problem(
                            p,
                            format!("unknown field; known fields here: {}", known.join(", ")),
                        ));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_schema(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// `maxLength`, `maxItems` and `maxProperties` (`api::limits` says why each is what it is).
/// A string's length is counted in characters, as the API server counts it.
fn check_size(schema: &Value, value: &Value, path: &str, found: &mut SchemaFindings) {
    let (key, actual, size, fix) = match value {
        Value::String(s) => (
            "maxLength",
            s.chars().count(),
            "characters long",
            "shorten it",
        ),
        Value::Array(a) => ("maxItems", a.len(), "items", "remove some"),
        Value::Object(o) => ("maxProperties", o.len(), "entries", "remove some"),
        _ => return,
    };
    if let Some(max) = schema.get(key).and_then(Value::as_u64)
        && actual as u64 > max
    {
        let verb = if value.is_string() { "is" } else { "has" };
        found.out_of_range.push(problem(
            path,
            format!("{verb} {actual} {size}, over the limit of {max}: {fix}"),
        ));
    }
}

const DATA_SCHEMES: [&str; 6] = [
    "file://",
    "s3://",
    "gs://",
    "az://",
    "hf://datasets/",
    "configmap://",
];
const MODEL_SCHEMES: [&str; 5] = ["file://", "s3://", "gs://", "az://", "hf://"];

fn check_scheme(url: &str, schemes: &[&str], path: &str, problems: &mut Vec<Problem>) {
    if !schemes.iter().any(|s| url.starts_with(s)) {
        problems.push(problem(
            path,
            format!("{url:?} must start with one of {}", schemes.join(", ")),
        ));
    } else if let Some(rest) = url.strip_prefix("configmap://") {
        let mut parts = rest.splitn(2, '/');
        let ok =
            parts.next().is_some_and(is_dns_label) && parts.next().is_some_and(|k| !k.is_empty());
        if !ok {
            problems.push(problem(
                path,
                "configmap:// sources are written configmap://NAME/KEY",
            ));
        }
    }
}

/// The largest config.json read to check a local base's family (real ones are a few KB).
const MAX_CONFIG_JSON_BYTES: u64 = 1 << 20;

/// A `file://` base directory whose config.json names a model family the trainer does not
/// implement, known offline, so the migration is refused before a train stage pulls the
/// weights. A path that does not exist here (a volume of the cluster), a GGUF file, or an
/// unreadable config are left to the train stage, which names them.
fn local_base_family_problem(url: &str) -> Option<Problem> {
    let dir = std::path::Path::new(url.strip_prefix("file://")?);
    let config = dir.join("config.json");
    let meta = std::fs::metadata(&config).ok()?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_JSON_BYTES {
        return None;
    }
    let json: Value = serde_json::from_slice(&std::fs::read(&config).ok()?).ok()?;
    let class = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str);
    let model_type = json.get("model_type").and_then(Value::as_str);
    let found = crate::api::Architecture::from_hf(class, model_type).err()?;
    Some(problem(
        "spec.student.baseModel",
        format!(
            "{} names the model family {found:?}, which the trainer does not implement: \
             supported are {}",
            config.display(),
            crate::api::Architecture::supported_list()
        ),
    ))
}

fn semantic_checks(m: &LlamaDuoMigration, target: Target, problems: &mut Vec<Problem>) {
    let spec = &m.spec;
    check_scheme(
        &spec.coverage.source,
        &DATA_SCHEMES,
        "spec.coverage.source",
        problems,
    );
    if let Some(t) = &spec.coverage.test_source {
        check_scheme(t, &DATA_SCHEMES, "spec.coverage.testSource", problems);
    }
    if let Some(b) = &spec.student.base_model {
        check_scheme(b, &MODEL_SCHEMES, "spec.student.baseModel", problems);
        if let Some(p) = local_base_family_problem(b) {
            problems.push(p);
        }
    }
    for (path, provider) in [
        ("spec.teacher", Some(&spec.teacher)),
        ("spec.judge", spec.judge.as_ref()),
    ] {
        let Some(p) = provider else { continue };
        if p.provider == ProviderKind::Simulated && !SIMULATED_FAMILIES.contains(&p.model.as_str())
        {
            problems.push(problem(
                format!("{path}.model"),
                format!(
                    "the simulated provider knows the task families {}; found {:?}",
                    SIMULATED_FAMILIES.join(", "),
                    p.model
                ),
            ));
        }
        if let Some(url) = &p.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(problem(
                format!("{path}.baseUrl"),
                "must be an http:// or https:// URL",
            ));
        }
    }
    let unknown: Vec<&String> = spec
        .training
        .lora
        .target_modules
        .iter()
        .filter(|m| m.as_str() != ALL_LINEAR && !LORA_TARGET_MODULES.contains(&m.as_str()))
        .collect();
    if !unknown.is_empty() {
        problems.push(problem(
            "spec.training.lora.targetModules",
            format!(
                "{unknown:?} match no layer of the student: name linear layers among {} or use \"all-linear\"",
                LORA_TARGET_MODULES.join(", ")
            ),
        ));
    }
    if spec.student.from_scratch.is_some() && spec.evaluation.base_student == Some(true) {
        problems.push(problem(
            "spec.evaluation.baseStudent",
            "a fromScratch student has no weights before round 1 trains them, so there is nothing to evaluate in round 0: remove evaluation.baseStudent (or use student.baseModel)",
        ));
    }
    if target == Target::Cluster && spec.storage.is_none() {
        problems.push(problem(
            "spec.storage",
            "is required in a cluster: set storage.url (file:///artifacts with volume.claimName, or s3://, gs://, az://); only `llamaduo run` may omit it (validate such files with --local)",
        ));
    }
    if spec.serving.enabled && target == Target::Local {
        // `llamaduo run` prints how to serve instead; not an error.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
apiVersion: llamaduo.dev/v1alpha1
kind: LlamaDuoMigration
metadata:
  name: sums
  namespace: team-a
spec:
  task:
    description: Answer arithmetic questions with the number only.
  coverage:
    source: configmap://sums-coverage/coverage.jsonl
  teacher:
    provider: simulated
    model: arithmetic
  student:
    fromScratch:
      hiddenSize: 64
  target:
    meanScore: 80
  storage:
    url: file:///artifacts
    volume:
      claimName: llamaduo-artifacts
"#;

    fn problems_of(yaml: &str, target: Target) -> Vec<Problem> {
        let reports = validate_yaml(yaml, target).expect("YAML parses");
        reports.into_iter().flat_map(|r| r.problems).collect()
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(VALID.contains(replace), "fixture lacks {replace:?}");
        VALID.replace(replace, by)
    }

    #[test]
    fn valid_manifest_has_no_problems() {
        assert_eq!(problems_of(VALID, Target::Cluster), vec![]);
    }

    #[test]
    fn other_kinds_are_skipped() {
        let reports = validate_yaml(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            Target::Cluster,
        )
        .expect("parses");
        assert_eq!(reports.len(), 1);
        assert!(!reports[0].checked);
    }

    #[test]
    fn a_misspelt_kind_of_our_group_is_a_problem_not_skipped() {
        let text = with("kind: LlamaDuoMigration", "kind: LlamaDuoMigratoin");
        let reports = validate_yaml(&text, Target::Local).expect("yaml");
        assert!(reports[0].checked);
        assert_eq!(reports[0].problems.len(), 1);
        assert_eq!(reports[0].problems[0].path, "kind");
        assert!(
            reports[0].problems[0].message.contains("LlamaDuoMigratoin"),
            "{:?}",
            reports[0].problems
        );
    }

    #[test]
    fn invalid_manifests_name_their_field() {
        let cases: Vec<(String, &str)> = vec![
            (
                with("meanScore: 80", "meanScore: 150"),
                "spec.target.meanScore",
            ),
            (
                with("meanScore: 80", "meanScore: 80\n    passRate: 2"),
                "spec.target.passRate",
            ),
            (
                with("  storage:", "  stop:\n    maxRounds: 0\n  storage:"),
                "spec.stop.maxRounds",
            ),
            (
                with(
                    "  storage:",
                    "  training:\n    lora:\n      rank: 0\n  storage:",
                ),
                "spec.training.lora.rank",
            ),
            (
                with("provider: simulated", "provider: openai"),
                "spec.teacher.apiKeySecretRef",
            ),
            (
                with(
                    "  storage:",
                    "  training:\n    lora:\n      targetModules: [q_proj, qkv_proj]\n  storage:",
                ),
                "spec.training.lora.targetModules",
            ),
            (
                with(
                    "  storage:",
                    "  training:\n    lora:\n      targetModules: [all-linear]\n  storage:",
                ),
                "NONE",
            ),
            (
                with(
                    "  storage:",
                    "  evaluation:\n    baseStudent: true\n  storage:",
                ),
                "spec.evaluation.baseStudent",
            ),
            (
                with(
                    "    fromScratch:\n      hiddenSize: 64",
                    "    baseModel: hf://org/model",
                ),
                "NONE",
            ),
            (
                with(
                    "    fromScratch:\n      hiddenSize: 64",
                    "    baseModel: hf://org/model\n    fromScratch: {}",
                ),
                "spec.student",
            ),
            (
                with("    volume:\n      claimName: llamaduo-artifacts\n", ""),
                "spec.storage.volume",
            ),
            (
                with("meanScore: 80", "meanScore: high"),
                "spec.target.meanScore",
            ),
            (
                with("  target:", "  colour: blue\n  target:"),
                "spec.colour",
            ),
            (
                with("model: arithmetic", "model: poetry"),
                "spec.teacher.model",
            ),
            (
                with(
                    "source: configmap://sums-coverage/coverage.jsonl",
                    "source: ftp://x",
                ),
                "spec.coverage.source",
            ),
            (with("name: sums", "name: Sums_1"), "metadata.name"),
            (
                with("provider: simulated", "provider: chatgpt"),
                "spec.teacher.provider",
            ),
        ];
        for (yaml, path) in cases {
            let problems = problems_of(&yaml, Target::Cluster);
            if path == "NONE" {
                assert!(problems.is_empty(), "{problems:?}");
                continue;
            }
            assert!(
                problems.iter().any(|p| p.path == path),
                "expected a problem at {path}, got {problems:?}"
            );
        }
    }

    #[test]
    fn counts_below_their_minimum_name_the_real_minimum() {
        // The schema carries each count's real minimum, so a negative value and zero get the
        // same answer (a u32's implicit minimum of 0 once sent users from -1 to 0 to 1).
        for (field, value, min) in [
            ("maxRounds", "-1", "1"),
            ("maxRounds", "0", "1"),
            ("plateauRounds", "0", "1"),
            ("maxServiceTokens", "0", "1"),
        ] {
            let yaml = with(
                "  storage:",
                &format!("  stop:\n    {field}: {value}\n  storage:"),
            );
            let problems = problems_of(&yaml, Target::Cluster);
            assert_eq!(problems.len(), 1, "{field}={value}: {problems:?}");
            assert_eq!(problems[0].path, format!("spec.stop.{field}"));
            assert_eq!(problems[0].message, format!("must be at least {min}"));
        }
        let yaml = with(
            "  storage:",
            "  training:\n    maxSeqLen: 8\n  synthesis:\n    pairsPerCall: 51\n  storage:",
        );
        let problems = problems_of(&yaml, Target::Cluster);
        let messages: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert!(
            messages.contains(&"spec.training.maxSeqLen: must be at least 16".to_string()),
            "{messages:?}"
        );
        assert!(
            messages.contains(&"spec.synthesis.pairsPerCall: must be at most 50".to_string()),
            "{messages:?}"
        );
    }

    #[test]
    fn explicit_nulls_are_dropped_as_the_api_server_drops_them() {
        // Non-nullable fields set to null are pruned, then defaulted: accepted.
        let yaml = with("  storage:", "  synthesis: null\n  stop: null\n  storage:");
        assert!(problems_of(&yaml, Target::Cluster).is_empty());
        // A required one so pruned is missing.
        let yaml = with("meanScore: 80", "meanScore: null");
        let problems = problems_of(&yaml, Target::Cluster);
        assert!(
            problems
                .iter()
                .any(|p| p.path == "spec.target.meanScore" && p.message == "is required"),
            "{problems:?}"
        );
    }

    #[test]
    fn storage_is_required_only_in_a_cluster() {
        let yaml = with(
            "  storage:\n    url: file:///artifacts\n    volume:\n      claimName: llamaduo-artifacts\n",
            "",
        );
        let cluster = problems_of(&yaml, Target::Cluster);
        assert_eq!(cluster.len(), 1, "{cluster:?}");
        assert_eq!(cluster[0].path, "spec.storage");
        assert!(problems_of(&yaml, Target::Local).is_empty());
    }

    #[test]
    fn a_local_base_of_an_unsupported_family_is_refused_naming_the_supported_ones() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = |config: &str| {
            std::fs::write(dir.path().join("config.json"), config).expect("config");
            with(
                "    fromScratch:\n      hiddenSize: 64",
                &format!("    baseModel: file://{}", dir.path().display()),
            )
        };
        let problems = problems_of(
            &base(r#"{"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"}"#),
            Target::Cluster,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "spec.student.baseModel");
        assert!(
            problems[0].message.contains("\"Phi3ForCausalLM\"")
                && problems[0].message.contains("Qwen3ForCausalLM"),
            "{}",
            problems[0].message
        );
        // model_type alone is read too.
        let problems = problems_of(&base(r#"{"model_type": "gpt2"}"#), Target::Cluster);
        assert!(problems[0].message.contains("\"gpt2\""), "{problems:?}");
        // A supported family, and a path that is not on this machine, are no problem.
        assert_eq!(
            problems_of(
                &base(r#"{"architectures": ["Qwen3ForCausalLM"]}"#),
                Target::Cluster
            ),
            vec![]
        );
        assert_eq!(
            problems_of(
                &with(
                    "    fromScratch:\n      hiddenSize: 64",
                    "    baseModel: file:///models/not-here"
                ),
                Target::Cluster
            ),
            vec![]
        );
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let yaml = with("meanScore: 80", "meanScore: 150\n    passRate: 3");
        let problems = problems_of(&yaml, Target::Cluster);
        assert!(problems.len() >= 2, "{problems:?}");
    }
}
