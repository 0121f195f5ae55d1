//! The Gemma 3 fields of config.json (`Gemma3ForCausalLM`, `model_type` `gemma3_text`), read
//! as transformers' `Gemma3TextConfig` reads them: which layers slide (`layer_types`, else
//! every `sliding_window_pattern`-th layer is global), the RoPE of each kind of layer
//! (`rope_parameters` per layer type as transformers 5 writes it, else `rope_theta` for the
//! global layers with `rope_scaling`, and `rope_local_base_freq` for the sliding ones), and the
//! attention scale `query_pre_attn_scalar ** -0.5`. Features the decoder does not implement
//! (logit soft-capping, bidirectional attention) are refused naming the field.

use serde_json::Value;

use super::{ConfigError, ModelConfig, Rope, RopeScaling, rope_scaling_of};

/// `Gemma3TextConfig.sliding_window`'s default.
pub const DEFAULT_SLIDING_WINDOW: usize = 4096;
/// Every this-many-th layer is global when config.json has no `layer_types`.
pub const DEFAULT_SLIDING_WINDOW_PATTERN: usize = 6;
/// RoPE base of the global (full-attention) layers by default.
pub const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;
/// RoPE base of the sliding-window layers by default (`rope_local_base_freq`).
pub const DEFAULT_ROPE_LOCAL_BASE_FREQ: f64 = 10_000.0;
/// `query_pre_attn_scalar`'s default.
pub const DEFAULT_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;

/// `layer_types` entry of a global layer.
pub const FULL_ATTENTION: &str = "full_attention";
/// `layer_types` entry of a sliding-window layer.
pub const SLIDING_ATTENTION: &str = "sliding_attention";

/// The two kinds of Gemma 3 layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Full causal attention, RoPE from the global base.
    Full,
    /// Attention over the last `sliding_window` keys, RoPE from the local base.
    Sliding,
}

/// The RoPE of the global and of the sliding-window layers.
#[derive(Clone, Debug, PartialEq)]
pub struct Ropes {
    /// `full_attention` layers.
    pub global: Rope,
    /// `sliding_attention` layers.
    pub local: Rope,
}

fn bad(m: String) -> ConfigError {
    ConfigError::Invalid(m)
}

fn positive(field: &str, v: &Value) -> Result<f64, ConfigError> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(bad(format!("{field} must be a positive number, got {v}"))),
    }
}

/// The kind of every layer: `layer_types` when present (one entry per layer), else
/// transformers' default pattern (layer i is global when `(i + 1) % pattern == 0`).
pub fn layer_kinds(cfg: &ModelConfig) -> Result<Vec<LayerKind>, ConfigError> {
    let n = cfg.num_hidden_layers;
    if let Some(types) = cfg.extra.get("layer_types").filter(|v| !v.is_null()) {
        let kinds: Option<Vec<LayerKind>> = types.as_array().and_then(|a| {
            a.iter()
                .map(|t| match t.as_str() {
                    Some(FULL_ATTENTION) => Some(LayerKind::Full),
                    Some(SLIDING_ATTENTION) => Some(LayerKind::Sliding),
                    _ => None,
                })
                .collect()
        });
        return match kinds {
            Some(k) if k.len() == n => Ok(k),
            _ => Err(bad(format!(
                "layer_types must list \"{FULL_ATTENTION}\" or \"{SLIDING_ATTENTION}\" for each of the {n} layers, got {types}"
            ))),
        };
    }
    // transformers 4.5x wrote `sliding_window_pattern`; later versions keep it as
    // `_sliding_window_pattern` next to `layer_types`.
    let pattern = match ["sliding_window_pattern", "_sliding_window_pattern"]
        .iter()
        .find_map(|k| cfg.extra.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
    {
        Some((key, v)) => match v.as_u64() {
            Some(p) if p > 0 => p as usize,
            _ => return Err(bad(format!("{key} must be a positive integer, got {v}"))),
        },
        None => DEFAULT_SLIDING_WINDOW_PATTERN,
    };
    Ok((0..n)
        .map(|i| {
            if (i + 1).is_multiple_of(pattern) {
                LayerKind::Full
            } else {
                LayerKind::Sliding
            }
        })
        .collect())
}

/// The window of the sliding layers (`sliding_window`, 4096 when absent).
pub fn sliding_window(cfg: &ModelConfig) -> usize {
    cfg.sliding_window.unwrap_or(DEFAULT_SLIDING_WINDOW)
}

/// The RoPE settings of each layer kind. transformers 5 writes
/// `rope_parameters: {"full_attention": {...}, "sliding_attention": {...}}`; transformers 4
/// wrote `rope_theta` and `rope_scaling` (global layers only) and `rope_local_base_freq`.
pub fn ropes(cfg: &ModelConfig) -> Result<Ropes, ConfigError> {
    let top_theta = match cfg.rope_theta {
        Some(t) => positive("rope_theta", &serde_json::json!(t))?,
        None => DEFAULT_ROPE_THETA,
    };
    let local_theta = match cfg
        .extra
        .get("rope_local_base_freq")
        .filter(|v| !v.is_null())
    {
        Some(v) => positive("rope_local_base_freq", v)?,
        None => DEFAULT_ROPE_LOCAL_BASE_FREQ,
    };
    let top_scaling = match &cfg.rope_scaling {
        None | Some(Value::Null) => RopeScaling::None,
        Some(Value::Object(m)) => rope_scaling_of("rope_scaling", m)?,
        Some(other) => {
            return Err(bad(format!(
                "rope_scaling must be null or an object with rope_type, got {other}"
            )));
        }
    };
    let params = match &cfg.rope_parameters {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(bad(format!(
                "rope_parameters must be an object with \"{FULL_ATTENTION}\" and \"{SLIDING_ATTENTION}\" entries, got {other}"
            )));
        }
    };
    if let Some(p) = params
        && let Some(k) = p
            .keys()
            .find(|k| *k != FULL_ATTENTION && *k != SLIDING_ATTENTION)
    {
        return Err(bad(format!(
            "rope_parameters.{k}: Gemma 3 configs hold one entry per layer type (\"{FULL_ATTENTION}\", \"{SLIDING_ATTENTION}\")"
        )));
    }
    let entry = |kind: &str, theta: f64, scaling: RopeScaling| -> Result<Rope, ConfigError> {
        let field = format!("rope_parameters.{kind}");
        let Some(v) = params.and_then(|p| p.get(kind)).filter(|v| !v.is_null()) else {
            return Ok(Rope { theta, scaling });
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("{field} must be an object, got {v}")))?;
        let theta = match obj.get("rope_theta") {
            Some(t) => positive(&format!("{field}.rope_theta"), t)?,
            None => theta,
        };
        let own = rope_scaling_of(&field, obj)?;
        let scaling = match (own, scaling) {
            (RopeScaling::None, s) | (s, RopeScaling::None) => s,
            (a, b) if a == b => a,
            (a, b) => {
                return Err(bad(format!(
                    "{field} ({a:?}) and rope_scaling ({b:?}) disagree; keep one of them"
                )));
            }
        };
        Ok(Rope { theta, scaling })
    };
    Ok(Ropes {
        global: entry(FULL_ATTENTION, top_theta, top_scaling)?,
        local: entry(SLIDING_ATTENTION, local_theta, RopeScaling::None)?,
    })
}

/// The RoPE of each layer.
pub fn layer_ropes(cfg: &ModelConfig) -> Result<Vec<Rope>, ConfigError> {
    let r = ropes(cfg)?;
    Ok(layer_kinds(cfg)?
        .into_iter()
        .map(|k| match k {
            LayerKind::Full => r.global.clone(),
            LayerKind::Sliding => r.local.clone(),
        })
        .collect())
}

/// `query_pre_attn_scalar` (256 when absent): queries are scaled by its inverse square root.
pub fn query_pre_attn_scalar(cfg: &ModelConfig) -> Result<f64, ConfigError> {
    match cfg
        .extra
        .get("query_pre_attn_scalar")
        .filter(|v| !v.is_null())
    {
        Some(v) => positive("query_pre_attn_scalar", v),
        None => Ok(DEFAULT_QUERY_PRE_ATTN_SCALAR),
    }
}

/// Checks the Gemma 3 fields; refuses the ones the decoder does not implement by name.
pub fn validate(cfg: &ModelConfig) -> Result<(), ConfigError> {
    for field in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if let Some(v) = cfg.extra.get(field).filter(|v| !v.is_null()) {
            return Err(bad(format!(
                "{field} = {v} is not supported (Gemma 3 checkpoints have null here; soft-capping is a Gemma 2 feature); set it to null only if the model was trained without it"
            )));
        }
    }
    if let Some(v) = cfg.extra.get("use_bidirectional_attention")
        && !(v.is_null() || v == &Value::Bool(false))
    {
        return Err(bad(format!(
            "use_bidirectional_attention = {v} is not supported: it makes an embedding model (EmbeddingGemma), not a causal LM"
        )));
    }
    if cfg.sliding_window == Some(0) {
        return Err(bad("sliding_window must be at least 1".into()));
    }
    layer_kinds(cfg)?;
    ropes(cfg)?;
    query_pre_attn_scalar(cfg)?;
    Ok(())
}

/// The Gemma 3 fields of a fresh config (from-scratch students): transformers' defaults
/// written out, with `query_pre_attn_scalar` the head width (as in gemma-3-270m).
pub fn fresh_fields(cfg: &mut ModelConfig) {
    let hd = cfg.head_dim();
    let kinds = layer_kinds(cfg).unwrap_or_default();
    cfg.rope_theta = None;
    cfg.rope_parameters = Some(serde_json::json!({
        FULL_ATTENTION: {"rope_type": "default", "rope_theta": DEFAULT_ROPE_THETA},
        SLIDING_ATTENTION: {"rope_type": "default", "rope_theta": DEFAULT_ROPE_LOCAL_BASE_FREQ},
    }));
    cfg.sliding_window = Some(512);
    let e = &mut cfg.extra;
    e.insert("query_pre_attn_scalar".into(), serde_json::json!(hd));
    e.insert(
        "layer_types".into(),
        serde_json::json!(
            kinds
                .iter()
                .map(|k| match k {
                    LayerKind::Full => FULL_ATTENTION,
                    LayerKind::Sliding => SLIDING_ATTENTION,
                })
                .collect::<Vec<_>>()
        ),
    );
    e.insert("final_logit_softcapping".into(), Value::Null);
    e.insert("attn_logit_softcapping".into(), Value::Null);
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamaduo::api::Architecture;

    /// gemma-3-270m's config.json as transformers 4.55 wrote it.
    const G270M_V4: &str = r#"{"_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"],
      "attention_bias": false, "attn_logit_softcapping": null, "bos_token_id": 2,
      "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256,
      "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "intermediate_size": 2048,
      "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
        "sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
        "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
        "full_attention", "sliding_attention", "sliding_attention", "sliding_attention",
        "sliding_attention", "sliding_attention", "full_attention"],
      "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
      "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
      "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
      "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512,
      "torch_dtype": "bfloat16", "use_bidirectional_attention": false, "vocab_size": 262144}"#;

    /// The same settings as transformers 5 writes them.
    const G270M_V5: &str = r#"{"architectures": ["Gemma3ForCausalLM"], "head_dim": 256,
      "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "intermediate_size": 2048,
      "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
      "num_hidden_layers": 18, "num_key_value_heads": 1, "query_pre_attn_scalar": 256,
      "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
      "sliding_window": 512, "vocab_size": 262144, "attn_logit_softcapping": null,
      "final_logit_softcapping": null}"#;

    #[test]
    fn reads_gemma3_270m_in_both_spellings() {
        let v4 = ModelConfig::from_json(G270M_V4).expect("v4");
        let v5 = ModelConfig::from_json(G270M_V5).expect("v5");
        for c in [&v4, &v5] {
            assert_eq!(c.architecture().expect("arch"), Architecture::Gemma3);
            assert!(c.tied_embeddings());
            assert_eq!(c.head_dim(), 256);
            let kinds = layer_kinds(c).expect("kinds");
            let full: Vec<usize> = (0..18).filter(|i| kinds[*i] == LayerKind::Full).collect();
            assert_eq!(full, vec![5, 11, 17]);
            let r = ropes(c).expect("ropes");
            assert_eq!((r.global.theta, r.local.theta), (1e6, 1e4));
            assert_eq!(query_pre_attn_scalar(c).expect("scalar"), 256.0);
            let per_layer = c.layer_ropes().expect("layer ropes");
            assert_eq!(per_layer[5], r.global);
            assert_eq!(per_layer[4], r.local);
            // `rope()` is the global layers' RoPE.
            assert_eq!(c.rope().expect("rope"), r.global);
        }
        // The v4 file names the architecture by model_type alone too.
        let typed = G270M_V4.replace(r#""architectures": ["Gemma3ForCausalLM"],"#, "");
        assert_eq!(
            ModelConfig::from_json(&typed)
                .expect("model_type")
                .architecture()
                .expect("arch"),
            Architecture::Gemma3
        );
    }

    #[test]
    fn defaults_follow_gemma3_text_config() {
        let j = r#"{"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 7, "num_attention_heads": 4,
          "vocab_size": 300, "sliding_window_pattern": 3,
          "rope_scaling": {"rope_type": "linear", "factor": 4.0}}"#;
        let c = ModelConfig::from_json(j).expect("parses");
        assert_eq!(c.head_dim(), 256);
        assert_eq!(sliding_window(&c), DEFAULT_SLIDING_WINDOW);
        let kinds = layer_kinds(&c).expect("kinds");
        let full: Vec<usize> = (0..7).filter(|i| kinds[*i] == LayerKind::Full).collect();
        assert_eq!(full, vec![2, 5]);
        let r = ropes(&c).expect("ropes");
        // rope_scaling applies to the global layers only, as in transformers.
        assert_eq!(
            r.global,
            Rope {
                theta: DEFAULT_ROPE_THETA,
                scaling: RopeScaling::Linear { factor: 4.0 }
            }
        );
        assert_eq!(
            r.local,
            Rope {
                theta: DEFAULT_ROPE_LOCAL_BASE_FREQ,
                scaling: RopeScaling::None
            }
        );
        assert_eq!(
            query_pre_attn_scalar(&c).expect("scalar"),
            DEFAULT_QUERY_PRE_ATTN_SCALAR
        );
        // Without any pattern, every sixth layer is global.
        let plain = ModelConfig::from_json(&j.replace(r#""sliding_window_pattern": 3,"#, ""))
            .expect("parses");
        let kinds = layer_kinds(&plain).expect("kinds");
        assert_eq!(kinds[5], LayerKind::Full);
        assert_eq!(kinds[4], LayerKind::Sliding);
    }

    #[test]
    fn unsupported_features_are_refused_by_field() {
        for (field, value) in [
            ("final_logit_softcapping", "30.0"),
            ("attn_logit_softcapping", "50.0"),
            ("use_bidirectional_attention", "true"),
        ] {
            let j = match G270M_V5.contains(&format!("\"{field}\": null")) {
                true => G270M_V5.replace(
                    &format!("\"{field}\": null"),
                    &format!("\"{field}\": {value}"),
                ),
                false => G270M_V5.replacen('{', &format!("{{\"{field}\": {value}, "), 1),
            };
            let e = ModelConfig::from_json(&j).expect_err(field).to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut short: serde_json::Value = serde_json::from_str(G270M_V4).expect("json");
        if let Some(types) = short["layer_types"].as_array_mut() {
            types.truncate(17);
        }
        let e = ModelConfig::from_json(&short.to_string())
            .expect_err("short layer_types")
            .to_string();
        assert!(e.contains("layer_types"), "{e}");
        let yarn = G270M_V5.replace(
            r#"{"rope_theta": 1000000.0, "rope_type": "default"}"#,
            r#"{"rope_theta": 1000000.0, "rope_type": "yarn", "factor": 8.0}"#,
        );
        let e = ModelConfig::from_json(&yarn).expect_err("yarn").to_string();
        assert!(
            e.contains("rope_parameters.full_attention.rope_type"),
            "{e}"
        );
        let exact_gelu = G270M_V5.replace("gelu_pytorch_tanh", "gelu");
        let e = ModelConfig::from_json(&exact_gelu)
            .expect_err("erf gelu")
            .to_string();
        assert!(e.contains("gelu"), "{e}");
    }

    #[test]
    fn fresh_configs_read_back() {
        let c = ModelConfig::new(Architecture::Gemma3, 256, 64, 6, 4, 1, 172, 512);
        let back = ModelConfig::from_json(&c.to_json().expect("json")).expect("valid");
        assert_eq!(back.architecture().expect("arch"), Architecture::Gemma3);
        assert_eq!(query_pre_attn_scalar(&back).expect("scalar"), 16.0);
        assert_eq!(layer_kinds(&back).expect("kinds")[5], LayerKind::Full);
    }
}
