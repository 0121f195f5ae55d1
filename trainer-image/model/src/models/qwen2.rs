//! Qwen2 / Qwen2.5: the Llama layout with biases on q, k and v (not o). Sliding-window
//! attention only when the config says `use_sliding_window: true` (released Qwen2 configs
//! say false).

use super::{Activation, Flavor};
use crate::config::ModelConfig;

/// Qwen2's flavor.
pub fn flavor(cfg: &ModelConfig) -> Flavor {
    let sliding = cfg
        .extra
        .get("use_sliding_window")
        .and_then(|v| v.as_bool())
        == Some(true);
    Flavor {
        qkv_bias: true,
        o_bias: false,
        gemma_norm: false,
        embed_scale: false,
        activation: Activation::Silu,
        sliding_window: if sliding { cfg.sliding_window } else { None },
    }
}
