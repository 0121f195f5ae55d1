//! Gemma (1): embeddings scaled by sqrt(hidden_size), RMSNorm scaling by (1 + w), a
//! GELU-tanh gated MLP, `head_dim` from the config (256 in Gemma-2B, not hidden/heads, and
//! 256 when absent), tied embeddings. Gemma 3 is `super::gemma3`; Gemma 2 (logit
//! soft-capping) is rejected by `ModelConfig::architecture`.

use super::{Activation, Flavor};
use crate::config::ModelConfig;

/// Gemma's flavor.
pub fn flavor(cfg: &ModelConfig) -> Flavor {
    let bias = cfg.attention_bias.unwrap_or(false);
    Flavor {
        qkv_bias: bias,
        o_bias: bias,
        // GemmaMLP has no biases whatever the config says.
        mlp_bias: false,
        gemma_norm: true,
        embed_scale: true,
        activation: Activation::GeluTanh,
        layer_windows: vec![None; cfg.num_hidden_layers],
        qk_norm: false,
        sandwich_norms: false,
        attn_scale: super::default_attn_scale(cfg),
    }
}
