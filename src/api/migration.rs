//! `LlamaDuoMigration` (`llamaduo.dev/v1alpha1`): one migration of a feature from a service LLM
//! (the teacher) to a small model (the student), run in rounds until a target score is reached.
//!
//! Every field carries a `///` doc because the CRD schema is generated from these types and
//! `kubectl explain llamaduomigration.spec.<field>` shows exactly these texts. Validation that
//! the API server can do on its own is expressed as CEL rules (`x-kubernetes-validations`) on
//! the types, so `kubectl apply` refuses a bad spec with a message naming the field, and
//! `llamaduo validate` evaluates the very same rules offline.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits;

/// Desired state of a migration from a service LLM to a small local model.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "llamaduo.dev",
    version = "v1alpha1",
    kind = "LlamaDuoMigration",
    plural = "llamaduomigrations",
    singular = "llamaduomigration",
    shortname = "ldm",
    category = "llamaduo",
    doc = "A migration of one feature from a service LLM (the teacher) to a small model you own (the student), following LlamaDuo: the teacher writes synthetic training data from the coverage dataset, the student is fine-tuned on it, an LLM judge scores the student on a frozen test set, and rounds repeat until the target score, a round limit, a plateau or the token budget stops them; the best model can then be served behind an OpenAI-compatible endpoint.",
    namespaced,
    status = "LlamaDuoMigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Round","type":"integer","jsonPath":".status.round"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.current.stage"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","jsonPath":".status.current.progress.percent"}"#,
    printcolumn = r#"{"name":"ETA","type":"string","jsonPath":".status.current.progress.eta"}"#,
    printcolumn = r#"{"name":"Score","type":"number","jsonPath":".status.best.meanScore"}"#,
    printcolumn = r#"{"name":"Target","type":"number","jsonPath":".spec.target.meanScore"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LlamaDuoMigrationSpec {
    /// The feature being migrated. Its description goes into the synthesis and judge prompts.
    pub task: TaskSpec,
    /// The coverage dataset: prompts with answers the team is happy with. It is split once into
    /// seeds for synthesis (train) and a frozen test set.
    pub coverage: CoverageSpec,
    /// The service LLM that writes synthetic training data (and answers the test set when
    /// evaluation.baseline is on).
    pub teacher: ProviderSpec,
    /// The LLM that scores the student's answers. Defaults to the teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<ProviderSpec>,
    /// The small model to fine-tune: a pretrained base model, or a small model built from
    /// scratch for offline trials.
    pub student: StudentSpec,
    /// How much synthetic data to generate and how to filter it.
    #[serde(default)]
    pub synthesis: SynthesisSpec,
    /// How the student is fine-tuned, and where its training pods are scheduled.
    #[serde(default)]
    pub training: TrainingSpec,
    /// How the student is scored on the frozen test set.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// The score at which the migration succeeds.
    pub target: TargetSpec,
    /// When to give up: round limit, service token budget, plateau.
    #[serde(default)]
    pub stop: StopSpec,
    /// Where artifacts (datasets, models, evaluations) are kept. Required in a cluster; on one
    /// machine (`llamaduo run`) it defaults to the work directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Serve the best model behind an OpenAI-compatible endpoint once the migration succeeds
    /// (with `serving.when: best`, also once it stops below its target).
    #[serde(default)]
    pub serving: ServingSpec,
    /// Container image that runs the stages (`llamaduo-trainer`). Defaults to the operator's
    /// `--trainer-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::IMAGE))]
    pub image: Option<String>,
    /// Registry credentials (Secrets of type kubernetes.io/dockerconfigjson in the migration's
    /// namespace) for pulling the stage and serving images from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::IMAGE_PULL_SECRETS))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// ServiceAccount the stage and serving pods run as (unset: the namespace's `default`).
    /// Give it a cloud workload identity (EKS IRSA or Pod Identity, GKE or Azure Workload
    /// Identity) to reach object storage without `storage.credentialsSecretRef`. Its
    /// Kubernetes API token is never mounted: the pods do not call the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub service_account_name: Option<String>,
    /// Stop starting new stages. A running stage finishes and its result is recorded; setting
    /// it back to false resumes where the migration stopped.
    #[serde(default)]
    pub suspend: bool,
}

/// The feature being migrated.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "size(self.description) > 0", "message": "task.description must describe the task in a sentence or more", "fieldPath": ".description"}
]))]
pub struct TaskSpec {
    /// What the model must do, in plain words (for example "Summarize support tickets in two
    /// sentences"). Used in the synthesis and judge prompts.
    #[schemars(length(max = limits::TASK_DESCRIPTION))]
    pub description: String,
}

/// The coverage dataset.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.testFraction > 0.0 && self.testFraction < 1.0", "message": "coverage.testFraction must be greater than 0 and less than 1", "fieldPath": ".testFraction"}
]))]
pub struct CoverageSpec {
    /// JSONL rows in chat form ({"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}).
    /// A URL: file://, s3://, gs://, az://, hf://datasets/ORG/NAME[@REV]/FILE, or
    /// configmap://NAME/KEY for a ConfigMap in the migration's namespace.
    #[schemars(length(max = limits::URL))]
    pub source: String,
    /// Optional separate test set (same forms as source). When unset, testFraction of the
    /// source is held out as the test set, chosen deterministically by synthesis.seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::URL))]
    pub test_source: Option<String>,
    /// Share of the source held out as the frozen test set when testSource is unset.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Largest JSONL line (one row, in bytes) any stage reads from the coverage data and the
    /// rows made from it; a longer row fails the stage naming its file, line and size. Default
    /// 1 MiB (about 250,000 tokens, beyond any student's context); a row's memory cost grows
    /// far beyond its size once tokenized, so raise this only with the stage's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1_073_741_824))]
    pub max_row_bytes: Option<u64>,
}

fn default_test_fraction() -> f64 {
    0.1
}

/// The largest row a stage reads unless `coverage.maxRowBytes` says otherwise.
pub const DEFAULT_MAX_ROW_BYTES: u64 = 1024 * 1024;

impl CoverageSpec {
    /// `maxRowBytes` or its default.
    pub fn max_row_bytes(&self) -> u64 {
        self.max_row_bytes.unwrap_or(DEFAULT_MAX_ROW_BYTES)
    }
}

/// Task families the simulated teacher (`llamaduo-trainer simulate-teacher`) knows: the
/// `model` of a `simulated` provider. One list for `llamaduo validate` and the teacher.
pub const SIMULATED_FAMILIES: [&str; 6] = [
    "arithmetic",
    "reverse",
    "sort",
    "triage",
    "dates",
    "updates",
];

/// Which API a provider speaks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderKind {
    /// OpenAI chat completions (api.openai.com).
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini generateContent.
    Gemini,
    /// Any server that speaks OpenAI chat completions: vLLM, Ollama, llama.cpp server, TGI.
    OpenaiCompatible,
    /// `llamaduo-trainer simulate-teacher`, an offline stand-in for trials and tests.
    Simulated,
}

impl ProviderKind {
    /// The name as written in a manifest (`openai`, `openaiCompatible`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::OpenaiCompatible => "openaiCompatible",
            Self::Simulated => "simulated",
        }
    }

    /// Whether the provider refuses requests without an API key.
    pub fn needs_api_key(self) -> bool {
        matches!(self, Self::Openai | Self::Anthropic | Self::Gemini)
    }
}

/// A service LLM: the teacher or the judge.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.provider in ['openai', 'anthropic', 'gemini']) || has(self.apiKeySecretRef)", "message": "providers openai, anthropic and gemini need apiKeySecretRef (a Secret name and key holding the API key)", "fieldPath": ".apiKeySecretRef"},
    {"rule": "self.provider != 'openaiCompatible' || has(self.baseUrl)", "message": "provider openaiCompatible needs baseUrl (for example http://vllm:8000/v1)", "fieldPath": ".baseUrl"},
    {"rule": "size(self.model) > 0", "message": "model must name the provider's model (for the simulated provider: the task family, e.g. arithmetic)", "fieldPath": ".model"}
]))]
pub struct ProviderSpec {
    /// Which API to call: openai, anthropic, gemini, openaiCompatible or simulated.
    pub provider: ProviderKind,
    /// The provider's model name (e.g. gpt-4o, claude-sonnet-4-5, gemini-2.5-flash). For the
    /// simulated provider, the built-in task family (arithmetic, reverse, sort, triage, dates, updates).
    #[schemars(length(max = limits::MODEL_NAME))]
    pub model: String,
    /// Override the API base URL (required for openaiCompatible; e.g. http://vllm:8000/v1).
    /// An http:// or https:// URL; one without a path gets the API version (/v1, or /v1beta
    /// for gemini). Redirects are not followed, so the API key never leaves this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::URL))]
    pub base_url: Option<String>,
    /// The Secret key holding the API key; passed to stage pods by reference, never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Client-side flow control shared by all requests of a stage.
    #[serde(default)]
    pub limits: ProviderLimits,
    /// Sampling parameters for this provider's replies.
    #[serde(default)]
    pub generation: ProviderGeneration,
    /// Seconds before one request is abandoned and retried.
    #[serde(default = "default_request_timeout")]
    pub timeout_seconds: u32,
    /// Retries per request on 429, 5xx, timeouts and connection errors (exponential backoff
    /// with jitter, honouring Retry-After).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

fn default_request_timeout() -> u32 {
    120
}
fn default_max_retries() -> u32 {
    6
}

/// A key in a Secret of the migration's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(max = limits::DATA_KEY))]
    pub key: String,
}

/// Client-side flow control for a provider.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderLimits {
    /// Requests in flight at once.
    #[schemars(range(min = 1))]
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Requests per minute, shared by all requests of a stage. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens (input + output) per minute, shared by all requests of a stage. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

fn default_concurrency() -> u32 {
    8
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
}

/// Sampling parameters for a provider.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderGeneration {
    /// Sampling temperature. Unset: the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Most tokens in one reply. Unset: 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// The small model to fine-tune.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.baseModel) != has(self.fromScratch)", "message": "set exactly one of student.baseModel (a pretrained model URL) or student.fromScratch (a small model built for trials)"}
]))]
pub struct StudentSpec {
    /// A pretrained model: hf://ORG/NAME[@REVISION], s3://..., gs://..., file:///path (a
    /// Hugging Face model directory or a .gguf file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::URL))]
    pub base_model: Option<String>,
    /// Build a small randomly initialised model and a BPE tokenizer trained on the data, for
    /// offline trials and tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_scratch: Option<FromScratchSpec>,
    /// A Jinja chat template overriding the model's own. Unset: the model's template, else
    /// ChatML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::CHAT_TEMPLATE))]
    pub chat_template: Option<String>,
}

/// Model families the trainer implements.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Architecture {
    /// Llama 2/3, SmolLM and other LlamaForCausalLM checkpoints.
    #[default]
    Llama,
    /// Qwen2 and Qwen2.5 (biases on q, k, v projections).
    Qwen2,
    /// Qwen3 dense models (Qwen3ForCausalLM, e.g. Qwen3-0.6B): Llama's layout plus an RMSNorm
    /// over each query and key head, no biases.
    Qwen3,
    /// Mistral.
    Mistral,
    /// Gemma (scaled embeddings, (1 + weight) RMSNorm, GELU MLP).
    Gemma,
    /// Gemma 3 text models (Gemma3ForCausalLM, e.g. gemma-3-270m): Gemma's layout plus q/k
    /// norms, norms after attention and MLP, and sliding-window layers with their own RoPE.
    Gemma3,
}

/// A small model built from scratch.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.numHeads == 0 || self.hiddenSize % self.numHeads == 0", "message": "fromScratch.hiddenSize must be a multiple of fromScratch.numHeads", "fieldPath": ".hiddenSize"},
    {"rule": "self.numHeads == 0 || self.hiddenSize % self.numHeads != 0 || (self.hiddenSize / self.numHeads) % 2 == 0", "message": "fromScratch.hiddenSize / numHeads (the head size) must be even: rotary embeddings rotate pairs of dimensions", "fieldPath": ".numHeads"},
    {"rule": "!has(self.numKvHeads) || (self.numKvHeads >= 1 && self.numHeads % self.numKvHeads == 0)", "message": "fromScratch.numKvHeads must be at least 1 and divide numHeads (each key/value head serves a whole group of query heads)", "fieldPath": ".numKvHeads"}
]))]
pub struct FromScratchSpec {
    /// Model family.
    #[serde(default)]
    pub architecture: Architecture,
    /// Width of the residual stream.
    #[serde(default = "default_hidden")]
    #[schemars(range(min = 1))]
    pub hidden_size: u32,
    /// Number of decoder layers.
    #[serde(default = "default_layers")]
    #[schemars(range(min = 1))]
    pub num_layers: u32,
    /// Attention heads.
    #[serde(default = "default_heads")]
    #[schemars(range(min = 1))]
    pub num_heads: u32,
    /// Key/value heads (grouped-query attention). Unset: numHeads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_kv_heads: Option<u32>,
    /// Width of the MLP. Unset: about 8/3 of hiddenSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<u32>,
    /// Size of the BPE vocabulary trained on the data (at least the 64 symbols and special
    /// tokens the tokenizer always has).
    #[serde(default = "default_vocab")]
    #[schemars(range(min = 64))]
    pub vocab_size: u32,
}

fn default_hidden() -> u32 {
    128
}
fn default_layers() -> u32 {
    2
}
fn default_heads() -> u32 {
    4
}
fn default_vocab() -> u32 {
    512
}

/// How much synthetic data to make and how to filter it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SynthesisSpec {
    /// Synthetic samples generated in round 1.
    #[serde(default = "default_samples")]
    pub initial_samples: u32,
    /// Synthetic samples added in each later round.
    #[serde(default = "default_samples")]
    pub samples_per_round: u32,
    /// (instruction, response) pairs requested per teacher call.
    #[schemars(range(min = 1, max = 50))]
    #[serde(default = "default_pairs_per_call")]
    pub pairs_per_call: u32,
    /// Near-duplicate filtering.
    #[serde(default)]
    pub dedup: DedupSpec,
    /// Drop synthetic samples too close to any test prompt, so the test set stays unseen.
    #[serde(default = "default_true")]
    pub decontaminate: bool,
    /// Seed for the coverage split and seed sampling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Compute resources of synthesize pods (they mostly wait on the teacher: e.g. requests
    /// {cpu: 250m, memory: 512Mi}). Unset: none, so the pods are BestEffort; set it where a
    /// ResourceQuota requires requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_samples() -> u32 {
    1000
}
fn default_pairs_per_call() -> u32 {
    5
}
fn default_true() -> bool {
    true
}
fn default_seed() -> u64 {
    42
}

impl Default for SynthesisSpec {
    fn default() -> Self {
        Self {
            initial_samples: default_samples(),
            samples_per_round: default_samples(),
            pairs_per_call: default_pairs_per_call(),
            dedup: DedupSpec::default(),
            decontaminate: true,
            seed: default_seed(),
            resources: None,
        }
    }
}

/// Near-duplicate filtering of synthetic samples.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.threshold > 0.0 && self.threshold <= 1.0", "message": "synthesis.dedup.threshold must be in (0, 1]", "fieldPath": ".threshold"}
]))]
pub struct DedupSpec {
    /// Estimated Jaccard similarity (MinHash over word shingles) at or above which a sample is
    /// a near-duplicate of one already kept.
    #[serde(default = "default_dedup_threshold")]
    pub threshold: f64,
}

fn default_dedup_threshold() -> f64 {
    0.9
}

impl Default for DedupSpec {
    fn default() -> Self {
        Self {
            threshold: default_dedup_threshold(),
        }
    }
}

/// Fine-tuning method.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TrainingMethod {
    /// Low-rank adapters on the target modules; the base stays frozen.
    #[default]
    Lora,
    /// Every weight is trained.
    Full,
}

/// Numeric precision for training and inference.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Precision {
    /// bf16 on GPUs, f32 on CPUs.
    #[default]
    Auto,
    /// bfloat16.
    Bf16,
    /// float32.
    F32,
}

/// LoRA hyperparameters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.dropout >= 0.0 && self.dropout < 1.0", "message": "training.lora.dropout must be in [0, 1)", "fieldPath": ".dropout"},
    {"rule": "size(self.targetModules) > 0", "message": "training.lora.targetModules must name at least one module (e.g. q_proj)", "fieldPath": ".targetModules"}
]))]
pub struct LoraSpec {
    /// Rank of the adapter matrices.
    #[schemars(range(min = 1))]
    #[serde(default = "default_rank")]
    pub rank: u32,
    /// Scaling numerator: the update is scaled by alpha / rank.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter input during training.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Linear layers that get adapters: Hugging Face names (q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj), or `all-linear` (PEFT's spelling) for every linear
    /// layer of the decoder except the output head, the default: on small pretrained students
    /// adapters on attention alone learn a new task far more slowly.
    #[serde(default = "default_target_modules")]
    #[schemars(length(max = limits::TARGET_MODULES))]
    #[schemars(inner(length(max = limits::TARGET_MODULE)))]
    pub target_modules: Vec<String>,
}

fn default_rank() -> u32 {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_dropout() -> f64 {
    0.05
}
fn default_target_modules() -> Vec<String> {
    vec![ALL_LINEAR.into()]
}

/// PEFT's `target_modules` spelling for every linear layer but the output head.
pub const ALL_LINEAR: &str = "all-linear";

/// Linear layers of a Llama-family decoder that can carry an adapter (Hugging Face names):
/// what `training.lora.targetModules` may name besides [`ALL_LINEAR`].
pub const LORA_TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: default_dropout(),
            target_modules: default_target_modules(),
        }
    }
}

/// Fine-tuning and the scheduling of training pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.learningRate) || self.learningRate > 0.0", "message": "training.learningRate must be positive", "fieldPath": ".learningRate"},
    {"rule": "self.warmupRatio >= 0.0 && self.warmupRatio < 1.0", "message": "training.warmupRatio must be in [0, 1)", "fieldPath": ".warmupRatio"}
]))]
pub struct TrainingSpec {
    /// lora (default) or full.
    #[serde(default)]
    pub method: TrainingMethod,
    /// LoRA hyperparameters (method lora).
    #[serde(default)]
    pub lora: LoraSpec,
    /// Passes over the training set. Unset (the default): as many as it takes to reach
    /// `minSteps` optimizer steps, at most `maxEpochs`, so the few hundred rows of round 1
    /// get enough steps and the larger sets of later rounds are not over-trained.
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// With `epochs` unset: the fewest optimizer steps a round trains for.
    #[schemars(range(min = 1))]
    #[serde(default = "default_min_steps")]
    pub min_steps: u32,
    /// With `epochs` unset: the most epochs `minSteps` may ask for.
    #[schemars(range(min = 1))]
    #[serde(default = "default_max_epochs")]
    pub max_epochs: u32,
    /// Keep the weights of the epoch whose held-out loss was lowest instead of the last
    /// epoch's (the held-out slice is a few percent of the training rows, never the test
    /// set). The stage result and `status.rounds[]` say which epoch won. Unset: on for
    /// `student.baseModel`, off for `student.fromScratch`, whose held-out loss bottoms out
    /// epochs before its answers are right (docs/training-defaults.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_best_epoch: Option<bool>,
    /// Peak learning rate of AdamW (after warmup, then cosine decay). Unset: 1e-3 for LoRA,
    /// 2e-5 for full fine-tuning of `student.baseModel`, 3e-3 for full training of a
    /// `student.fromScratch` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Share of the steps spent warming the learning rate up linearly.
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    /// Sequences per micro-batch.
    #[schemars(range(min = 1))]
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Micro-batches per optimizer step.
    #[schemars(range(min = 1))]
    #[serde(default = "default_grad_accum")]
    pub gradient_accumulation: u32,
    /// Longest sequence in tokens; longer samples are truncated and counted.
    #[schemars(range(min = 16))]
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: u32,
    /// auto (bf16 on GPU, f32 on CPU), bf16 or f32.
    #[serde(default)]
    pub precision: Precision,
    /// Seed for initialisation, shuffling and dropout; the same seed reproduces a run.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Optimizer steps between checkpoints (resume points).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u32,
    /// Also write a merged model (base + adapter folded) next to the adapter.
    #[serde(default)]
    pub merge_adapter: bool,
    /// Compute resources of training pods, e.g. limits {nvidia.com/gpu: 1}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels training pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "limits::node_selector")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of training pods (e.g. for tainted GPU nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TOLERATIONS))]
    pub tolerations: Option<Vec<Toleration>>,
    /// PriorityClass of training pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub priority_class_name: Option<String>,
    /// Container image of the train stage only, overriding `image` (e.g. the CUDA image for
    /// GPU nodes while synthesize and evaluate keep the CPU image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::IMAGE))]
    pub image: Option<String>,
}

fn default_min_steps() -> u32 {
    100
}
fn default_max_epochs() -> u32 {
    10
}

/// The learning rate `training.learningRate` stands for when unset (see its docs).
pub const DEFAULT_LORA_LEARNING_RATE: f64 = 1e-3;
/// Unset `training.learningRate` with method full and a pretrained base.
pub const DEFAULT_FULL_LEARNING_RATE: f64 = 2e-5;
/// Unset `training.learningRate` with method full and a from-scratch student.
pub const DEFAULT_FROM_SCRATCH_LEARNING_RATE: f64 = 3e-3;

impl TrainingSpec {
    /// Whether the held-out loss picks the published epoch: `selectBestEpoch`, else on for a
    /// pretrained base and off for a from-scratch student (see its docs).
    pub fn selects_best_epoch(&self, student: &StudentSpec) -> bool {
        self.select_best_epoch
            .unwrap_or(student.from_scratch.is_none())
    }

    /// The peak learning rate: `learningRate`, else the default for the method and student.
    pub fn effective_learning_rate(&self, student: &StudentSpec) -> f64 {
        match (self.learning_rate, self.method) {
            (Some(lr), _) => lr,
            (None, TrainingMethod::Lora) => DEFAULT_LORA_LEARNING_RATE,
            (None, TrainingMethod::Full) if student.from_scratch.is_some() => {
                DEFAULT_FROM_SCRATCH_LEARNING_RATE
            }
            (None, TrainingMethod::Full) => DEFAULT_FULL_LEARNING_RATE,
        }
    }
}

fn default_warmup() -> f64 {
    0.1
}
fn default_batch() -> u32 {
    4
}
fn default_grad_accum() -> u32 {
    2
}
fn default_max_seq_len() -> u32 {
    1024
}
fn default_checkpoint_every() -> u32 {
    100
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            method: TrainingMethod::default(),
            lora: LoraSpec::default(),
            epochs: None,
            min_steps: default_min_steps(),
            max_epochs: default_max_epochs(),
            select_best_epoch: None,
            learning_rate: None,
            warmup_ratio: default_warmup(),
            batch_size: default_batch(),
            gradient_accumulation: default_grad_accum(),
            max_seq_len: default_max_seq_len(),
            precision: Precision::default(),
            seed: default_seed(),
            checkpoint_every: default_checkpoint_every(),
            merge_adapter: false,
            resources: None,
            node_selector: None,
            tolerations: None,
            priority_class_name: None,
            image: None,
        }
    }
}

/// How answers are scored.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// An LLM judge rates similarity to the reference and precision, 1-100; the answer's score
    /// is the lower of the two.
    #[default]
    Judge,
    /// 100 when the normalized answer equals the normalized reference, else 0.
    ExactMatch,
    /// ROUGE-L F1 against the reference, times 100.
    RougeL,
    /// Cosine similarity of sentence embeddings (all-MiniLM-L6-v2), times 100.
    Embedding,
}

/// Student generation during evaluation.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.temperature >= 0.0 && self.topP > 0.0 && self.topP <= 1.0", "message": "evaluation.generation needs temperature >= 0 and 0 < topP <= 1"}
]))]
pub struct EvalGeneration {
    /// Sampling temperature; 0 is greedy.
    #[serde(default = "default_eval_temperature")]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Most tokens per answer.
    #[schemars(range(min = 1))]
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
}

fn default_eval_temperature() -> f64 {
    0.4
}
fn default_top_p() -> f64 {
    1.0
}
fn default_max_new_tokens() -> u32 {
    256
}

impl Default for EvalGeneration {
    fn default() -> Self {
        Self {
            temperature: default_eval_temperature(),
            top_p: default_top_p(),
            max_new_tokens: default_max_new_tokens(),
        }
    }
}

/// Scoring the student on the frozen test set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.passScore >= 0.0 && self.passScore <= 100.0", "message": "evaluation.passScore must be between 0 and 100", "fieldPath": ".passScore"},
    {"rule": "self.metric != 'embedding' || has(self.embeddingModel)", "message": "evaluation.metric embedding needs evaluation.embeddingModel (a URL of an all-MiniLM-L6-v2 style model directory)", "fieldPath": ".embeddingModel"}
]))]
pub struct EvaluationSpec {
    /// judge (default), exactMatch, rougeL or embedding.
    #[serde(default)]
    pub metric: Metric,
    /// Answers the student writes per test prompt.
    #[schemars(range(min = 1))]
    #[serde(default = "default_answers")]
    pub answers_per_prompt: u32,
    /// Judge samples per answer (metric judge).
    #[schemars(range(min = 1))]
    #[serde(default = "default_judge_samples")]
    pub judge_samples: u32,
    /// Student sampling parameters.
    #[serde(default)]
    pub generation: EvalGeneration,
    /// Score (0-100) at or above which an answer passes; used for passRate.
    #[serde(default = "default_pass_score")]
    pub pass_score: f64,
    /// Also have the teacher answer the test prompts and judge those answers, giving the
    /// performance-matching ratio (student score / teacher score).
    #[serde(default)]
    pub baseline: bool,
    /// Evaluate the student before any training, as round 0 (judged like every round), so
    /// status and report show where the migration started and what it bought. Costs one
    /// round of judge calls. Unset: on for `student.baseModel`, off for `student.fromScratch`
    /// (random weights score nothing worth paying a judge for; true is refused there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_student: Option<bool>,
    /// Sentence-embedding model for metric embedding (a local path or URL to an
    /// all-MiniLM-L6-v2 style directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::URL))]
    pub embedding_model: Option<String>,
    /// Run evaluate pods like training pods: with `training.image`, `resources`,
    /// `nodeSelector`, `tolerations` and `priorityClassName`, so the student writes its test
    /// answers on the training GPU instead of a CPU node.
    #[serde(default)]
    pub use_training_resources: bool,
    /// Compute resources of evaluate pods when they do not use the training resources (the
    /// student generates its test answers on these CPUs). Unset: none (BestEffort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_answers() -> u32 {
    4
}
fn default_judge_samples() -> u32 {
    3
}
fn default_pass_score() -> f64 {
    50.0
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        Self {
            metric: Metric::default(),
            answers_per_prompt: default_answers(),
            judge_samples: default_judge_samples(),
            generation: EvalGeneration::default(),
            pass_score: default_pass_score(),
            baseline: false,
            base_student: None,
            embedding_model: None,
            use_training_resources: false,
            resources: None,
        }
    }
}

/// The score at which the migration succeeds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.meanScore >= 0.0 && self.meanScore <= 100.0", "message": "target.meanScore must be between 0 and 100", "fieldPath": ".meanScore"},
    {"rule": "!has(self.passRate) || (self.passRate >= 0.0 && self.passRate <= 1.0)", "message": "target.passRate must be between 0 and 1 (a share of answers)", "fieldPath": ".passRate"}
]))]
pub struct TargetSpec {
    /// Mean answer score (0-100) to reach.
    pub mean_score: f64,
    /// Share of answers (0-1) that must score at least evaluation.passScore. Unset: not
    /// required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_rate: Option<f64>,
}

/// When the migration gives up.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopSpec {
    /// Most rounds to run.
    #[schemars(range(min = 1))]
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Budget of service LLM tokens (teacher and judge, input and output). Unset: no budget.
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_service_tokens: Option<u64>,
    /// Stop when the best score has not improved for this many rounds.
    #[schemars(range(min = 1))]
    #[serde(default = "default_plateau")]
    pub plateau_rounds: u32,
    /// Extra attempts for a failed stage before the migration fails.
    #[serde(default = "default_stage_retries")]
    pub stage_retries: u32,
}

fn default_max_rounds() -> u32 {
    5
}
fn default_plateau() -> u32 {
    2
}
fn default_stage_retries() -> u32 {
    2
}

impl Default for StopSpec {
    fn default() -> Self {
        Self {
            max_rounds: default_max_rounds(),
            max_service_tokens: None,
            plateau_rounds: default_plateau(),
            stage_retries: default_stage_retries(),
        }
    }
}

/// Where artifacts live.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.url.startsWith('file://') || has(self.volume)", "message": "storage.url file:// needs storage.volume.claimName: a PersistentVolumeClaim mounted at that path", "fieldPath": ".volume"},
    {"rule": "self.url.startsWith('file://') || self.url.startsWith('s3://') || self.url.startsWith('gs://') || self.url.startsWith('az://')", "message": "storage.url must start with file://, s3://, gs:// or az://", "fieldPath": ".url"}
]))]
pub struct StorageSpec {
    /// Root URL: file:///artifacts (with volume) or an object store (s3://, gs://, az://).
    /// Artifacts go under {url}/{namespace}/{migration}/{uid}/ (the object's uid, so a
    /// migration created again under the same name starts afresh; `status.artifacts` says where).
    #[schemars(length(max = limits::URL))]
    pub url: String,
    /// The PersistentVolumeClaim mounted at the file:// path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSpec>,
    /// Secret whose keys become environment variables of stage pods for the object store
    /// (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// A PersistentVolumeClaim in the migration's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Name of the PersistentVolumeClaim (ReadWriteMany if stages may run on different nodes).
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub claim_name: String,
}

/// A Secret in the migration's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(max = limits::OBJECT_NAME))]
    pub name: String,
}

/// Serving the best model.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.replicas >= 0", "message": "serving.replicas must not be negative", "fieldPath": ".replicas"}
]))]
pub struct ServingSpec {
    /// Run an OpenAI-compatible server on the best model once the migration succeeds (or,
    /// with `when: best`, once it stops).
    #[serde(default)]
    pub enabled: bool,
    /// Which ending serves a model: `succeeded` (default) only a migration that reached its
    /// target; `best` also one that stopped below it, on its best round's model.
    #[serde(default)]
    pub when: ServingWhen,
    /// Server replicas.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Compute resources of the server pods, e.g. limits {nvidia.com/gpu: 1} (the server then
    /// runs with LLAMADUO_DEVICE=cuda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Container image of the server pods, overriding `image` (e.g. the CUDA image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::IMAGE))]
    pub image: Option<String>,
    /// Node labels server pods must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "limits::node_selector")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of server pods (e.g. for tainted GPU nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::TOLERATIONS))]
    pub tolerations: Option<Vec<Toleration>>,
}

fn default_replicas() -> i32 {
    1
}

impl Default for ServingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            when: ServingWhen::default(),
            replicas: default_replicas(),
            resources: None,
            image: None,
            node_selector: None,
            tolerations: None,
        }
    }
}

/// Which ending of a migration serves a model (`spec.serving.when`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServingWhen {
    /// Serve only once the migration has `Succeeded`: the model reached `spec.target`.
    #[default]
    Succeeded,
    /// Also serve a migration that stopped below its target (`Failed`: `stop.maxRounds`, a
    /// plateau, the token budget or a failed stage) on `status.best`, its best evaluated
    /// round, when it has one; serving then goes on while an edit resumes the migration.
    Best,
}

/// Where a migration stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing started yet.
    #[default]
    Pending,
    /// The teacher is writing synthetic data.
    Synthesizing,
    /// The student is being fine-tuned.
    Training,
    /// The student is being scored.
    Evaluating,
    /// The target was reached; status.best holds the promoted model.
    Succeeded,
    /// A stop rule ended the migration before the target (see message).
    Failed,
    /// spec.suspend is true; no new stage starts.
    Suspended,
}

/// Observed state of a migration.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlamaDuoMigrationStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Synthesizing, Training, Evaluating, Succeeded, Failed or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The current (or last) round: 0 while the base student is evaluated
    /// (`evaluation.baseStudent`), then from 1.
    #[serde(default)]
    pub round: u32,
    /// A human-readable account of the latest decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The stage run in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<StageRun>,
    /// One entry per round started, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundStatus>,
    /// The best round so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestRound>,
    /// Service LLM tokens spent by all rounds (teacher and judge).
    #[serde(default)]
    pub service_tokens: TokenUsage,
    /// URL of the OpenAI-compatible endpoint serving the best model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Root URL of this migration's artifacts (coverage split, synthetic data, models),
    /// fixed when its first stage starts: `{storage.url}/{namespace}/{name}/{uid}` in a
    /// cluster, so a migration deleted and created again under the same name starts afresh
    /// instead of resuming the old one's files (which are left where they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
    /// Ready, Reconciling and Stalled (kstatus), TargetReached and Serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A stage of a round.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// The teacher writes synthetic samples.
    Synthesize,
    /// The student is fine-tuned.
    Train,
    /// The student is scored.
    Evaluate,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stage {
    /// All stages in the order a round runs them.
    pub const ALL: [Stage; 3] = [Stage::Synthesize, Stage::Train, Stage::Evaluate];

    /// Lower-case name used in object names, file names and the trainer's subcommands.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Synthesize => "synthesize",
            Stage::Train => "train",
            Stage::Evaluate => "evaluate",
        }
    }

    /// The phase shown while this stage runs.
    pub fn phase(self) -> Phase {
        match self {
            Stage::Synthesize => Phase::Synthesizing,
            Stage::Train => Phase::Training,
            Stage::Evaluate => Phase::Evaluating,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage run that has been started.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageRun {
    /// Round of the run.
    pub round: u32,
    /// Stage of the run.
    pub stage: Stage,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Name of the Job (or local process label) running it.
    pub name: String,
    /// The metadata.generation whose spec the run was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// What the run has done so far, while it runs (`status.current` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<super::progress::RunProgress>,
}

/// Service LLM tokens.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Prompt (input) tokens.
    #[serde(default)]
    pub input: u64,
    /// Completion (output) tokens.
    #[serde(default)]
    pub output: u64,
}

// Saturating arithmetic throughout: the counts come from stage results and service replies,
// and a sum past u64::MAX must neither panic the operator nor wrap round to a small number
// that slips under `stop.maxServiceTokens`.
impl TokenUsage {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

impl std::ops::Add for TokenUsage {
    type Output = TokenUsage;
    fn add(self, o: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_add(o.input),
            output: self.output.saturating_add(o.output),
        }
    }
}

impl std::ops::AddAssign for TokenUsage {
    fn add_assign(&mut self, o: TokenUsage) {
        *self = *self + o;
    }
}

/// Scores of one evaluation.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scores {
    /// Mean answer score, 0-100.
    pub mean: f64,
    /// Share of answers scoring at least evaluation.passScore.
    pub pass_rate: f64,
    /// Mean judge similarity score (metric judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// Mean judge precision score (metric judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Student score / teacher score on the same test set (evaluation.baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_matching: Option<f64>,
}

/// How a round ended.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RoundOutcome {
    /// Round 0: the base student evaluated before any training (never promoted, never the
    /// target round; the reference the trained rounds are compared with).
    Baseline,
    /// The round reached the target.
    TargetReached,
    /// The round fell short; another round follows.
    BelowTarget,
    /// The round fell short and a stop rule ended the migration.
    Stopped,
    /// A stage of the round failed past its retries.
    Failed,
}

/// Whether another attempt of a failed stage run can succeed with the same spec.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailureClass {
    /// It may (a network or service error, a killed or evicted pod, a store hiccup): the stage
    /// is retried up to `stop.stageRetries` times. What a result without a class means.
    #[default]
    Transient,
    /// It cannot until the spec or its inputs change (invalid config, an unsupported model, a
    /// missing tensor, a malformed dataset, a request the service refuses as invalid): the
    /// migration fails at once, and an edit of the spec gives the stage one more attempt.
    Permanent,
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        })
    }
}

/// The record of one finished stage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    /// The stage.
    pub stage: Stage,
    /// Attempts made (1 = first try).
    pub attempts: u32,
    /// Whether the last attempt succeeded.
    pub succeeded: bool,
    /// Failure reason of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Wall time of the successful attempt, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// The last attempt failed on the service-token budget (`stop.maxServiceTokens`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_exhausted: bool,
    /// Whether the last failed attempt can be retried (`permanent` ones are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_class: Option<FailureClass>,
    /// The metadata.generation the last attempt ran with: an edit after a stage failed on
    /// every attempt gives it one more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// One round.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoundStatus {
    /// Round number: 0 is the base student before training (`evaluation.baseStudent`), the
    /// trained rounds count from 1.
    pub round: u32,
    /// Synthetic samples added this round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthesized: Option<u64>,
    /// Samples in this round's training set (coverage train plus all synthetic so far), the
    /// slice held out for the held-out loss included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_samples: Option<u64>,
    /// Final training loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Loss on the training set's held-out slice of the published weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// The epoch (from 1) whose weights were published, when the held-out loss chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<u32>,
    /// Evaluation scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// Judgements that stayed unreadable after their retries, left out of the scores (an
    /// evaluation with more than a tenth of its answers unscored fails instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_judgements: Option<u64>,
    /// Service LLM tokens spent this round.
    #[serde(default)]
    pub service_tokens: TokenUsage,
    /// Where this round's model is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,
    /// Stages finished (or failed past retries) in this round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageRecord>,
    /// How the round ended; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RoundOutcome>,
}

impl RoundStatus {
    /// The record of `stage` in this round, if it finished.
    pub fn stage(&self, stage: Stage) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

/// The best round so far.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BestRound {
    /// Round number.
    pub round: u32,
    /// Its mean score.
    pub mean_score: f64,
    /// Where its model is.
    pub model_uri: String,
}

impl LlamaDuoMigrationSpec {
    /// The judge, which defaults to the teacher.
    pub fn judge(&self) -> &ProviderSpec {
        self.judge.as_ref().unwrap_or(&self.teacher)
    }

    /// Whether the migration starts with round 0, the base student judged before training
    /// (`evaluation.baseStudent`, default on for a pretrained `student.baseModel`; never for a
    /// from-scratch student, which has no weights before round 1 trains them).
    pub fn evaluates_base_student(&self) -> bool {
        self.student.from_scratch.is_none()
            && self.student.base_model.is_some()
            && self.evaluation.base_student.unwrap_or(true)
    }
}
