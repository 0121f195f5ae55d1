//! Loading the round's model for generation: full weights (a Hugging Face directory), or a
//! PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) on its base.
//!
//! An adapter is folded into the base weights on load by [`merge_adapter`] (W + alpha/r · B·A,
//! PEFT's formula, alpha/sqrt(r) with `use_rslora`, per-module `rank_pattern`/`alpha_pattern`):
//! generation then runs at the speed of the plain model.
//! The base is `student.baseModel` when set; for `fromScratch` students it is the directory
//! the train stage names in the adapter's `base_model_name_or_path` (a URL, a key under the
//! migration's artifact root, or a local path).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use llamaduo::api::{EvaluateConfig, Precision, TrainingMethod};
use llamaduo_model::adapter::{adapter_base_name, merge_adapter};
use llamaduo_model::chat_template::ChatTemplate;
use llamaduo_model::config::ModelConfig;
use llamaduo_model::device::{DeviceChoice, DeviceError, compute_dtype, device_name};
use llamaduo_model::hub_dir::HubDir;
use llamaduo_model::models::{CausalLm, LoadOptions};
use llamaduo_model::peft::{ADAPTER_CONFIG, PeftError};
use llamaduo_model::tokenizer::TextTokenizer;
use llamaduo_store::{HfConfig, Resolver, Store};

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
    /// The adapter cannot be read, does not fit the base, or its config is unsupported
    /// ([`llamaduo_model::adapter`]).
    #[error(transparent)]
    Adapter(#[from] PeftError),
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
