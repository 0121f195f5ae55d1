//! `fromScratch` students: a randomly initialised small model of one of the supported
//! families plus a byte-level BPE tokenizer trained on the training data, written as an
//! ordinary Hugging Face model directory (config.json, tokenizer.json, tokenizer_config.json
//! with the ChatML template, generation_config.json, model.safetensors) so every later step
//! loads it through [`crate::hub_dir::HubDir`] like any pretrained base.

use std::path::{Path, PathBuf};

use candle_core::Device;
use llamaduo::api::dataset::DatasetRow;
use llamaduo::api::migration::FromScratchSpec;
use serde_json::json;

use crate::chat_template::CHATML_TEMPLATE;
use crate::config::{ModelConfig, TokenIds};
use crate::hub_dir::WEIGHTS_FILE;
use crate::models::init::random_weights;
use crate::tokenizer::{
    CHATML_SPECIALS, END_OF_TEXT, IM_END, TemplateSpec, TokenSpec, TokenizerConfig, TokenizerError,
    save_tokenizer, train_bpe,
};

/// Why a from-scratch model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FromScratchError {
    /// The spec's sizes do not fit together.
    #[error("invalid student.fromScratch: {0}")]
    Spec(String),
    /// Tokenizer training failed (for example on an empty dataset).
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Initialising or saving the weights failed.
    #[error("cannot write the initial weights to {path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What [`build_from_scratch`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct FromScratchModel {
    /// The model directory.
    pub dir: PathBuf,
    /// The model config as written.
    pub config: ModelConfig,
    /// Parameter count.
    pub parameters: usize,
}

/// The MLP width when the spec leaves it unset: 8/3 of the hidden size (SwiGLU's usual
/// ratio), rounded up to a multiple of 8.
pub fn default_intermediate_size(hidden_size: usize) -> usize {
    (hidden_size * 8).div_ceil(3).div_ceil(8) * 8
}

/// The texts a from-scratch tokenizer trains on: every message of every row, plus the role
/// names the chat template writes, so the markup encodes compactly too.
pub fn tokenizer_corpus(rows: &[DatasetRow]) -> Vec<String> {
    let mut texts: Vec<String> = ["system\n", "user\n", "assistant\n"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for row in rows {
        for m in &row.messages {
            texts.push(m.content.clone());
        }
    }
    texts
}

/// The model config for a spec and a trained vocabulary of `vocab_size` tokens.
pub fn config_for(
    spec: &FromScratchSpec,
    vocab_size: usize,
    max_position_embeddings: usize,
) -> Result<ModelConfig, FromScratchError> {
    let hidden = spec.hidden_size as usize;
    let heads = spec.num_heads as usize;
    let layers = spec.num_layers as usize;
    let kv = spec.num_kv_heads.map_or(heads, |k| k as usize);
    if hidden == 0 || heads == 0 || layers == 0 || kv == 0 {
        return Err(FromScratchError::Spec(
            "hiddenSize, numLayers, numHeads and numKvHeads must be at least 1".into(),
        ));
    }
    if !hidden.is_multiple_of(heads) {
        return Err(FromScratchError::Spec(format!(
            "hiddenSize ({hidden}) must be a multiple of numHeads ({heads})"
        )));
    }
    if !(hidden / heads).is_multiple_of(2) {
        return Err(FromScratchError::Spec(format!(
            "hiddenSize / numHeads ({}) must be even for rotary embeddings",
            hidden / heads
        )));
    }
    if !heads.is_multiple_of(kv) {
        return Err(FromScratchError::Spec(format!(
            "numHeads ({heads}) must be a multiple of numKvHeads ({kv})"
        )));
    }
    let inter = spec
        .intermediate_size
        .map_or_else(|| default_intermediate_size(hidden), |i| i as usize);
    if inter == 0 {
        return Err(FromScratchError::Spec(
            "intermediateSize must be at least 1".into(),
        ));
    }
    let mut cfg = ModelConfig::new(
        spec.architecture,
        vocab_size,
        hidden,
        layers,
        heads,
        kv,
        inter,
        max_position_embeddings,
    );
    // Ids fixed by CHATML_SPECIALS: <|endoftext|> 0 pads, <|im_end|> 2 ends a turn. ChatML
    // has no BOS.
    cfg.eos_token_id = Some(TokenIds::One(2));
    cfg.pad_token_id = Some(TokenIds::One(0));
    cfg.validate()?;
    Ok(cfg)
}

/// Builds a from-scratch model directory in `out`: trains the tokenizer on `texts` (see
/// [`tokenizer_corpus`]), writes the config, the ChatML tokenizer files and seeded random
/// weights (normal(0, 0.02), as transformers initialises). The same spec, texts and seed
/// always give the same directory.
pub fn build_from_scratch<S: AsRef<str> + Send + Sync>(
    spec: &FromScratchSpec,
    texts: &[S],
    seed: u64,
    max_position_embeddings: usize,
    out: &Path,
) -> Result<FromScratchModel, FromScratchError> {
    // Check the sizes before spending time on the tokenizer.
    config_for(spec, 512, max_position_embeddings)?;
    let tokenizer = train_bpe(texts, spec.vocab_size as usize, &CHATML_SPECIALS)?;
    let config = config_for(
        spec,
        tokenizer.get_vocab_size(true),
        max_position_embeddings,
    )?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FromScratchError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    save_tokenizer(&tokenizer, &out.join("tokenizer.json"))?;
    TokenizerConfig {
        bos_token: None,
        eos_token: Some(TokenSpec::Text(IM_END.into())),
        pad_token: Some(TokenSpec::Text(END_OF_TEXT.into())),
        unk_token: None,
        chat_template: Some(TemplateSpec::Single(CHATML_TEMPLATE.into())),
        model_max_length: Some(max_position_embeddings as f64),
        tokenizer_class: Some("PreTrainedTokenizerFast".into()),
        add_bos_token: None,
        add_eos_token: None,
    }
    .write(&out.join("tokenizer_config.json"))?;
    let gen_path = out.join("generation_config.json");
    std::fs::write(
        &gen_path,
        json!({"eos_token_id": 2, "pad_token_id": 0}).to_string(),
    )
    .map_err(io(&gen_path))?;
    let weights_path = out.join(WEIGHTS_FILE);
    let weights_err = |e: candle_core::Error| FromScratchError::Weights {
        path: weights_path.clone(),
        message: e.to_string(),
    };
    let tensors = random_weights(&config, seed, &Device::Cpu).map_err(weights_err)?;
    let parameters = tensors.values().map(|t| t.elem_count()).sum();
    candle_core::safetensors::save(&tensors, &weights_path).map_err(weights_err)?;
    // config.json last: its presence marks a complete directory.
    let cfg_path = out.join("config.json");
    std::fs::write(&cfg_path, config.to_json()?).map_err(io(&cfg_path))?;
    Ok(FromScratchModel {
        dir: out.to_owned(),
        config,
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamaduo::api::Architecture;

    fn spec() -> FromScratchSpec {
        serde_json::from_str(r#"{"hiddenSize": 64, "numLayers": 2, "numHeads": 4}"#).expect("spec")
    }

    #[test]
    fn default_mlp_width_is_eight_thirds_rounded() {
        assert_eq!(default_intermediate_size(128), 344);
        assert_eq!(default_intermediate_size(64), 176);
    }

    #[test]
    fn config_checks_the_spec() {
        let mut s = spec();
        let cfg = config_for(&s, 300, 256).expect("valid");
        assert_eq!(cfg.architecture().expect("arch"), Architecture::Llama);
        assert_eq!(cfg.vocab_size, 300);
        assert_eq!(cfg.intermediate_size, 176);
        s.num_kv_heads = Some(3);
        let err = config_for(&s, 300, 256).expect_err("4 % 3 != 0");
        assert!(err.to_string().contains("numKvHeads"), "{err}");
        s.num_kv_heads = None;
        s.hidden_size = 66;
        let err = config_for(&s, 300, 256).expect_err("66 % 4 != 0");
        assert!(err.to_string().contains("hiddenSize"), "{err}");
    }
}
