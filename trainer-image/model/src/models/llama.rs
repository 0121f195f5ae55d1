//! Llama (2/3, SmolLM, TinyLlama...): the reference layout. SiLU-gated MLP, plain RMSNorm,
//! no biases unless `attention_bias` is set (then q/k/v/o all carry one, as in transformers)
//! or `mlp_bias` is set (then gate/up/down carry one).

use super::{Activation, Flavor};
use crate::config::ModelConfig;

/// Llama's flavor.
pub fn flavor(cfg: &ModelConfig) -> Flavor {
    let bias = cfg.attention_bias.unwrap_or(false);
    Flavor {
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: cfg.mlp_bias.unwrap_or(false),
        gemma_norm: false,
        embed_scale: false,
        activation: Activation::Silu,
        layer_windows: vec![None; cfg.num_hidden_layers],
        qk_norm: false,
        sandwich_norms: false,
        attn_scale: super::default_attn_scale(cfg),
    }
}
