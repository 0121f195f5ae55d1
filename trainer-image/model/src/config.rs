//! `ModelConfig`: a Hugging Face `config.json` of a Llama-family decoder (Llama, Qwen2,
//! Mistral, Gemma), read as it is written by `save_pretrained`, with the defaults
//! transformers applies to missing fields.

use std::path::Path;

use llamaduo::api::Architecture;
use serde::{Deserialize, Serialize};

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
        "unsupported architecture {found:?}: supported are LlamaForCausalLM, Qwen2ForCausalLM, \
         MistralForCausalLM and GemmaForCausalLM (model_type llama, qwen2, mistral, gemma)"
    )]
    UnknownArchitecture {
        /// What the config says.
        found: String,
    },
    /// The sizes do not fit together.
    #[error("invalid config.json: {0}")]
    Invalid(String),
}

/// One token id or several (`eos_token_id` is a list in Llama 3 configs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
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
    /// `llama`, `qwen2`, `mistral` or `gemma`.
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
    /// Per-head width; missing means `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling; only `null` is supported (checked by [`ModelConfig::validate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether lm_head shares the embedding matrix; missing means false (true for Gemma).
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
    /// Sliding-window attention span (Mistral, Qwen2); see `models::mistral`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<TokenIds>,
    /// dtype of the stored weights (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Every other field, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
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
        let (class, model_type, act) = match arch {
            Architecture::Llama => ("LlamaForCausalLM", "llama", "silu"),
            Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2", "silu"),
            Architecture::Mistral => ("MistralForCausalLM", "mistral", "silu"),
            Architecture::Gemma => ("GemmaForCausalLM", "gemma", "gelu_pytorch_tanh"),
        };
        Self {
            architectures: vec![class.to_string()],
            model_type: Some(model_type.to_string()),
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: Some(hidden_size / num_attention_heads.max(1)),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            vocab_size,
            max_position_embeddings,
            tie_word_embeddings: Some(arch == Architecture::Gemma),
            hidden_act: Some(act.to_string()),
            hidden_activation: (arch == Architecture::Gemma).then(|| act.to_string()),
            attention_bias: Some(false),
            sliding_window: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            torch_dtype: Some("float32".to_string()),
            extra: serde_json::Map::new(),
        }
    }

    /// The model family, from `architectures[0]` or else `model_type`.
    pub fn architecture(&self) -> Result<Architecture, ConfigError> {
        if let Some(class) = self.architectures.first() {
            return match class.as_str() {
                "LlamaForCausalLM" => Ok(Architecture::Llama),
                "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
                "MistralForCausalLM" => Ok(Architecture::Mistral),
                "GemmaForCausalLM" => Ok(Architecture::Gemma),
                other => Err(ConfigError::UnknownArchitecture {
                    found: other.to_string(),
                }),
            };
        }
        match self.model_type.as_deref() {
            Some("llama") => Ok(Architecture::Llama),
            Some("qwen2") => Ok(Architecture::Qwen2),
            Some("mistral") => Ok(Architecture::Mistral),
            Some("gemma") => Ok(Architecture::Gemma),
            other => Err(ConfigError::UnknownArchitecture {
                found: other
                    .unwrap_or("<no architectures and no model_type>")
                    .to_string(),
            }),
        }
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether lm_head is the embedding matrix.
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings
            .unwrap_or(matches!(self.architecture(), Ok(Architecture::Gemma)))
    }

    /// End-of-sequence ids (may be empty).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// The MLP activation's name, normalised (`hidden_activation` wins for Gemma, as in
    /// transformers).
    pub fn activation(&self) -> &str {
        self.hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            .unwrap_or("silu")
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
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
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
        if let Some(s) = &self.rope_scaling
            && !s.is_null()
        {
            return bad(format!(
                "rope_scaling {s} is not supported (only unscaled RoPE); remove it or use a model without it"
            ));
        }
        let act = self.activation();
        let ok = match arch {
            Architecture::Gemma => matches!(act, "gelu_pytorch_tanh" | "gelu" | "gelu_new"),
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
        for arch in [
            Architecture::Llama,
            Architecture::Qwen2,
            Architecture::Mistral,
            Architecture::Gemma,
        ] {
            let c = ModelConfig::new(arch, 256, 64, 2, 4, 2, 172, 512);
            c.validate().expect("valid");
            assert_eq!(c.architecture().expect("arch"), arch);
        }
    }
}
