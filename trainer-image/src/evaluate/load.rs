//! Loading the round's model for generation: full weights (a Hugging Face directory), or a
//! PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) on its base.
//!
//! An adapter is folded into the base weights on load (W + alpha/r · B·A, PEFT's formula, or
//! alpha/sqrt(r) with `use_rslora`): generation then runs at the speed of the plain model.
//! The base is `student.baseModel` when set; for `fromScratch` students it is the directory
//! the train stage names in the adapter's `base_model_name_or_path` (a URL, a key under the
//! migration's artifact root, or a local path).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use llamaduo::api::{EvaluateConfig, Precision, TrainingMethod};
use llamaduo_model::chat_template::ChatTemplate;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::device::{DeviceChoice, DeviceError, compute_dtype, device_name};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::models::{CausalLm, LoadOptions};
use llamaduo_model::tokenizer::TextTokenizer;
use llamaduo_store::{HfConfig, Resolver, Store};
use serde::Deserialize;
use serde_json::Value;

/// PEFT's adapter config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// Prefix PEFT puts before module names in adapter_model.safetensors.
const PEFT_PREFIX: &str = "base_model.model.";

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or the store failed.
    #[error("{0}")]
    Store(#[from] llamaduo_store::StoreError),
    /// The model directory is unusable.
    #[error("{0}")]
    HubDir(#[from] llamaduo_model::hub_dir::HubDirError),
    /// config.json is unusable.
    #[error("{0}")]
    Config(#[from] llamaduo_model::config::ConfigError),
    /// The adapter does not fit the base or its config is unsupported.
    #[error("LoRA adapter {path}: {message}")]
    Adapter {
        /// The adapter directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No base model can be found for the adapter.
    #[error("{0}")]
    NoBase(String),
    /// candle failed.
    #[error("cannot load the weights: {0}")]
    Candle(#[from] candle_core::Error),
    /// Converting a GGUF base failed.
    #[error("{0}")]
    Gguf(String),
    /// The device asked for (`LLAMADUO_DEVICE`) cannot be used.
    #[error("{0}")]
    Device(#[from] DeviceError),
}

/// The round's model, ready to generate.
pub struct LoadedModel {
    /// The decoder.
    pub model: CausalLm,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template (the spec's override, the model's own, else ChatML).
    pub template: ChatTemplate,
    /// Where the weights came from (for logs).
    pub source: String,
}

/// The device (`LLAMADUO_DEVICE`, see [`llamaduo_model::device`]) and compute dtype: bf16 on
/// a GPU and f32 on the CPU unless `training.precision` says otherwise.
pub fn device_and_dtype(precision: Precision) -> Result<(Device, DType), DeviceError> {
    let selected = DeviceChoice::from_env()?.select()?;
    let dtype = compute_dtype(precision, &selected.device);
    tracing::info!(device = %device_name(&selected.device), dtype = ?dtype, "generation device");
    Ok((selected.device, dtype))
}

pub use llamaduo_store::cache_dir;

/// The subset of PEFT's adapter_config.json that matters for inference.
#[derive(Deserialize, Debug)]
struct AdapterConfig {
    #[serde(default)]
    r: Option<f64>,
    #[serde(default)]
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    modules_to_save: Option<Value>,
}

/// Loads `round-{n}/model` of the migration in `store` for `config`.
pub async fn load_round_model(
    config: &EvaluateConfig,
    store: &Store,
) -> Result<LoadedModel, LoadError> {
    let resolver = Resolver::new(cache_dir(), HfConfig::from_env());
    let (device, dtype) = device_and_dtype(config.training.precision)?;
    let chat_override = config.student.chat_template.as_deref();
    if config.context.round == 0 {
        // Round 0: the base student as it is, before any training.
        let Some(url) = &config.student.base_model else {
            return Err(LoadError::NoBase(
                "round 0 evaluates the base student, but student.baseModel is unset (a fromScratch student has no weights before round 1)".into(),
            ));
        };
        let base = local_model_dir(resolver.resolve(url).await?)?;
        let loaded = tokio::task::spawn_blocking(move || load_full(&base, &device, dtype))
            .await
            .map_err(|e| LoadError::NoBase(format!("model loading task failed: {e}")))??;
        return finish(loaded, chat_override);
    }
    let key = llamaduo::api::ArtifactLayout::model(config.context.round);
    let model_dir = resolver.resolve_in(store, &key).await?;
    let is_adapter = model_dir.join(ADAPTER_CONFIG).exists();
    if config.training.method == TrainingMethod::Lora && !is_adapter {
        // A merged or full export is fine to evaluate; say so in the log.
        tracing::info!(dir = %model_dir.display(), "training.method is lora but round model has full weights; evaluating them");
    }
    if is_adapter {
        let base = resolve_base(config, store, &resolver, &model_dir).await?;
        let tok_dir = if model_dir.join("tokenizer.json").exists() {
            model_dir.clone()
        } else {
            base.clone()
        };
        let loaded = tokio::task::spawn_blocking(move || {
            load_with_adapter(&base, &model_dir, &tok_dir, &device, dtype)
        })
        .await
        .map_err(|e| LoadError::NoBase(format!("model loading task failed: {e}")))??;
        finish(loaded, chat_override)
    } else {
        let loaded = tokio::task::spawn_blocking(move || load_full(&model_dir, &device, dtype))
            .await
            .map_err(|e| LoadError::NoBase(format!("model loading task failed: {e}")))??;
        finish(loaded, chat_override)
    }
}

fn finish(
    (model, tokenizer, source): (CausalLm, TextTokenizer, String),
    chat_override: Option<&str>,
) -> Result<LoadedModel, LoadError> {
    let template = ChatTemplate::for_tokenizer(&tokenizer, chat_override)
        .map_err(llamaduo_model::hub_dir::HubDirError::from)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        source,
    })
}

/// A full-weights Hugging Face directory.
pub fn load_full(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(CausalLm, TextTokenizer, String), LoadError> {
    let hub = HubDir::open(dir)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let vb = hub.var_builder(dtype, device)?;
    let model = CausalLm::load(&cfg, vb, &LoadOptions::inference(dtype))?;
    Ok((model, hub.tokenizer()?, dir.display().to_string()))
}

/// A base directory with a PEFT adapter folded in; the tokenizer comes from `tok_dir`.
pub fn load_with_adapter(
    base: &Path,
    adapter: &Path,
    tok_dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(CausalLm, TextTokenizer, String), LoadError> {
    let hub = HubDir::open(base)?;
    let cfg = ModelConfig::from_file(&base.join("config.json"))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in hub.weight_files() {
        tensors.extend(candle_core::safetensors::load(file, &Device::Cpu)?);
    }
    merge_adapter(&mut tensors, adapter)?;
    let model = CausalLm::from_tensors(&cfg, tensors, device, &LoadOptions::inference(dtype))?;
    let tokenizer =
        TextTokenizer::from_dir(tok_dir).map_err(llamaduo_model::hub_dir::HubDirError::from)?;
    Ok((
        model,
        tokenizer,
        format!("{} + adapter {}", base.display(), adapter.display()),
    ))
}

fn adapter_err(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::Adapter {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn read_adapter_config(dir: &Path) -> Result<AdapterConfig, LoadError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| adapter_err(dir, format!("cannot read {ADAPTER_CONFIG}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| adapter_err(dir, format!("{ADAPTER_CONFIG} is not valid: {e}")))
}

/// The `base_model_name_or_path` of the adapter in `dir`, if it names one.
pub fn adapter_base_name(dir: &Path) -> Result<Option<String>, LoadError> {
    Ok(read_adapter_config(dir)?
        .base_model_name_or_path
        .filter(|s| !s.trim().is_empty()))
}

/// Folds the PEFT adapter in `dir` into `tensors` (base weights by Hugging Face name), in
/// f32: W += scale · B·A for every `lora_A`/`lora_B` pair.
pub fn merge_adapter(tensors: &mut HashMap<String, Tensor>, dir: &Path) -> Result<(), LoadError> {
    let cfg = read_adapter_config(dir)?;
    if cfg.fan_in_fan_out {
        return Err(adapter_err(
            dir,
            "fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported by Llama-family models",
        ));
    }
    if cfg.use_dora {
        return Err(adapter_err(dir, "DoRA adapters are not supported"));
    }
    if let Some(m) = &cfg.modules_to_save
        && !(m.is_null() || m.as_array().is_some_and(Vec::is_empty))
    {
        return Err(adapter_err(
            dir,
            "modules_to_save is not supported: train without it, or export merged full weights",
        ));
    }
    let weights = dir.join(ADAPTER_WEIGHTS);
    let adapter = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| adapter_err(dir, format!("cannot read {ADAPTER_WEIGHTS}: {e}")))?;
    let mut merged = 0usize;
    for (name, a) in &adapter {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            if !name.ends_with(".lora_B.weight") {
                return Err(adapter_err(
                    dir,
                    format!("unexpected tensor {name} (only lora_A/lora_B weights are supported)"),
                ));
            }
            continue;
        };
        let b_name = format!("{module}.lora_B.weight");
        let b = adapter
            .get(&b_name)
            .ok_or_else(|| adapter_err(dir, format!("{name} has no matching {b_name}")))?;
        let module = module.strip_prefix(PEFT_PREFIX).unwrap_or(module);
        let w_name = format!("{module}.weight");
        let w = tensors.get(&w_name).ok_or_else(|| {
            adapter_err(
                dir,
                format!("the adapter targets {module}, which the base model does not have"),
            )
        })?;
        let (r, _in) = a.dims2()?;
        let rank = cfg.r.unwrap_or(r as f64);
        let alpha = cfg
            .alpha_pattern
            .iter()
            .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
            .map(|(_, v)| *v)
            .or(cfg.lora_alpha)
            .unwrap_or(rank);
        // PEFT scales by alpha / r with the module's actual rank (rank_pattern may differ).
        let r_actual = r as f64;
        let scale = if cfg.use_rslora {
            alpha / r_actual.sqrt()
        } else {
            alpha / r_actual
        };
        let delta = b
            .to_dtype(DType::F32)?
            .matmul(&a.to_dtype(DType::F32)?)?
            .affine(scale, 0.0)?;
        if delta.dims() != w.dims() {
            return Err(adapter_err(
                dir,
                format!(
                    "{module}: adapter update {:?} does not match the base weight {:?}",
                    delta.dims(),
                    w.dims()
                ),
            ));
        }
        let dtype = w.dtype();
        let new_w = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        tensors.insert(w_name, new_w);
        merged += 1;
    }
    if merged == 0 {
        return Err(adapter_err(dir, "the adapter holds no lora_A/lora_B pairs"));
    }
    Ok(())
}

/// Finds the base model of an adapter (see the module docs).
async fn resolve_base(
    config: &EvaluateConfig,
    store: &Store,
    resolver: &Resolver,
    adapter_dir: &Path,
) -> Result<PathBuf, LoadError> {
    if let Some(url) = &config.student.base_model {
        let path = resolver.resolve(url).await?;
        return local_model_dir(path);
    }
    let named = adapter_base_name(adapter_dir)?;
    let Some(named) = named else {
        if config.student.from_scratch.is_some() {
            // The train stage keeps the from-scratch base once per migration here.
            return Ok(resolver
                .resolve_in(store, llamaduo::api::ArtifactLayout::STUDENT_BASE)
                .await?);
        }
        return Err(LoadError::NoBase(format!(
            "the adapter in {} names no base_model_name_or_path and student.baseModel is unset",
            adapter_dir.display()
        )));
    };
    let path = if named.contains("://") {
        resolver.resolve(&named).await?
    } else if Path::new(&named).is_absolute() {
        PathBuf::from(&named)
    } else {
        resolver
            .resolve_in(store, named.trim_start_matches("./"))
            .await?
    };
    local_model_dir(path)
}

/// A local model directory from a resolved path; a `.gguf` file is converted once into the
/// cache shared with the train stage.
pub fn local_model_dir(path: PathBuf) -> Result<PathBuf, LoadError> {
    if path.extension().is_some_and(|e| e == "gguf") {
        // The train stage's cache (keyed by content, not by file name): the base it trained
        // on is the base evaluated and served.
        return llamaduo_model::gguf::cached_hf_dir(&path, &cache_dir().join("gguf"))
            .map_err(|e| LoadError::Gguf(format!("converting {}: {e}", path.display())));
    }
    Ok(path)
}
