//! Output in the layouts Hugging Face PEFT, transformers and vLLM load unchanged:
//! - LoRA: `adapter_config.json` + `adapter_model.safetensors` with PEFT's tensor names
//!   (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, A: (r, in),
//!   B: (out, r)). Reading an adapter back (as a trainable LoRA, or merged into its base) is
//!   [`crate::adapter`]'s; its readers are re-exported here.
//! - Full fine-tuning: `model.safetensors` + `config.json` (the caller copies the tokenizer
//!   files).
//! - Merged: the base with every adapter folded in (W + alpha/r · B A), as a full model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use crate::adapter::{AdapterConfig, load_adapter_weights, read_adapter_config};
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
    /// The adapter in `dir` cannot be merged into its base: an unsupported feature, or
    /// tensors that do not fit.
    #[error("LoRA adapter {}: {message}", dir.display())]
    Adapter {
        /// The adapter directory.
        dir: PathBuf,
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
