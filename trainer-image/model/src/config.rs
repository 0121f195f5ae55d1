//! `ModelConfig`: a Hugging Face `config.json` of a Llama-family decoder (Llama, Qwen2,
//! Qwen3, Mistral, Gemma, Gemma 3), read as it is written by `save_pretrained`, with the defaults
//! transformers applies to missing fields. Gemma 3's own fields are read in [`gemma3`].

use std::path::Path;

use llamaduo::api::Architecture;
use serde::{Deserialize, Serialize};

pub mod gemma3;

/// Why a config.json cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON is malformed or misses a required field.
    #[error("invalid config.json{}: {source}", path.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Parse {
        /// The file, when read from one.
        path: Option<String>,
        /// The serde error (names the field).
        source: serde_json::Error,
    },
    /// `architectures` / `model_type` names a model family this crate does not implement.
    #[error(
        "unsupported architecture {found:?}: supported are {}",
        Architecture::supported_list()
    )]
    UnknownArchitecture {
        /// What the config says.
        found: String,
    },
    /// The sizes do not fit together.
    #[error("invalid config.json: {0}")]
    Invalid(String),
}

/// One token id or several (`eos_token_id` is a list in Llama 3 configs). Read through
/// [`token_ids_or_none`], which takes `null` and negative ids (`"pad_token_id": -1`, written
/// by some exporters for "no padding token") as no id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

/// Deserializes an optional token-id field leniently: `null`, a negative id and a list with
/// no valid id are all "none"; negative entries of a list are dropped. transformers accepts
/// these (it only compares ids), so a config it loads must load here too.
pub fn token_ids_or_none<'de, D>(deserializer: D) -> Result<Option<TokenIds>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(i64),
        Many(Vec<Option<i64>>),
    }
    let id = |i: i64| u32::try_from(i).ok();
    Ok(match Option::<Raw>::deserialize(deserializer)? {
        None => None,
        Some(Raw::One(i)) => id(i).map(TokenIds::One),
        Some(Raw::Many(v)) => {
            let ids: Vec<u32> = v.into_iter().flatten().filter_map(id).collect();
            (!ids.is_empty()).then_some(TokenIds::Many(ids))
        }
    })
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// A Hugging Face `config.json` of a Llama-family causal LM. Unknown fields are kept in
/// `extra` so that writing the config back loses nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Class names, e.g. `["LlamaForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `llama`, `qwen2`, `qwen3`, `mistral`, `gemma` or `gemma3_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); missing means `num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; missing means 256 for Gemma and Gemma 3 and 128 for Qwen3
    /// (transformers' defaults) and `hidden_size / num_attention_heads` for the other families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base as transformers 4 writes it; transformers 5 writes
    /// `rope_parameters.rope_theta` instead. Read both through [`ModelConfig::rope`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE scaling as transformers 4 writes it (`{"rope_type": "llama3", "factor": ...}`);
    /// see [`ModelConfig::rope`] for the types supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// RoPE base and scaling as transformers 5 writes them
    /// (`{"rope_theta": 500000.0, "rope_type": "llama3", "factor": ...}`); wins over
    /// `rope_theta` / `rope_scaling`. Kept as JSON so writing the config back preserves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether lm_head shares the embedding matrix; missing means false (true for Gemma and
    /// Gemma 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// MLP activation (`silu`, `gelu_pytorch_tanh`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Gemma's name for the MLP activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Biases on q/k/v/o (Llama option; Qwen2 always has q/k/v biases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Biases on gate/up/down (Llama option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Sliding-window attention span (Mistral, Qwen2, Gemma 3's sliding layers); see
    /// `models::mistral`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    #[serde(
        default,
        deserialize_with = "token_ids_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token(s).
    #[serde(
        default,
        deserialize_with = "token_ids_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(
        default,
        deserialize_with = "token_ids_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub pad_token_id: Option<TokenIds>,
    /// dtype of the stored weights as transformers 4 names the field (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// dtype of the stored weights as transformers 5 names the field (informational); see
    /// [`ModelConfig::set_weights_dtype`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Every other field, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
/// The RoPE base when the config names none: 10000 in LlamaConfig, Qwen2Config,
/// MistralConfig and GemmaConfig alike.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// Gemma's per-head width when config.json omits `head_dim` (GemmaConfig's and
/// Gemma3TextConfig's default).
pub const GEMMA_DEFAULT_HEAD_DIM: usize = 256;

/// How RoPE frequencies are derived from the base ones (transformers' `rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: plain RoPE.
    None,
    /// `linear`: every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3` (Llama 3.1 / 3.2): low frequencies divided by `factor`, high ones kept, and a
    /// smooth blend between, as transformers' `_compute_llama3_parameters`.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the base model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// RoPE settings resolved from `rope_parameters`, `rope_theta` and `rope_scaling`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// The base.
    pub theta: f64,
    /// The frequency scaling.
    pub scaling: RopeScaling,
}

impl Rope {
    /// The inverse frequencies of the `head_dim / 2` rotated pairs, scaled.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / self.theta.powf(2.0 * i as f64 / head_dim as f64);
                match self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings: old,
                    } => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < old / high_freq_factor {
                            f
                        } else if wavelen > old / low_freq_factor {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

/// Reads the scaling of one RoPE object (`field` is its name in config.json, for errors).
fn rope_scaling_of(
    field: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<RopeScaling, ConfigError> {
    // transformers 4.3x wrote `type`; later versions write `rope_type`.
    let (key, kind) = match (obj.get("rope_type"), obj.get("type")) {
        (Some(v), _) => ("rope_type", v),
        (None, Some(v)) => ("type", v),
        (None, None) => return Ok(RopeScaling::None),
    };
    let kind = kind.as_str().ok_or_else(|| {
        ConfigError::Invalid(format!("{field}.{key} must be a string, got {kind}"))
    })?;
    let num = |name: &str| -> Result<f64, ConfigError> {
        match obj.get(name).and_then(serde_json::Value::as_f64) {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(ConfigError::Invalid(format!(
                "{field}.{name} must be a positive number for {key} {kind:?}, got {}",
                obj.get(name)
                    .map_or("nothing".to_string(), |v| v.to_string())
            ))),
        }
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let (low_freq_factor, high_freq_factor) =
                (num("low_freq_factor")?, num("high_freq_factor")?);
            // The blend divides by their difference.
            if high_freq_factor <= low_freq_factor {
                return Err(ConfigError::Invalid(format!(
                    "{field}.high_freq_factor ({high_freq_factor}) must be greater than {field}.low_freq_factor ({low_freq_factor})"
                )));
            }
            Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            })
        }
        other => Err(ConfigError::Invalid(format!(
            "{field}.{key} {other:?} is not supported (supported: default, linear, llama3); \
             its frequencies would be silently wrong, so use a model without it"
        ))),
    }
}
fn default_max_pos() -> usize {
    2048
}

impl ModelConfig {
    /// Parses and validates config.json text.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let cfg: Self = serde_json::from_str(json)
            .map_err(|source| ConfigError::Parse { path: None, source })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a config.json file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: Some(path.display().to_string()),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A fresh config of the given family and sizes (for from-scratch models), with the
    /// `architectures` and `model_type` fields transformers expects.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arch: Architecture,
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        intermediate_size: usize,
        max_position_embeddings: usize,
    ) -> Self {
        let (class, model_type) = (arch.hf_class(), arch.hf_model_type());
        let gemma = matches!(arch, Architecture::Gemma | Architecture::Gemma3);
        let act = if gemma { "gelu_pytorch_tanh" } else { "silu" };
        let mut cfg = Self {
            architectures: vec![class.to_string()],
            model_type: Some(model_type.to_string()),
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: Some(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: 1e-5,
            rope_theta: Some(DEFAULT_ROPE_THETA),
            rope_scaling: None,
            rope_parameters: None,
            vocab_size,
            max_position_embeddings,
            tie_word_embeddings: Some(gemma),
            hidden_act: Some(act.to_string()),
            hidden_activation: gemma.then(|| act.to_string()),
            attention_bias: Some(false),
            mlp_bias: None,
            sliding_window: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            torch_dtype: Some("float32".to_string()),
            dtype: None,
            extra: serde_json::Map::new(),
        };
        if arch == Architecture::Gemma3 {
            gemma3::fresh_fields(&mut cfg);
        }
        cfg
    }

    /// The model family, from `architectures[0]` or else `model_type`.
    pub fn architecture(&self) -> Result<Architecture, ConfigError> {
        Architecture::from_hf(
            self.architectures.first().map(String::as_str),
            self.model_type.as_deref(),
        )
        .map_err(|found| ConfigError::UnknownArchitecture { found })
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        match self.head_dim {
            Some(d) => d,
            None if matches!(
                self.architecture(),
                Ok(Architecture::Gemma | Architecture::Gemma3)
            ) =>
            {
                GEMMA_DEFAULT_HEAD_DIM
            }
            None if matches!(self.architecture(), Ok(Architecture::Qwen3)) => {
                crate::models::qwen3::DEFAULT_HEAD_DIM
            }
            None => self.hidden_size / self.num_attention_heads.max(1),
        }
    }

    /// The RoPE base and scaling. `rope_parameters` (transformers 5) wins; else
    /// `rope_theta` and `rope_scaling` (transformers 4); else the family default base.
    /// A scaling this crate does not implement is an error naming the field: ignoring it
    /// would give a pretrained model wrong positions without any sign. For Gemma 3, the RoPE
    /// of its global layers (see [`Self::layer_ropes`] for every layer's).
    pub fn rope(&self) -> Result<Rope, ConfigError> {
        if matches!(self.architecture(), Ok(Architecture::Gemma3)) {
            return Ok(gemma3::ropes(self)?.global);
        }
        let bad = |m: String| ConfigError::Invalid(m);
        let params = match &self.rope_parameters {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(bad(format!(
                    "rope_parameters must be an object like {{\"rope_type\": \"default\", \"rope_theta\": 10000.0}}, got {other}"
                )));
            }
        };
        if let Some(p) = params
            && !["rope_type", "type", "rope_theta"]
                .iter()
                .any(|k| p.contains_key(*k))
            && p.values().any(serde_json::Value::is_object)
        {
            return Err(bad(
                "rope_parameters holds one entry per layer type, which only other architectures use; it is not supported"
                    .into(),
            ));
        }
        let theta = match params.and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| {
                bad(format!(
                    "rope_parameters.rope_theta must be a number, got {v}"
                ))
            })?,
            None => self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
        };
        if !(theta.is_finite() && theta > 0.0) {
            return Err(bad(format!(
                "the RoPE base (rope_theta) must be positive, got {theta}"
            )));
        }
        let from_params = match params {
            Some(p) => rope_scaling_of("rope_parameters", p)?,
            None => RopeScaling::None,
        };
        let from_scaling = match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => RopeScaling::None,
            Some(serde_json::Value::Object(m)) => rope_scaling_of("rope_scaling", m)?,
            Some(other) => {
                return Err(bad(format!(
                    "rope_scaling must be null or an object with rope_type, got {other}"
                )));
            }
        };
        let scaling = match (from_params, from_scaling) {
            (RopeScaling::None, s) | (s, RopeScaling::None) => s,
            (a, b) if a == b => a,
            (a, b) => {
                return Err(bad(format!(
                    "rope_parameters ({a:?}) and rope_scaling ({b:?}) disagree; keep one of them"
                )));
            }
        };
        Ok(Rope { theta, scaling })
    }

    /// The RoPE of each layer: [`Self::rope`] for all of them, except in Gemma 3, whose
    /// sliding-window layers have their own base.
    pub fn layer_ropes(&self) -> Result<Vec<Rope>, ConfigError> {
        if matches!(self.architecture(), Ok(Architecture::Gemma3)) {
            return gemma3::layer_ropes(self);
        }
        Ok(vec![self.rope()?; self.num_hidden_layers])
    }

    /// The RoPE base (see [`Self::rope`]); the family default when the config is invalid.
    pub fn rope_theta(&self) -> f64 {
        self.rope().map_or(DEFAULT_ROPE_THETA, |r| r.theta)
    }

    /// Records the dtype of the weights written next to this config, in whichever field
    /// names the source used (`torch_dtype` in transformers 4, `dtype` in 5; `torch_dtype`
    /// when neither), so no field is left saying another dtype than the tensors have.
    pub fn set_weights_dtype(&mut self, dtype: &str) {
        if self.dtype.is_some() {
            self.dtype = Some(dtype.to_string());
        }
        if self.torch_dtype.is_some() || self.dtype.is_none() {
            self.torch_dtype = Some(dtype.to_string());
        }
    }

    /// Whether lm_head is the embedding matrix.
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(matches!(
            self.architecture(),
            Ok(Architecture::Gemma | Architecture::Gemma3)
        ))
    }

    /// End-of-sequence ids (may be empty).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// The MLP activation's name, normalised (`hidden_activation` wins for Gemma, as in
    /// transformers; without either field the family default: GELU-tanh for Gemma and
    /// Gemma 3, SiLU otherwise).
    pub fn activation(&self) -> &str {
        let default = match self.architecture() {
            Ok(Architecture::Gemma | Architecture::Gemma3) => "gelu_pytorch_tanh",
            _ => "silu",
        };
        self.hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            .unwrap_or(default)
    }

    /// Checks the architecture and that the sizes fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let arch = self.architecture()?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return bad("hidden_size, num_hidden_layers and vocab_size must be > 0".into());
        }
        if self.num_attention_heads == 0 || self.num_kv_heads() == 0 {
            return bad("num_attention_heads and num_key_value_heads must be > 0".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim.is_none()
            && !matches!(
                arch,
                Architecture::Gemma | Architecture::Gemma3 | Architecture::Qwen3
            )
            && !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({}) or head_dim must be set",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        self.rope()?;
        if arch == Architecture::Gemma3 {
            gemma3::validate(self)?;
        }
        if matches!(arch, Architecture::Qwen2 | Architecture::Qwen3)
            && let Some(types) = self.extra.get("layer_types")
        {
            // Qwen2's and Qwen3's per-layer attention kinds decide which layers get the sliding window.
            let ok = types.as_array().is_some_and(|a| {
                a.len() == self.num_hidden_layers
                    && a.iter()
                        .all(|t| matches!(t.as_str(), Some("full_attention" | "sliding_attention")))
            });
            if !ok {
                return bad(format!(
                    "layer_types must list \"full_attention\" or \"sliding_attention\" for each of the {} layers, got {types}",
                    self.num_hidden_layers
                ));
            }
        }
        let act = self.activation();
        let ok = match arch {
            Architecture::Gemma => matches!(act, "gelu_pytorch_tanh" | "gelu" | "gelu_new"),
            // Gemma3MLP applies the named activation as it is: "gelu" would be the exact
            // (erf) GELU, which the decoder does not implement.
            Architecture::Gemma3 => matches!(act, "gelu_pytorch_tanh" | "gelu_new"),
            _ => matches!(act, "silu" | "swish"),
        };
        if !ok {
            return bad(format!("hidden_act {act:?} is not supported for {arch:?}"));
        }
        Ok(())
    }

    /// The config as pretty JSON (for writing config.json next to full weights).
    pub fn to_json(&self) -> Result<String, ConfigError> {
        serde_json::to_string_pretty(self)
            .map_err(|source| ConfigError::Parse { path: None, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":1,"eos_token_id":2,
      "hidden_act":"silu","hidden_size":576,"initializer_range":0.041,"intermediate_size":1536,
      "max_position_embeddings":8192,"model_type":"llama","num_attention_heads":9,
      "num_hidden_layers":30,"num_key_value_heads":3,"rms_norm_eps":1e-05,"rope_theta":100000,
      "tie_word_embeddings":true,"torch_dtype":"bfloat16","vocab_size":49152}"#;

    #[test]
    fn reads_smollm2_config() {
        let c = ModelConfig::from_json(SMOL).expect("parses");
        assert_eq!(c.architecture().expect("arch"), Architecture::Llama);
        assert_eq!((c.head_dim(), c.num_kv_heads()), (64, 3));
        assert!(c.tied_embeddings());
        assert_eq!(c.eos_token_ids(), vec![2]);
        assert_eq!(c.extra["initializer_range"], serde_json::json!(0.041));
        let back = ModelConfig::from_json(&c.to_json().expect("json")).expect("round trip");
        assert_eq!(back, c);
    }

    #[test]
    fn gemma_defaults_and_eos_list() {
        let j = r#"{"architectures":["GemmaForCausalLM"],"hidden_size":64,"intermediate_size":128,
          "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"head_dim":32,
          "vocab_size":300,"hidden_activation":"gelu_pytorch_tanh","eos_token_id":[1,107]}"#;
        let c = ModelConfig::from_json(j).expect("parses");
        assert_eq!(c.architecture().expect("arch"), Architecture::Gemma);
        assert!(c.tied_embeddings());
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.eos_token_ids(), vec![1, 107]);
    }

    #[test]
    fn unknown_architecture_names_the_supported_ones() {
        let j = SMOL.replace("LlamaForCausalLM", "GPT2LMHeadModel");
        let e = ModelConfig::from_json(&j).expect_err("unknown");
        let msg = e.to_string();
        assert!(
            msg.contains("GPT2LMHeadModel") && msg.contains("Qwen2ForCausalLM"),
            "{msg}"
        );
    }

    #[test]
    fn missing_and_inconsistent_fields_are_named() {
        let e = ModelConfig::from_json(r#"{"architectures":["LlamaForCausalLM"]}"#)
            .expect_err("missing");
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let j = SMOL.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4");
        let e = ModelConfig::from_json(&j).expect_err("gqa");
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
    }

    #[test]
    fn new_configs_validate_for_every_family() {
        for arch in Architecture::ALL {
            let c = ModelConfig::new(arch, 256, 64, 2, 4, 2, 172, 512);
            c.validate().expect("valid");
            assert_eq!(c.architecture().expect("arch"), arch);
        }
    }

    /// Llama-3.2-1B-Instruct's config.json as transformers 4 writes it (rope_scaling) and the
    /// same settings as transformers 5 writes them (rope_parameters, `dtype`).
    const LLAMA32_V4: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":2048,
      "intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
      "num_key_value_heads":8,"head_dim":64,"vocab_size":128256,"max_position_embeddings":131072,
      "rms_norm_eps":1e-05,"rope_theta":500000.0,"mlp_bias":false,"attention_bias":false,
      "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"},
      "tie_word_embeddings":true,"torch_dtype":"bfloat16","bos_token_id":128000,
      "eos_token_id":[128001,128008,128009]}"#;
    const LLAMA32_V5: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":2048,
      "intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
      "num_key_value_heads":8,"head_dim":64,"vocab_size":128256,"max_position_embeddings":131072,
      "rms_norm_eps":1e-05,"mlp_bias":false,"attention_bias":false,
      "rope_parameters":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
        "original_max_position_embeddings":8192,"rope_theta":500000.0,"rope_type":"llama3"},
      "tie_word_embeddings":true,"dtype":"bfloat16","bos_token_id":128000,
      "eos_token_id":[128001,128008,128009],"pad_token_id":null}"#;

    #[test]
    fn rope_parameters_theta_is_read() {
        // transformers 5 puts the base only inside rope_parameters.
        let j = SMOL.replace(
            "\"rope_theta\":100000",
            "\"rope_parameters\":{\"rope_theta\":100000.0,\"rope_type\":\"default\"}",
        );
        let c = ModelConfig::from_json(&j).expect("parses");
        assert_eq!(c.rope_theta(), 100_000.0);
        let rope = c.rope().expect("rope");
        assert_eq!(rope.scaling, RopeScaling::None);
        // Same frequencies as the transformers-4 spelling of the same config.
        let v4 = ModelConfig::from_json(SMOL).expect("parses");
        assert_eq!(rope, v4.rope().expect("rope"));
        // rope_parameters wins over a top-level rope_theta; nothing falls back to 10000.
        let both = j.replace(
            "{\"architectures\"",
            "{\"rope_theta\":10000.0,\"architectures\"",
        );
        assert_eq!(
            ModelConfig::from_json(&both).expect("parses").rope_theta(),
            100_000.0
        );
        // Absent everywhere: the family default.
        let none = SMOL.replace("\"rope_theta\":100000,", "");
        assert_eq!(
            ModelConfig::from_json(&none).expect("parses").rope_theta(),
            DEFAULT_ROPE_THETA
        );
        // Written back unchanged: no top-level rope_theta appears, rope_parameters stays.
        let back: serde_json::Value =
            serde_json::from_str(&c.to_json().expect("json")).expect("json");
        assert!(back.get("rope_theta").is_none(), "{back}");
        assert_eq!(
            back["rope_parameters"]["rope_theta"],
            serde_json::json!(100000.0)
        );
    }

    #[test]
    fn llama3_rope_scaling_matches_transformers() {
        let v4 = ModelConfig::from_json(LLAMA32_V4).expect("v4 parses");
        let v5 = ModelConfig::from_json(LLAMA32_V5).expect("v5 parses");
        let rope = v4.rope().expect("rope");
        assert_eq!(rope, v5.rope().expect("rope"));
        assert_eq!(rope.theta, 500_000.0);
        let f = rope.inv_freq(64);
        let plain = Rope {
            theta: 500_000.0,
            scaling: RopeScaling::None,
        }
        .inv_freq(64);
        assert_eq!(f.len(), 32);
        // Wavelengths under 8192/4 keep their frequency, those over 8192/1 are divided by
        // 32, the ones between are blended (values of transformers'
        // _compute_llama3_parameters for this config).
        assert_eq!(f[..15], plain[..15]);
        for i in 18..32 {
            assert!((f[i] - plain[i] / 32.0).abs() <= 1e-12 * plain[i], "{i}");
        }
        for (i, want) in [
            (15, 0.001290547928209264),
            (16, 0.00042955679655936815),
            (17, 9.70828780262767e-05),
        ] {
            assert!((f[i] - want).abs() < 1e-12, "{i}: {} vs {want}", f[i]);
        }
    }

    #[test]
    fn linear_rope_scaling_divides_every_frequency() {
        let j = SMOL.replace(
            "\"rope_theta\":100000",
            "\"rope_theta\":100000,\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}",
        );
        let c = ModelConfig::from_json(&j).expect("parses");
        let plain = ModelConfig::from_json(SMOL).expect("parses");
        let (a, b) = (
            c.rope().expect("rope").inv_freq(64),
            plain.rope().expect("rope").inv_freq(64),
        );
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(*x, y / 4.0);
        }
    }

    #[test]
    fn unsupported_rope_types_are_rejected_by_field() {
        let yarn = SMOL.replace(
            "\"rope_theta\":100000",
            "\"rope_theta\":100000,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}",
        );
        let e = ModelConfig::from_json(&yarn).expect_err("yarn").to_string();
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("\"yarn\" is not supported"),
            "{e}"
        );
        let dynamic = SMOL.replace(
            "\"rope_theta\":100000",
            "\"rope_parameters\":{\"rope_type\":\"dynamic\",\"rope_theta\":100000.0,\"factor\":2.0}",
        );
        let e = ModelConfig::from_json(&dynamic)
            .expect_err("dynamic")
            .to_string();
        assert!(
            e.contains("rope_parameters.rope_type") && e.contains("not supported"),
            "{e}"
        );
        let old_style = SMOL.replace(
            "\"rope_theta\":100000",
            "\"rope_theta\":100000,\"rope_scaling\":{\"type\":\"longrope\"}",
        );
        let e = ModelConfig::from_json(&old_style)
            .expect_err("longrope")
            .to_string();
        assert!(e.contains("rope_scaling.type"), "{e}");
        let no_factor = LLAMA32_V5.replace("\"factor\":32.0,", "");
        let e = ModelConfig::from_json(&no_factor)
            .expect_err("no factor")
            .to_string();
        assert!(e.contains("rope_parameters.factor"), "{e}");
    }

    #[test]
    fn null_and_negative_token_ids_are_none() {
        let j = SMOL.replace(
            "\"eos_token_id\":2",
            "\"eos_token_id\":2,\"pad_token_id\":-1",
        );
        let c = ModelConfig::from_json(&j).expect("pad -1 parses");
        assert_eq!(c.pad_token_id, None);
        assert_eq!(c.eos_token_ids(), vec![2]);
        let j = SMOL.replace(
            "\"eos_token_id\":2",
            "\"eos_token_id\":[2,-1],\"pad_token_id\":null",
        );
        let c = ModelConfig::from_json(&j).expect("null parses");
        assert_eq!(c.pad_token_id, None);
        assert_eq!(c.eos_token_ids(), vec![2]);
        let c = ModelConfig::from_json(LLAMA32_V5).expect("parses");
        assert_eq!(c.eos_token_ids(), vec![128001, 128008, 128009]);
    }

    #[test]
    fn gemma_head_dim_defaults_to_256() {
        // Gemma-2B: hidden 2048, 8 heads, head_dim 256 (not 2048 / 8).
        let j = r#"{"architectures":["GemmaForCausalLM"],"hidden_size":2048,"intermediate_size":16384,
          "num_hidden_layers":18,"num_attention_heads":8,"num_key_value_heads":1,
          "vocab_size":256000,"hidden_activation":"gelu_pytorch_tanh"}"#;
        let c = ModelConfig::from_json(j).expect("parses");
        assert_eq!(c.head_dim(), GEMMA_DEFAULT_HEAD_DIM);
        // Other families keep hidden / heads.
        assert_eq!(ModelConfig::from_json(SMOL).expect("parses").head_dim(), 64);
    }

    #[test]
    fn weights_dtype_is_set_in_the_fields_the_source_used() {
        let mut v5 = ModelConfig::from_json(LLAMA32_V5).expect("parses");
        v5.set_weights_dtype("float32");
        let back: serde_json::Value =
            serde_json::from_str(&v5.to_json().expect("json")).expect("json");
        assert_eq!(back["dtype"], "float32");
        assert!(back.get("torch_dtype").is_none(), "{back}");
        let mut v4 = ModelConfig::from_json(LLAMA32_V4).expect("parses");
        v4.set_weights_dtype("float32");
        assert_eq!(v4.torch_dtype.as_deref(), Some("float32"));
        assert_eq!(v4.dtype, None);
        // Both present: both agree afterwards.
        v4.dtype = Some("bfloat16".into());
        v4.set_weights_dtype("float32");
        assert_eq!(
            (v4.torch_dtype.as_deref(), v4.dtype.as_deref()),
            (Some("float32"), Some("float32"))
        );
    }

    /// Qwen3-0.6B's config.json.
    const QWEN3_06B: &str = r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,
      "attention_dropout":0.0,"bos_token_id":151643,"eos_token_id":151645,"head_dim":128,
      "hidden_act":"silu","hidden_size":1024,"initializer_range":0.02,"intermediate_size":3072,
      "max_position_embeddings":40960,"max_window_layers":28,"model_type":"qwen3",
      "num_attention_heads":16,"num_hidden_layers":28,"num_key_value_heads":8,
      "rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
      "tie_word_embeddings":true,"torch_dtype":"bfloat16","use_cache":true,
      "use_sliding_window":false,"vocab_size":151936}"#;

    #[test]
    fn reads_qwen3_config_with_head_norms_and_wide_heads() {
        let c = ModelConfig::from_json(QWEN3_06B).expect("parses");
        assert_eq!(c.architecture().expect("arch"), Architecture::Qwen3);
        // 16 heads of 128 on a 1024-wide stream: head_dim is not hidden / heads.
        assert_eq!((c.head_dim(), c.num_kv_heads()), (128, 8));
        assert!(c.tied_embeddings());
        assert_eq!(c.rope_theta(), 1_000_000.0);
        let f = crate::models::Flavor::of(&c).expect("flavor");
        assert!(f.qk_norm && !f.qkv_bias && !f.o_bias && !f.gemma_norm);
        assert_eq!(f.any_window(), None, "use_sliding_window is false");
        // Without head_dim, Qwen3Config's default 128 (not 1024 / 16 = 64).
        let no_hd = QWEN3_06B.replace("\"head_dim\":128,", "");
        assert_eq!(
            ModelConfig::from_json(&no_hd).expect("parses").head_dim(),
            128
        );
        // model_type alone names the family too.
        let by_type = QWEN3_06B.replace("\"architectures\":[\"Qwen3ForCausalLM\"],", "");
        assert_eq!(
            ModelConfig::from_json(&by_type)
                .expect("parses")
                .architecture()
                .expect("arch"),
            Architecture::Qwen3
        );
        // Sliding windows follow Qwen2's rule: from max_window_layers on, when enabled.
        let windowed = QWEN3_06B
            .replace(
                "\"use_sliding_window\":false",
                "\"use_sliding_window\":true",
            )
            .replace("\"sliding_window\":null", "\"sliding_window\":4096")
            .replace("\"max_window_layers\":28", "\"max_window_layers\":20");
        let f = crate::models::Flavor::of(&ModelConfig::from_json(&windowed).expect("parses"))
            .expect("flavor");
        assert_eq!((f.window(19), f.window(20)), (None, Some(4096)));
    }

    #[test]
    fn qwen2_layer_types_must_cover_every_layer() {
        let j = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
          "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":300,
          "layer_types":["full_attention"]}"#;
        let e = ModelConfig::from_json(j)
            .expect_err("short list")
            .to_string();
        assert!(e.contains("layer_types"), "{e}");
    }
}
