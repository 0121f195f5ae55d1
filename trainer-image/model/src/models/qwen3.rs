//! Qwen3 (dense, `Qwen3ForCausalLM`, e.g. Qwen3-0.6B / 1.7B): the Llama layout with an
//! RMSNorm over each query and key head before RoPE (`self_attn.q_norm`, `self_attn.k_norm`,
//! weight of width head_dim, plain `w · x` as the other norms), no q/k/v biases unless
//! `attention_bias` is set (then q, k, v and o all carry one, as in transformers), and
//! `head_dim` 128 when the config omits it (Qwen3Config's default, not hidden / heads).
//! Sliding-window layers follow Qwen2's rule (`models::qwen2::layer_windows`).

use super::{Activation, Flavor};
use crate::config::ModelConfig;

/// Qwen3Config's `head_dim` when config.json omits it.
pub const DEFAULT_HEAD_DIM: usize = 128;

/// Qwen3's flavor.
pub fn flavor(cfg: &ModelConfig) -> Flavor {
    let bias = cfg.attention_bias.unwrap_or(false);
    Flavor {
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: false,
        gemma_norm: false,
        embed_scale: false,
        activation: Activation::Silu,
        layer_windows: super::qwen2::layer_windows(cfg),
        qk_norm: true,
        sandwich_norms: false,
        attn_scale: super::default_attn_scale(cfg),
    }
}
