//! Random initialisation of a fresh model (from-scratch training), as transformers does it:
//! linear and embedding weights normal(0, 0.02), biases zero, norm weights one (zero for
//! Gemma and Gemma 3, whose norms scale by 1 + w; Gemma 3's q/k head norms and extra layer
//! norms included). Deterministic in the seed.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use super::Flavor;
use crate::config::ModelConfig;
use crate::rng::{SplitMix, derive_str};

/// Standard deviation of the initial weights (transformers' `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// Every tensor of a fresh model, by checkpoint name, in f32.
pub fn random_weights(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let flavor = Flavor::of(cfg).map_err(candle_core::Error::wrap)?;
    let (h, v, inter) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.num_kv_heads() * cfg.head_dim(),
    );
    let norm_value = if flavor.gemma_norm { 0.0 } else { 1.0 };
    let mut out = HashMap::new();
    let normal = |name: &str, shape: (usize, usize)| -> Result<Tensor> {
        let mut rng = SplitMix::new(derive_str(seed, name));
        let data: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.normal() * INIT_STD) as f32)
            .collect();
        Tensor::from_vec(data, shape, device)
    };
    let fill = |n: usize, x: f32| Tensor::from_vec(vec![x; n], n, device);
    out.insert(
        "model.embed_tokens.weight".into(),
        normal("model.embed_tokens.weight", (v, h))?,
    );
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, o, inp, bias) in [
            ("self_attn.q_proj", q, h, flavor.qkv_bias),
            ("self_attn.k_proj", kv, h, flavor.qkv_bias),
            ("self_attn.v_proj", kv, h, flavor.qkv_bias),
            ("self_attn.o_proj", h, q, flavor.o_bias),
            ("mlp.gate_proj", inter, h, flavor.mlp_bias),
            ("mlp.up_proj", inter, h, flavor.mlp_bias),
            ("mlp.down_proj", h, inter, flavor.mlp_bias),
        ] {
            let w = format!("{p}.{name}.weight");
            out.insert(w.clone(), normal(&w, (o, inp))?);
            if bias {
                out.insert(format!("{p}.{name}.bias"), fill(o, 0.0)?);
            }
        }
        out.insert(format!("{p}.input_layernorm.weight"), fill(h, norm_value)?);
        out.insert(
            format!("{p}.post_attention_layernorm.weight"),
            fill(h, norm_value)?,
        );
        if flavor.sandwich_norms {
            for n in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                out.insert(format!("{p}.{n}.weight"), fill(h, norm_value)?);
            }
        }
        if flavor.qk_norm {
            for n in ["q_norm", "k_norm"] {
                out.insert(
                    format!("{p}.self_attn.{n}.weight"),
                    fill(cfg.head_dim(), norm_value)?,
                );
            }
        }
    }
    out.insert("model.norm.weight".into(), fill(h, norm_value)?);
    if !cfg.tied_embeddings() {
        out.insert("lm_head.weight".into(), normal("lm_head.weight", (v, h))?);
    }
    Ok(out)
}
