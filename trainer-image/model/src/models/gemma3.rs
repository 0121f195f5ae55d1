//! Gemma 3 (text, `Gemma3ForCausalLM`, e.g. gemma-3-270m): Gemma's scaled embeddings,
//! (1 + w) RMSNorms, GELU-tanh gated MLP and tied embeddings, plus
//! - an RMSNorm over each query and key head before RoPE (`self_attn.q_norm`, `k_norm`),
//! - four norms per layer: `input_layernorm` before attention, `post_attention_layernorm` on
//!   the attention output and `post_feedforward_layernorm` on the MLP output (each before
//!   its residual add), `pre_feedforward_layernorm` before the MLP,
//! - attention scores scaled by `query_pre_attn_scalar ** -0.5`,
//! - sliding-window layers (`layer_types`) attending to the last `sliding_window` keys with
//!   their own RoPE base (`rope_local_base_freq`), global layers with `rope_theta`
//!   (`ModelConfig::layer_ropes`).
//!
//! The config fields are read in `crate::config::gemma3`.

use super::{Activation, Flavor};
use crate::config::gemma3::{LayerKind, layer_kinds, query_pre_attn_scalar, sliding_window};
use crate::config::{ConfigError, ModelConfig};

/// Gemma 3's flavor.
pub fn flavor(cfg: &ModelConfig) -> Result<Flavor, ConfigError> {
    let bias = cfg.attention_bias.unwrap_or(false);
    let window = sliding_window(cfg);
    Ok(Flavor {
        qkv_bias: bias,
        o_bias: bias,
        // Gemma3MLP has no biases.
        mlp_bias: false,
        gemma_norm: true,
        embed_scale: true,
        activation: Activation::GeluTanh,
        layer_windows: layer_kinds(cfg)?
            .into_iter()
            .map(|k| (k == LayerKind::Sliding).then_some(window))
            .collect(),
        qk_norm: true,
        sandwich_norms: true,
        attn_scale: 1.0 / query_pre_attn_scalar(cfg)?.sqrt(),
    })
}
