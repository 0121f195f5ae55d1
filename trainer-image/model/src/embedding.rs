//! Sentence embeddings for the `embedding` evaluation metric: a BERT encoder (the
//! all-MiniLM-L6-v2 family, a Hugging Face `BertModel` directory) with the pooling of its
//! sentence-transformers config (mean by default) and L2 normalisation, so the dot product of
//! two embeddings is their cosine similarity.
//!
//! Inference only: candle-nn's fused layer-norm and softmax ops (which have no backward pass)
//! are fine here.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::hub_dir::{HubDir, HubDirError};

/// Texts embedded per forward pass.
const BATCH: usize = 32;

/// Why the embedding model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// The model directory is unusable.
    #[error(transparent)]
    Dir(#[from] HubDirError),
    /// The config is not a BERT config this encoder supports.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer failed.
    #[error("embedding tokenizer: {0}")]
    Tokenizer(String),
    /// candle failed (a missing tensor names itself here).
    #[error("embedding model: {0}")]
    Model(#[from] candle_core::Error),
}

#[derive(Deserialize, Debug, Clone)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_types")]
    type_vocab_size: usize,
    #[serde(default)]
    model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_positions() -> usize {
    512
}
fn default_types() -> usize {
    2
}

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the real (non-pad) tokens.
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded sentence-embedding model.
pub struct SentenceEmbedder {
    cfg: BertConfig,
    tokenizer: Tokenizer,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    pooling: Pooling,
    device: Device,
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEmbedder")
            .field("hidden_size", &self.cfg.hidden_size)
            .field("layers", &self.layers.len())
            .field("pooling", &self.pooling)
            .finish()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EmbeddingError> {
    let cfg_err = |message: String| EmbeddingError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| cfg_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| cfg_err(e.to_string()))
}

impl SentenceEmbedder {
    /// Loads a sentence-transformers BERT directory (config.json, tokenizer.json,
    /// model.safetensors, optional 1_Pooling/config.json and sentence_bert_config.json).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbeddingError> {
        let hub = HubDir::open(dir)?;
        let cfg_path = dir.join("config.json");
        let cfg: BertConfig = read_json(&cfg_path)?;
        let bad = |message: String| EmbeddingError::Config {
            path: cfg_path.display().to_string(),
            message,
        };
        if cfg.model_type.as_deref().is_some_and(|t| t != "bert") {
            return Err(bad(format!(
                "model_type {:?} is not bert; the embedding metric needs a BERT sentence encoder such as all-MiniLM-L6-v2",
                cfg.model_type
            )));
        }
        if cfg.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} is not supported (gelu)",
                cfg.hidden_act
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(
                "hidden_size must be a multiple of num_attention_heads".into()
            ));
        }
        let pooling = Self::pooling(dir)?;
        let max_len = Self::max_seq_length(dir)?.min(cfg.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        // We pad per batch ourselves; truncate to the encoder's sequence limit.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let vb = hub.var_builder(DType::F32, device)?;
        // Some exports prefix every name with `bert.`.
        let vb = if hub
            .tensors()
            .contains_key("bert.embeddings.word_embeddings.weight")
        {
            vb.pp("bert")
        } else {
            vb
        };
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let e = vb.pp("embeddings");
        let word = candle_nn::embedding(cfg.vocab_size, h, e.pp("word_embeddings"))?;
        let position =
            candle_nn::embedding(cfg.max_position_embeddings, h, e.pp("position_embeddings"))?;
        let token_type =
            candle_nn::embedding(cfg.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let emb_norm = candle_nn::layer_norm(h, eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                query: candle_nn::linear(h, h, a.pp("self.query"))?,
                key: candle_nn::linear(h, h, a.pp("self.key"))?,
                value: candle_nn::linear(h, h, a.pp("self.value"))?,
                attn_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                attn_norm: candle_nn::layer_norm(h, eps, a.pp("output.LayerNorm"))?,
                inter: candle_nn::linear(h, cfg.intermediate_size, l.pp("intermediate.dense"))?,
                out: candle_nn::linear(cfg.intermediate_size, h, l.pp("output.dense"))?,
                out_norm: candle_nn::layer_norm(h, eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Self {
            cfg,
            tokenizer,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            pooling,
            device: device.clone(),
        })
    }

    fn pooling(dir: &Path) -> Result<Pooling, EmbeddingError> {
        let path = dir.join("1_Pooling").join("config.json");
        if !path.exists() {
            return Ok(Pooling::Mean);
        }
        let p: PoolingConfig = read_json(&path)?;
        if p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens {
            return Err(EmbeddingError::Config {
                path: path.display().to_string(),
                message: "only mean and cls pooling are supported".into(),
            });
        }
        Ok(if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens {
            Pooling::Cls
        } else {
            Pooling::Mean
        })
    }

    fn max_seq_length(dir: &Path) -> Result<usize, EmbeddingError> {
        #[derive(Deserialize)]
        struct St {
            max_seq_length: Option<usize>,
        }
        let path = dir.join("sentence_bert_config.json");
        if !path.exists() {
            return Ok(512);
        }
        let st: St = read_json(&path)?;
        Ok(st.max_seq_length.unwrap_or(512))
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Unit-length embeddings of `texts`, in order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    /// Cosine similarity of two texts.
    pub fn similarity(&self, a: &str, b: &str) -> Result<f32, EmbeddingError> {
        let e = self.embed(&[a, b])?;
        Ok(cosine(&e[0], &e[1]))
    }

    fn embed_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let encs = texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode_fast(t.as_ref(), true)
                    .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let b = encs.len();
        let s = encs
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = vec![0u32; b * s];
        let mut mask = vec![0f32; b * s];
        for (r, e) in encs.iter().enumerate() {
            for (j, &id) in e.get_ids().iter().enumerate() {
                ids[r * s + j] = id;
                mask[r * s + j] = 1.0;
            }
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (b, s), dev)?;
        let mask = Tensor::from_vec(mask, (b, s), dev)?;
        let positions = Tensor::arange(0u32, s as u32, dev)?.unsqueeze(0)?;
        let types = Tensor::zeros((b, s), DType::U32, dev)?;
        let x = self
            .word
            .forward(&ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        // Additive key mask: 0 for real tokens, a large negative for pads.
        let key_bias = ((mask.clone() - 1.0)? * 1e9)?
            .reshape((b, 1, 1, s))?
            .to_dtype(x.dtype())?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &key_bias)?;
        }
        let pooled = match self.pooling {
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?;
                let sum = x.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let norm = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        let unit = pooled.broadcast_div(&norm)?;
        Ok(unit.to_vec2::<f32>()?)
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        key_bias: &Tensor,
    ) -> Result<Tensor, EmbeddingError> {
        let (b, s, h) = x.dims3()?;
        let heads = self.cfg.num_attention_heads;
        let d = h / heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(l.query.forward(x)?)?;
        let k = split(l.key.forward(x)?)?;
        let v = split(l.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(key_bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h))?;
        let x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + x)?)?;
        let inter = l.inter.forward(&x)?.gelu_erf()?;
        Ok(l.out_norm.forward(&(l.out.forward(&inter)? + x)?)?)
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_by_hand() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert!((cosine(&[2.0, 4.0], &[1.0, 2.0]) - 1.0).abs() < 1e-6);
    }
}
