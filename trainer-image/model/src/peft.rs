//! Output in the layouts Hugging Face PEFT, transformers and vLLM load unchanged:
//! - LoRA: `adapter_config.json` + `adapter_model.safetensors` with PEFT's tensor names
//!   (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, A: (r, in),
//!   B: (out, r)); and reading such an adapter back.
//! - Full fine-tuning: `model.safetensors` + `config.json` (the caller copies the tokenizer
//!   files).
//! - Merged: the base with every adapter folded in (W + alpha/r · B A), as a full model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::lora::{LoraConfig, LoraError};
use crate::models::CausalLm;

/// File name of the adapter weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// File name of the adapter config.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of full weights.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// Prefix PEFT puts before the model's own tensor names.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Why an output could not be written or an adapter not read.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// File system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Malformed adapter_config.json.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Bad LoRA settings in the adapter.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// Tensor or safetensors error.
    #[error("{0}")]
    Tensor(String),
}

impl From<candle_core::Error> for PeftError {
    fn from(e: candle_core::Error) -> Self {
        PeftError::Tensor(e.to_string())
    }
}

/// adapter_config.json as PEFT writes it for a LoRA adapter of a causal LM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Always `CAUSAL_LM`.
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model (hub id or path).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// alpha.
    pub lora_alpha: f64,
    /// Dropout.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Target module names (a list; a regex string is not supported when reading).
    pub target_modules: serde_json::Value,
    /// `none` (no bias training).
    #[serde(default = "none")]
    pub bias: String,
    /// false for Linear layers.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// rsLoRA scaling (alpha/sqrt(r)); not supported when reading.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA; not supported when reading.
    #[serde(default)]
    pub use_dora: bool,
    /// Every other field, kept.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// The config for a LoRA adapter of `base`.
    pub fn for_lora(cfg: &LoraConfig, base: &str) -> Self {
        let mut extra = serde_json::Map::new();
        for (k, v) in [
            ("inference_mode", serde_json::json!(true)),
            ("init_lora_weights", serde_json::json!(true)),
            ("modules_to_save", serde_json::Value::Null),
            ("layers_to_transform", serde_json::Value::Null),
            ("layers_pattern", serde_json::Value::Null),
            ("rank_pattern", serde_json::json!({})),
            ("alpha_pattern", serde_json::json!({})),
            ("revision", serde_json::Value::Null),
        ] {
            extra.insert(k.into(), v);
        }
        let mut targets = crate::lora::expand_targets(&cfg.target_modules);
        targets.sort();
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base.into()),
            r: cfg.rank,
            lora_alpha: cfg.alpha,
            lora_dropout: cfg.dropout,
            target_modules: serde_json::json!(targets),
            bias: none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            extra,
        }
    }

    /// The LoRA settings, or an error for features this crate does not implement.
    pub fn lora_config(&self, path: &str) -> Result<LoraConfig, PeftError> {
        let bad = |m: String| PeftError::Config {
            path: path.to_string(),
            message: m,
        };
        if self.peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type {} is not supported (only LORA)",
                self.peft_type
            )));
        }
        if self.use_rslora || self.use_dora || self.fan_in_fan_out || self.bias != "none" {
            return Err(bad(
                "use_rslora, use_dora, fan_in_fan_out and bias other than \"none\" are not supported"
                    .into(),
            ));
        }
        // PEFT accepts "all-linear" as a plain string; any other string is a regex.
        let targets: Vec<String> = match &self.target_modules {
            serde_json::Value::String(s) if s == llamaduo::api::ALL_LINEAR => vec![s.clone()],
            other => serde_json::from_value(other.clone()).map_err(|_| {
                bad("target_modules must be a list of module names or \"all-linear\" (regex strings are not supported)".into())
            })?,
        };
        let cfg = LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: targets,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> PeftError {
    move |source| PeftError::Io { context, source }
}

/// Writes tensors as safetensors with transformers' `{"format": "pt"}` metadata.
pub fn write_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), PeftError> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(cpu, Some(meta), path)
        .map_err(|e| PeftError::Tensor(format!("writing {}: {e}", path.display())))
}

/// Writes the model's LoRA adapters in PEFT layout into `dir` (f32 tensors).
pub fn save_adapter(
    model: &CausalLm,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<(), PeftError> {
    if model.adapters().is_empty() {
        return Err(PeftError::Tensor(
            "the model has no LoRA adapters to save".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut tensors = BTreeMap::new();
    for (prefix, a) in model.adapters() {
        tensors.insert(
            format!("{PEFT_PREFIX}{prefix}.lora_A.weight"),
            a.a.as_tensor().to_dtype(DType::F32)?,
        );
        tensors.insert(
            format!("{PEFT_PREFIX}{prefix}.lora_B.weight"),
            a.b.as_tensor().to_dtype(DType::F32)?,
        );
    }
    write_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
    let json = serde_json::to_string_pretty(&AdapterConfig::for_lora(cfg, base_model))
        .map_err(|e| PeftError::Tensor(e.to_string()))?;
    std::fs::write(dir.join(ADAPTER_CONFIG), json).map_err(io(format!(
        "writing {}",
        dir.join(ADAPTER_CONFIG).display()
    )))
}

/// Reads adapter_config.json of a PEFT adapter directory.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, PeftError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let cfg: AdapterConfig = serde_json::from_str(&text).map_err(|e| PeftError::Config {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    cfg.lora_config(&path.display().to_string())
}

/// Loads adapter_model.safetensors of `dir` into a model built with
/// `Trainable::Lora(read_adapter_config(dir)?)`. Every adapter of the model must be in the
/// file with the right shape, and the file must hold no adapter the model lacks.
pub fn load_adapter_weights(model: &CausalLm, dir: &Path) -> Result<(), PeftError> {
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.is_file() {
        return Err(PeftError::Config {
            path: path.display().to_string(),
            message: "missing".into(),
        });
    }
    let tensors = candle_core::safetensors::load(&path, model.device())
        .map_err(|e| PeftError::Tensor(format!("{}: {e}", path.display())))?;
    let mut used = 0;
    for (prefix, a) in model.adapters() {
        for (suffix, var) in [("lora_A", &a.a), ("lora_B", &a.b)] {
            let name = format!("{PEFT_PREFIX}{prefix}.{suffix}.weight");
            let t = tensors.get(&name).ok_or_else(|| PeftError::Config {
                path: path.display().to_string(),
                message: format!("lacks tensor {name}"),
            })?;
            if t.shape() != var.shape() {
                return Err(PeftError::Config {
                    path: path.display().to_string(),
                    message: format!(
                        "tensor {name} has shape {:?}, expected {:?}",
                        t.shape().dims(),
                        var.shape().dims()
                    ),
                });
            }
            var.set(&t.to_dtype(DType::F32)?)?;
            used += 1;
        }
    }
    if used != tensors.len() {
        let extra: Vec<&String> = tensors
            .keys()
            .filter(|k| {
                !model
                    .adapters()
                    .iter()
                    .any(|(p, _)| k.starts_with(&format!("{PEFT_PREFIX}{p}.")))
            })
            .take(3)
            .collect();
        return Err(PeftError::Config {
            path: path.display().to_string(),
            message: format!(
                "holds tensors for modules the model has no adapter on, e.g. {extra:?}"
            ),
        });
    }
    Ok(())
}

/// All base weights by checkpoint name, optionally with the adapters folded in (f32).
pub fn named_weights(model: &CausalLm, merge: bool) -> Result<BTreeMap<String, Tensor>, PeftError> {
    let deltas: HashMap<String, Tensor> = if merge {
        model
            .adapters()
            .iter()
            .map(|(p, a)| Ok((format!("{p}.weight"), a.delta()?)))
            .collect::<candle_core::Result<_>>()?
    } else {
        HashMap::new()
    };
    let mut out = BTreeMap::new();
    for (name, w) in model.weights() {
        let mut t = w.tensor().to_dtype(DType::F32)?;
        if let Some(d) = deltas.get(name) {
            t = (t + d)?;
        }
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// Writes `model.safetensors` (f32) and `config.json` of the model into `dir`; with `merge`
/// the LoRA adapters are folded into the weights first (the merged export).
pub fn save_full(model: &CausalLm, dir: &Path, merge: bool) -> Result<(), PeftError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    write_safetensors(&named_weights(model, merge)?, &dir.join(MODEL_WEIGHTS))?;
    let mut cfg: ModelConfig = model.config().clone();
    // The tensors are written in f32 whatever the base stored; a stale `dtype` (transformers
    // 5's name) next to a corrected `torch_dtype` would make loaders cast to the wrong type.
    cfg.set_weights_dtype("float32");
    let json = cfg
        .to_json()
        .map_err(|e| PeftError::Tensor(e.to_string()))?;
    std::fs::write(dir.join("config.json"), json)
        .map_err(io(format!("writing {}", dir.join("config.json").display())))
}
