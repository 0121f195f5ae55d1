//! Qwen2 / Qwen2.5: the Llama layout with biases on q, k and v (not o). Sliding-window
//! attention only when the config says `use_sliding_window: true` (released Qwen2 configs
//! say false), and then, as in transformers' Qwen2Config, only on the layers
//! `layer_types` marks `sliding_attention` or, without that list, on layers
//! `>= max_window_layers` (default 28); the layers below keep full attention. Qwen3 uses the
//! same rule ([`layer_windows`]).

use super::{Activation, Flavor};
use crate::config::ModelConfig;

/// Qwen2Config's default `max_window_layers`.
pub const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;

/// Qwen2's flavor.
pub fn flavor(cfg: &ModelConfig) -> Flavor {
    Flavor {
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        gemma_norm: false,
        embed_scale: false,
        activation: Activation::Silu,
        layer_windows: layer_windows(cfg),
        qk_norm: false,
        sandwich_norms: false,
        attn_scale: super::default_attn_scale(cfg),
    }
}

/// The sliding window of each layer under Qwen2's rule (Qwen3 shares it): none unless
/// `use_sliding_window`, then on the layers `layer_types` marks or those from
/// `max_window_layers` on.
pub fn layer_windows(cfg: &ModelConfig) -> Vec<Option<usize>> {
    let sliding = cfg
        .extra
        .get("use_sliding_window")
        .and_then(|v| v.as_bool())
        == Some(true);
    let window = if sliding { cfg.sliding_window } else { None };
    let max_window_layers = cfg
        .extra
        .get("max_window_layers")
        .and_then(|v| v.as_u64())
        .map_or(DEFAULT_MAX_WINDOW_LAYERS, |n| n as usize);
    let layer_types: Option<Vec<&str>> = cfg
        .extra
        .get("layer_types")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|t| t.as_str()).collect());
    (0..cfg.num_hidden_layers)
        .map(|i| {
            let windowed = match &layer_types {
                Some(types) => types.get(i) == Some(&"sliding_attention"),
                None => i >= max_window_layers,
            };
            if windowed { window } else { None }
        })
        .collect()
}
