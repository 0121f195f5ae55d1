//! Bounds on the Kubernetes core types embedded in the spec, and the spec's worst-case size.
//!
//! Our own fields carry their limits as schemars attributes (`api::limits`). The schemas of
//! the core types the spec embeds (`resources`, `tolerations`, `imagePullSecrets`) come from
//! k8s-openapi without any, so they are added here, by field name, from the limits
//! Kubernetes itself applies to those fields when it validates a pod. A field k8s-openapi
//! adds later gets no bound silently: [`worst_case`] lists it as unbounded, and a test
//! fails until someone decides its limit.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use serde_json::Value;

use crate::api::limits;

/// Spec fields whose schema is a Kubernetes core type.
const EMBEDDED: [&str; 3] = ["resources", "tolerations", "imagePullSecrets"];

/// Bounds every embedded core type under `node` (the spec), at any depth.
pub fn bound_embedded(node: &mut JSONSchemaProps) {
    for (name, child) in node.properties.iter_mut().flat_map(|p| p.iter_mut()) {
        if EMBEDDED.contains(&name.as_str()) {
            bound_core(child, name);
        } else {
            bound_embedded(child);
        }
    }
}

/// Bounds one node of a core type (`name` is its field name) and everything below it.
fn bound_core(node: &mut JSONSchemaProps, name: &str) {
    let is_string = node.type_.as_deref() == Some("string") && node.enum_.is_none();
    if is_string && node.max_length.is_none() {
        node.max_length = core_string_limit(name).map(as_i64);
    }
    if node.x_kubernetes_int_or_string == Some(true) && node.max_length.is_none() {
        // Only quantities are int-or-string in these types.
        node.max_length = Some(as_i64(limits::QUANTITY));
    }
    if node.type_.as_deref() == Some("array") && node.max_items.is_none() && name == "claims" {
        node.max_items = Some(as_i64(limits::RESOURCE_CLAIMS));
    }
    if let Some(JSONSchemaPropsOrBool::Schema(value)) = node.additional_properties.as_mut() {
        // `limits` and `requests`: resource names to quantities.
        bound_core(value, name);
        if node.max_properties.is_none() {
            node.max_properties = Some(as_i64(limits::RESOURCE_ENTRIES));
            node.x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(key_rule("resource names"));
        }
    }
    for (child_name, child) in node.properties.iter_mut().flat_map(|p| p.iter_mut()) {
        bound_core(child, child_name);
    }
    match node.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => bound_core(item, name),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => {
            list.iter_mut().for_each(|item| bound_core(item, name))
        }
        None => {}
    }
}

/// The limit Kubernetes applies to a string field of `Toleration`, `LocalObjectReference`
/// or `ResourceClaim`; `None` for a field this table does not know yet.
fn core_string_limit(name: &str) -> Option<usize> {
    match name {
        // Toleration.key is a label key, Toleration.value a label value.
        "key" => Some(limits::LABEL_KEY),
        "value" => Some(limits::LABEL_VALUE),
        "operator" | "effect" => Some(limits::TOLERATION_WORD),
        // LocalObjectReference.name names a Secret; ResourceClaim.name a pod's claim.
        "name" => Some(limits::OBJECT_NAME),
        // ResourceClaim.request: a DNS label.
        "request" => Some(limits::LABEL_VALUE),
        _ => None,
    }
}

/// A CEL rule bounding the keys of a map, which a schema cannot.
fn key_rule(what: &str) -> ValidationRule {
    ValidationRule {
        rule: format!("self.all(k, size(k) <= {})", limits::LABEL_KEY),
        message: Some(format!(
            "{what} are at most {} characters (a prefix of up to 253, '/', a name of up to 63)",
            limits::LABEL_KEY
        )),
        ..ValidationRule::default()
    }
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The largest JSON text a value of `schema` can be, in characters, and the paths of the
/// strings, lists and maps without a bound (whose size it cannot know and counts as 0).
#[derive(Debug, Default)]
pub struct WorstCase {
    /// Characters of the longest valid value: quotes, commas and field names included.
    pub chars: u64,
    /// Paths without a bound, e.g. `spec.task.description`.
    pub unbounded: Vec<String>,
}

/// Sums every field at its maximum: [`WorstCase`] of `schema` named `path`. Map keys are
/// counted at [`limits::LABEL_KEY`], the bound the spec's maps put on them by CEL.
pub fn worst_case(schema: &Value, path: &str) -> WorstCase {
    let mut out = WorstCase::default();
    out.chars = size(schema, path, &mut out.unbounded);
    out
}

/// Longest JSON a number can be written in: an i64's 19 digits and sign; an f64 in its
/// shortest round-trip form (`-2.2250738585072014e-308`).
const INTEGER_CHARS: u64 = 20;
const NUMBER_CHARS: u64 = 24;

/// Records `path` as unbounded; its size counts as 0.
fn missing(unbounded: &mut Vec<String>, path: &str, what: &str) -> u64 {
    unbounded.push(format!("{path} ({what})"));
    0
}

fn size(node: &Value, path: &str, unbounded: &mut Vec<String>) -> u64 {
    let bound = |key: &str| node.get(key).and_then(Value::as_u64);
    if node
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return match bound("maxLength") {
            Some(max) => INTEGER_CHARS.max(max + 2),
            None => missing(unbounded, path, "no maxLength"),
        };
    }
    match node.get("type").and_then(Value::as_str) {
        Some("boolean") => 5,
        Some("integer") => INTEGER_CHARS,
        Some("number") => NUMBER_CHARS,
        Some("string") => {
            let longest_enum = node.get("enum").and_then(Value::as_array).map(|values| {
                values
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|v| v.chars().count() as u64)
                    .max()
                    .unwrap_or(0)
            });
            match longest_enum.or(bound("maxLength")) {
                Some(max) => max + 2,
                None => missing(unbounded, path, "no maxLength"),
            }
        }
        Some("array") => {
            let Some(items) = node.get("items") else {
                return missing(unbounded, path, "no items");
            };
            let item = size(items, &format!("{path}[]"), unbounded);
            match bound("maxItems") {
                Some(n) => 2 + n * (item + 1),
                None => missing(unbounded, path, "no maxItems"),
            }
        }
        Some("object") => {
            let fields: u64 = node
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, sub)| {
                    let name_chars = name.chars().count() as u64 + 3;
                    name_chars + size(sub, &format!("{path}.{name}"), unbounded) + 1
                })
                .sum();
            let map = match node.get("additionalProperties").filter(|v| v.is_object()) {
                Some(value) => {
                    let entry = limits::LABEL_KEY as u64
                        + 3
                        + size(value, &format!("{path}{{}}"), unbounded)
                        + 1;
                    match bound("maxProperties") {
                        Some(n) => n * entry,
                        None => missing(unbounded, path, "no maxProperties"),
                    }
                }
                None => 0,
            };
            2 + fields + map
        }
        _ => missing(unbounded, path, "no type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::openapi_schema;

    fn spec_schema() -> Value {
        openapi_schema()["properties"]["spec"].clone()
    }

    #[test]
    fn every_string_list_and_map_of_the_spec_is_bounded() {
        let worst = worst_case(&spec_schema(), "spec");
        assert!(
            worst.unbounded.is_empty(),
            "give these a limit in api::limits (own fields) or bounds.rs (core types): {:#?}",
            worst.unbounded
        );
    }

    #[test]
    fn the_spec_at_every_limit_stays_under_its_budget() {
        let worst = worst_case(&spec_schema(), "spec");
        println!("spec worst case: {} characters", worst.chars);
        assert!(
            worst.chars <= limits::SPEC_WORST_CASE_CHARS,
            "the spec at every limit is {} characters, over the {} budget of api::limits",
            worst.chars,
            limits::SPEC_WORST_CASE_CHARS
        );
    }

    #[test]
    fn embedded_core_types_get_kubernetes_limits() {
        let spec = spec_schema();
        let toleration = &spec["properties"]["training"]["properties"]["tolerations"];
        assert_eq!(toleration["maxItems"], limits::TOLERATIONS);
        assert_eq!(
            toleration["items"]["properties"]["key"]["maxLength"],
            limits::LABEL_KEY
        );
        assert_eq!(
            toleration["items"]["properties"]["value"]["maxLength"],
            limits::LABEL_VALUE
        );
        let requests =
            &spec["properties"]["serving"]["properties"]["resources"]["properties"]["requests"];
        assert_eq!(requests["maxProperties"], limits::RESOURCE_ENTRIES);
        assert_eq!(
            requests["additionalProperties"]["maxLength"],
            limits::QUANTITY
        );
        assert!(
            requests["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .is_some_and(|r| r.contains("size(k)")),
            "{requests:#}"
        );
        let pull = &spec["properties"]["imagePullSecrets"];
        assert_eq!(
            pull["items"]["properties"]["name"]["maxLength"],
            limits::OBJECT_NAME
        );
    }

    /// kube-cel's estimate is coarse (the API server's own estimator runs at `kubectl
    /// apply`), but it prices unbounded strings and lists as it does: this keeps every rule
    /// far from the per-rule budget now that the fields it reads are bounded.
    #[cfg(feature = "controller")]
    #[test]
    fn every_cel_rule_compiles_within_the_cost_budget() {
        fn walk(node: &Value, path: &str, found: &mut Vec<String>, rules: &mut usize) {
            let Some(obj) = node.as_object() else { return };
            let compiled = kube_cel::compile_schema(node);
            for rule in obj
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("rule").and_then(Value::as_str))
            {
                *rules += 1;
                let warnings =
                    kube_cel::analyze_rule(rule, &compiled, kube_cel::ScopeContext::CrdValidation);
                // Its scope check takes a macro's variable (`k` in `self.all(k, ...)`) for
                // an unknown one, so only the cost findings count.
                found.extend(
                    warnings
                        .iter()
                        .filter(|w| w.kind != kube_cel::WarningKind::WrongScope)
                        .map(|w| format!("{path}: {rule}: {}", w.message)),
                );
            }
            if compiled.has_errors() {
                found.push(format!("{path}: a rule does not compile"));
            }
            for (name, sub) in obj
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                walk(sub, &format!("{path}.{name}"), found, rules);
            }
            for key in ["items", "additionalProperties"] {
                if let Some(sub) = obj.get(key) {
                    walk(sub, &format!("{path}.{key}"), found, rules);
                }
            }
        }
        let (mut found, mut rules) = (Vec::new(), 0);
        walk(&openapi_schema(), "", &mut found, &mut rules);
        assert!(rules >= 20, "only {rules} rules found: the walk lost them");
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn worst_case_counts_json_punctuation_and_reports_unbounded_nodes() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "a": {"type": "string", "maxLength": 3},
                "b": {"type": "array", "maxItems": 2, "items": {"type": "boolean"}},
                "c": {"type": "string"}
            }
        });
        let worst = worst_case(&schema, "x");
        // {"a":"xxx","b":[false,false],"c":""} with a trailing comma counted per field.
        assert_eq!(worst.chars, 2 + (4 + 5 + 1) + (4 + 14 + 1) + (4 + 1));
        assert_eq!(worst.unbounded, ["x.c (no maxLength)"]);
    }
}
