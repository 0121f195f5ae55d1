//! Sentence embeddings for the `embedding` metric: a BERT encoder (all-MiniLM-L6-v2 and other
//! sentence-transformers BERT models) run with candle, mean-pooled over real tokens and
//! L2-normalized, as sentence-transformers does.
//!
//! The model crate has no embedding module, so this is a small local one: inference only
//! (candle-nn's fused ops are fine here, nothing is trained), reading a Hugging Face BERT
//! directory (config.json, tokenizer.json, model.safetensors).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use tokenizers::Tokenizer;

/// Longest input in tokens (sentence-transformers' max_seq_length for MiniLM).
pub const MAX_TOKENS: usize = 256;

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A file is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// candle failed.
    #[error("encoder: {0}")]
    Candle(#[from] candle_core::Error),
}

#[derive(Deserialize, Debug, Clone)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded sentence-embedding model.
pub struct SentenceEmbedder {
    tokenizer: Tokenizer,
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    device: Device,
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> EmbeddingError {
    EmbeddingError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

impl SentenceEmbedder {
    /// Loads a BERT sentence-embedding directory on the CPU.
    pub fn load(dir: &Path) -> Result<Self, EmbeddingError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?;
        let cfg: BertConfig = serde_json::from_str(&text).map_err(|e| file_err(&cfg_path, e))?;
        if let Some(act) = cfg.hidden_act.as_deref()
            && act != "gelu"
        {
            return Err(file_err(
                &cfg_path,
                format!("hidden_act {act} is not supported (expected gelu)"),
            ));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(file_err(
                &cfg_path,
                "hidden_size must be a multiple of num_attention_heads",
            ));
        }
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| file_err(&tok_path, e))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(file_err(
                &weights,
                "missing (a safetensors BERT checkpoint is needed)",
            ));
        }
        let device = Device::Cpu;
        // SAFETY: read-only mapping of a file nobody writes while we read it.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
        // Some checkpoints (BertModel saved from a task model) prefix every name with "bert.".
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = cfg.hidden_size;
        let ln = |vb: VarBuilder| candle_nn::layer_norm(h, cfg.layer_norm_eps, vb);
        let e = vb.pp("embeddings");
        let words = candle_nn::embedding(cfg.vocab_size, h, e.pp("word_embeddings"))?;
        let positions =
            candle_nn::embedding(cfg.max_position_embeddings, h, e.pp("position_embeddings"))?;
        let types = candle_nn::embedding(cfg.type_vocab_size, h, e.pp("token_type_embeddings"))?;
        let emb_norm = ln(e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                q: candle_nn::linear(h, h, a.pp("self.query"))?,
                k: candle_nn::linear(h, h, a.pp("self.key"))?,
                v: candle_nn::linear(h, h, a.pp("self.value"))?,
                attn_out: candle_nn::linear(h, h, a.pp("output.dense"))?,
                attn_norm: ln(a.pp("output.LayerNorm"))?,
                inter: candle_nn::linear(h, cfg.intermediate_size, l.pp("intermediate.dense"))?,
                out: candle_nn::linear(cfg.intermediate_size, h, l.pp("output.dense"))?,
                out_norm: ln(l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Self {
            tokenizer,
            words,
            positions,
            types,
            emb_norm,
            layers,
            heads: cfg.num_attention_heads,
            device,
        })
    }

    /// L2-normalized embeddings of `texts`, one vector per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self
                .tokenizer
                .encode(*t, true)
                .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
            let mut v = enc.get_ids().to_vec();
            if v.len() > MAX_TOKENS {
                // Keep the closing [SEP].
                let last = v[v.len() - 1];
                v.truncate(MAX_TOKENS - 1);
                v.push(last);
            }
            ids.push(v);
        }
        let b = ids.len();
        let s = ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut flat = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s);
        for v in &ids {
            flat.extend(v.iter().copied());
            flat.extend(std::iter::repeat_n(0u32, s - v.len()));
            mask.extend(std::iter::repeat_n(1f32, v.len()));
            mask.extend(std::iter::repeat_n(0f32, s - v.len()));
        }
        let input = Tensor::from_vec(flat, (b, s), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, s), &self.device)?;
        let hidden = self.encode(&input, &mask)?;
        // Mean over real tokens, then L2-normalize.
        let m = mask.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }

    fn encode(&self, input: &Tensor, mask: &Tensor) -> Result<Tensor, EmbeddingError> {
        let (b, s) = input.dims2()?;
        let pos = Tensor::arange(0u32, s as u32, &self.device)?.unsqueeze(0)?;
        let types = Tensor::zeros((b, s), DType::U32, &self.device)?;
        let x = self
            .words
            .forward(input)?
            .broadcast_add(&self.positions.forward(&pos)?)?
            .add(&self.types.forward(&types)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        // Additive key mask: 0 on real tokens, a large negative value on pads.
        let bias = ((mask - 1.0)? * 1e9)?.reshape((b, 1, 1, s))?;
        for l in &self.layers {
            x = self.layer(l, &x, &bias)?;
        }
        Ok(x)
    }

    fn layer(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> Result<Tensor, EmbeddingError> {
        let (b, s, h) = x.dims3()?;
        let hd = h / self.heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(l.q.forward(x)?)?;
        let k = split(l.k.forward(x)?)?;
        let v = split(l.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h))?;
        let x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + x)?)?;
        let inter = l.inter.forward(&x)?.gelu_erf()?;
        Ok(l.out_norm.forward(&(l.out.forward(&inter)? + &x)?)?)
    }
}
