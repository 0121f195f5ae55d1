//! Trainable Llama-family decoders (Llama, Qwen2, Qwen3, Mistral, Gemma, Gemma 3) sharing one
//! implementation, [`CausalLm`]; the per-family files say what differs.
//!
//! # API (stable; generation builds on it)
//!
//! ```text
//! let cfg = ModelConfig::from_file(dir.join("config.json"))?;
//! let vb = VarBuilder::from_mmaped_safetensors(&files, DType::F32, &device)?;  // or from_tensors
//! let model = CausalLm::load(&cfg, vb, &LoadOptions::inference(DType::F32))?;
//!
//! // Whole sequences (training, scoring): logits for ALL positions, (batch, seq, vocab).
//! let logits = model.forward(&ids /* (b, s) u32 */, 0, None)?;
//!
//! // Incremental decoding with a KV cache: prefill, then one token at a time.
//! let mut cache = KvCache::new(cfg.num_hidden_layers);
//! let logits = model.forward(&prompt_ids, 0, Some(&mut cache))?;       // (b, s, vocab)
//! let logits = model.forward(&next_ids /* (b, 1) */, cache.len(), Some(&mut cache))?;
//!
//! // Batched generation: LEFT-pad the prompts. left_pad[r] = number of pad tokens at the
//! // start of row r (any token id; they are masked as keys and real tokens of row r get
//! // positions 0, 1, ... from their first real token). Pass the same left_pad on every
//! // call of that generation; start_pos = cache.len() as above.
//! let logits = model.forward_padded(&ids, 0, &left_pad, Some(&mut cache))?;
//! ```
//!
//! Training uses right-padded batches and the plain [`CausalLm::forward`] /
//! [`CausalLm::hidden_states`]: the causal mask already keeps real tokens from attending to
//! the pads after them, and the loss masks the pad positions. Right-padded batches are not
//! meant for generation (use left padding).
//!
//! Logits come in the compute dtype (`LoadOptions::dtype`); cast to f32 for sampling.

pub mod decoder;
pub mod gemma;
pub mod gemma3;
pub mod init;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod mistral;
pub mod ops;
pub mod qwen2;
pub mod qwen3;

pub use decoder::{CausalLm, HandBatch};
pub use kv_cache::KvCache;
pub use linear::{Linear, Weight};

use candle_core::DType;
use llamaduo::api::Architecture;

use crate::config::{ConfigError, ModelConfig};
use crate::lora::LoraConfig;

/// Which weights train.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Trainable {
    /// Nothing (inference).
    #[default]
    None,
    /// Every weight (full fine-tuning), as f32 master Vars.
    Full,
    /// LoRA adapters on the configured modules; the base stays frozen.
    Lora(LoraConfig),
}

/// How to build a [`CausalLm`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// Compute dtype (bf16 on CUDA, f32 on CPU).
    pub dtype: DType,
    /// Which weights train.
    pub trainable: Trainable,
    /// Seed of the LoRA initialisation.
    pub seed: u64,
}

impl LoadOptions {
    /// Frozen weights in `dtype`, for generation and scoring.
    pub fn inference(dtype: DType) -> Self {
        Self {
            dtype,
            trainable: Trainable::None,
            seed: 0,
        }
    }
}

/// MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama, Qwen2, Mistral).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// What one family changes in the shared decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct Flavor {
    /// Biases on q/k/v.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RMSNorm scales by (1 + w) (Gemma).
    pub gemma_norm: bool,
    /// Embeddings multiplied by sqrt(hidden_size) (Gemma).
    pub embed_scale: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Sliding-window attention span of each layer (`None`: full attention). Qwen2 windows
    /// only some layers, so this is per layer.
    pub layer_windows: Vec<Option<usize>>,
    /// An RMSNorm over each query and key head (`self_attn.q_norm` / `self_attn.k_norm`,
    /// weight of width head_dim) before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms on the attention output and on the MLP output before their residual adds
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`); the MLP's input norm is then
    /// `pre_feedforward_layernorm` (Gemma 3). Without it `post_attention_layernorm` is the
    /// MLP's input norm, as in Llama.
    pub sandwich_norms: bool,
    /// Factor of the attention scores q·k: 1/sqrt(head_dim), or Gemma 3's
    /// `query_pre_attn_scalar ** -0.5`.
    pub attn_scale: f64,
}

/// The usual attention scale, 1/sqrt(head_dim).
pub fn default_attn_scale(cfg: &ModelConfig) -> f64 {
    1.0 / (cfg.head_dim().max(1) as f64).sqrt()
}

impl Flavor {
    /// The flavor of a config's family.
    pub fn of(cfg: &ModelConfig) -> Result<Self, ConfigError> {
        Ok(match cfg.architecture()? {
            Architecture::Llama => llama::flavor(cfg),
            Architecture::Qwen2 => qwen2::flavor(cfg),
            Architecture::Qwen3 => qwen3::flavor(cfg),
            Architecture::Mistral => mistral::flavor(cfg),
            Architecture::Gemma => gemma::flavor(cfg),
            Architecture::Gemma3 => gemma3::flavor(cfg)?,
        })
    }

    /// The sliding-window span of layer `layer`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.layer_windows.get(layer).copied().flatten()
    }

    /// The span shared by the windowed layers, if any layer is windowed (configs have one
    /// `sliding_window`, so all windowed layers share it).
    pub fn any_window(&self) -> Option<usize> {
        self.layer_windows.iter().flatten().copied().next()
    }
}
