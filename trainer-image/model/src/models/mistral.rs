//! Mistral: the Llama layout (no biases) with sliding-window attention over the last
//! `sliding_window` keys in every layer. The window is applied through the attention mask;
//! for sequences shorter than the window (all fine-tuning here: maxSeqLen is far below
//! Mistral's 4096) it changes nothing and costs nothing.

use super::{Activation, Flavor};
use crate::config::ModelConfig;

/// Mistral's flavor.
pub fn flavor(cfg: &ModelConfig) -> Flavor {
    Flavor {
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        gemma_norm: false,
        embed_scale: false,
        activation: Activation::Silu,
        layer_windows: vec![cfg.sliding_window; cfg.num_hidden_layers],
        qk_norm: false,
        sandwich_norms: false,
        attn_scale: super::default_attn_scale(cfg),
    }
}
