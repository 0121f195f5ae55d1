//! Upper bounds on every string, list and map of the spec, in characters (a string's
//! `maxLength` counts Unicode code points, as the API server counts them) or entries.
//!
//! Why bound them at all: the API server stores the whole object in etcd, whose requests are
//! limited to 1.5 MiB by default, and client-side `kubectl apply` copies the object into the
//! `last-applied-configuration` annotation, where all annotations together get 256 KiB; the
//! task description is also sent with every teacher and judge call, so a pasted document
//! would multiply the cost of the whole migration. And Kubernetes estimates the cost of the
//! CEL rules (`x-kubernetes-validations`) from these bounds: an unbounded string or list is
//! priced as large as a whole request.
//!
//! Each limit leaves real use ample room (the reason is on each constant), and together they
//! keep the spec's worst case, every field at its limit, under [`SPEC_WORST_CASE_CHARS`]
//! (checked by a test of `crd::bounds`; docs/limits.md has the table). The same schema feeds
//! `llamaduo validate`, which names the field, the limit and the actual length.

use schemars::{Schema, SchemaGenerator, json_schema};

/// `task.description`: it goes into every synthesis and judge prompt. 16 KiB is about 4,000
/// tokens, pages of instructions with format rules and examples; worked examples beyond that
/// belong in the coverage dataset, not in every call.
pub const TASK_DESCRIPTION: usize = 16 * 1024;

/// `student.chatTemplate`: a Jinja template. The largest ones published with models (tool-
/// calling templates such as gpt-oss's or Command R's) are about 16 KB; this fits them twice.
pub const CHAT_TEMPLATE: usize = 32 * 1024;

/// Every URL or URI of the spec (data and model sources, provider base URLs, storage): the
/// length browsers, CDNs and HTTP front ends agree on. An object-store key is at most 1024
/// bytes (S3) and `hf://ORG/NAME@REVISION/FILE` is far shorter.
pub const URL: usize = 2048;

/// A provider's model name. Service models are named in under 64 characters (an OpenAI
/// fine-tune id is about 60, a Bedrock ARN about 100); an openaiCompatible server may serve
/// a model under a path-like name, which 256 still fits.
pub const MODEL_NAME: usize = 256;

/// A container image reference: registry host (253) + repository (255, the distribution
/// spec's limit) + tag (128) + digest (135 for sha512) is 774 with separators.
pub const IMAGE: usize = 1024;

/// Names of Kubernetes objects the spec refers to (Secrets, PersistentVolumeClaims,
/// ServiceAccounts, PriorityClasses): DNS-1123 subdomains, which Kubernetes limits to 253.
pub const OBJECT_NAME: usize = 253;

/// A key of a Secret or ConfigMap: Kubernetes limits them to 253 characters.
pub const DATA_KEY: usize = 253;

/// A label value, as Kubernetes limits them.
pub const LABEL_VALUE: usize = 63;

/// A label key (or a resource name): a DNS subdomain prefix (253), '/', a name (63).
pub const LABEL_KEY: usize = 253 + 1 + 63;

/// Entries of `training.lora.targetModules`: there are 7 linear layers to name, plus
/// `all-linear`, so 16 is room for every one and for repetition.
pub const TARGET_MODULES: usize = 16;

/// One target module name: Hugging Face names are under 16 characters; 64 still lets a
/// misspelt one reach `llamaduo validate`'s message listing the real ones.
pub const TARGET_MODULE: usize = 64;

/// Labels of a node selector: node pools are told apart by one to three labels.
pub const NODE_SELECTOR_ENTRIES: usize = 16;

/// Tolerations of a pod: GPU node pools carry one to three taints; 16 covers several pools.
pub const TOLERATIONS: usize = 16;

/// Registry credentials: one Secret per private registry the images come from.
pub const IMAGE_PULL_SECRETS: usize = 16;

/// Resources named in one `limits` or `requests` map: cpu, memory, ephemeral-storage, huge
/// pages of two sizes, a GPU or two make about 7.
pub const RESOURCE_ENTRIES: usize = 16;

/// Dynamic resource claims (`resources.claims`) of one container: typically one, for a GPU.
pub const RESOURCE_CLAIMS: usize = 8;

/// A resource quantity such as `500Mi`, `1.5` or `64Gi`: a quantity Kubernetes can use is
/// a number and a suffix, far below 64 characters.
pub const QUANTITY: usize = 64;

/// A toleration's `operator` or `effect`: the longest value Kubernetes defines is
/// `PreferNoSchedule` (16 characters).
pub const TOLERATION_WORD: usize = 16;

/// The spec with every field at its limit, counted in characters with JSON's quotes, commas
/// and field names, must stay under this: 192 KiB of plain text fits client-side
/// `kubectl apply`'s annotation (256 KiB for all annotations) with room for metadata, and
/// even with every character escaped in six bytes (`\u003c`, as the API server's JSON writes
/// `<`) the stored object stays under etcd's 1.5 MiB.
pub const SPEC_WORST_CASE_CHARS: u64 = 192 * 1024;

// Escaped in six bytes a character, the budget still fits etcd's 1.5 MiB request.
const _: () = assert!(SPEC_WORST_CASE_CHARS * 6 < 3 * 1024 * 1024 / 2);

/// Schema of a node selector (`nodeSelector`): label keys to label values, as many as
/// [`NODE_SELECTOR_ENTRIES`]. A schema cannot bound map keys, so a CEL rule does.
pub fn node_selector(_: &mut SchemaGenerator) -> Schema {
    let rule = format!("self.all(k, size(k) <= {LABEL_KEY})");
    let message = format!(
        "node selector keys are label keys: at most {LABEL_KEY} characters (a prefix of up to 253, '/', a name of up to 63)"
    );
    json_schema!({
        "type": ["object", "null"],
        "additionalProperties": {"type": "string", "maxLength": LABEL_VALUE},
        "maxProperties": NODE_SELECTOR_ENTRIES,
        "x-kubernetes-validations": [{"rule": rule, "message": message}]
    })
}
