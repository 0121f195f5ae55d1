//! GGUF (llama.cpp's format) bases: read the file, dequantize every tensor to f32 under its
//! Hugging Face name, and convert the whole model into a Hugging Face directory (config.json,
//! f32 model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json) that
//! the normal [`crate::hub_dir`] path loads.
//!
//! Two details make or break the conversion: llama.cpp stores Llama's Q and K projection rows
//! permuted for its interleaved RoPE (undone here), and Gemma's RMSNorm weights with the
//! "1 +" offset folded in (subtracted here).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::{Value as Json, json};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::chat_template::CHATML_TEMPLATE;
use crate::tokenizer::{TemplateSpec, TokenSpec, TokenizerConfig, save_tokenizer};

/// Qwen2's pre-tokenizer split regex.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer split regex.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Why a GGUF file cannot be read or converted.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file cannot be opened or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid GGUF, or a tensor cannot be read.
    #[error("{path} is not a readable GGUF file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("{path}: metadata {key} {problem}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The model family is not one this crate implements.
    #[error(
        "{path}: general.architecture {arch:?} is not supported (supported: llama, qwen2, gemma)"
    )]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture.
        arch: String,
    },
    /// A tensor has no Hugging Face counterpart.
    #[error("{path}: tensor {name} has no Hugging Face equivalent ({why})")]
    UnknownTensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// The tokenizer metadata is unusable.
    #[error("{path}: cannot build tokenizer.json: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Tensor math failed.
    #[error("{path}: tensor {name}: {message}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// candle's message.
        message: String,
    },
}

/// A GGUF model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    /// `llama` (also Mistral and SmolLM checkpoints): Q/K rows permuted.
    Llama,
    /// `qwen2`: q/k/v biases, no permutation.
    Qwen2,
    /// `gemma`: norms stored as 1 + w, GELU MLP, no permutation.
    Gemma,
}

impl GgufArch {
    fn prefix(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma => "gemma",
        }
    }
}

/// An opened GGUF file: metadata and tensor index (tensor data is read on demand).
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    arch: GgufArch,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("arch", &self.arch)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

/// What a conversion wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversion {
    /// The model directory.
    pub dir: PathBuf,
    /// The family.
    pub arch: GgufArch,
    /// Number of parameters written (tied embeddings counted once).
    pub parameters: usize,
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        Value::Bool(b) => i64::from(*b),
        _ => return None,
    })
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(f64::from(*x)),
        Value::F64(x) => Some(*x),
        other => as_i64(other).map(|i| i as f64),
    }
}

impl GgufFile {
    /// Opens a GGUF file and reads its metadata and tensor index.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| GgufError::Corrupt {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let arch_name = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(GgufError::Metadata {
                    path: path.to_owned(),
                    key: "general.architecture".into(),
                    problem: "is missing or not a string".into(),
                });
            }
        };
        let arch = match arch_name.as_str() {
            "llama" => GgufArch::Llama,
            "qwen2" => GgufArch::Qwen2,
            "gemma" => GgufArch::Gemma,
            _ => {
                return Err(GgufError::UnsupportedArchitecture {
                    path: path.to_owned(),
                    arch: arch_name,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            content,
            arch,
        })
    }

    /// The model family.
    pub fn arch(&self) -> GgufArch {
        self.arch
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_err(&self, key: &str, problem: &str) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_owned(),
            problem: problem.to_owned(),
        }
    }

    fn int(&self, key: &str) -> Result<i64, GgufError> {
        let v = self
            .metadata(key)
            .ok_or_else(|| self.meta_err(key, "is missing"))?;
        as_i64(v).ok_or_else(|| self.meta_err(key, "is not an integer"))
    }

    fn usize_of(&self, key: &str) -> Result<usize, GgufError> {
        let i = self.int(key)?;
        usize::try_from(i).map_err(|_| self.meta_err(key, "is negative"))
    }

    fn opt_int(&self, key: &str) -> Result<Option<i64>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(_) => self.int(key).map(Some),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => as_f64(v)
                .map(Some)
                .ok_or_else(|| self.meta_err(key, "is not a number")),
        }
    }

    fn arch_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch.prefix())
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        match self.metadata(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.meta_err(key, "holds a non-string item")),
                })
                .collect(),
            Some(_) => Err(self.meta_err(key, "is not an array")),
            None => Err(self.meta_err(key, "is missing")),
        }
    }

    fn head_counts(&self) -> Result<(usize, usize), GgufError> {
        let heads = self.usize_of(&self.arch_key("attention.head_count"))?;
        let kv_key = self.arch_key("attention.head_count_kv");
        let kv = if self.metadata(&kv_key).is_some() {
            self.usize_of(&kv_key)?
        } else {
            heads
        };
        if heads == 0 || kv == 0 {
            return Err(self.meta_err(&self.arch_key("attention.head_count"), "is zero"));
        }
        Ok((heads, kv))
    }

    /// The Hugging Face `config.json` for this model.
    pub fn hf_config(&self) -> Result<Json, GgufError> {
        let hidden = self.usize_of(&self.arch_key("embedding_length"))?;
        let (heads, kv_heads) = self.head_counts()?;
        let vocab = match self.opt_int(&self.arch_key("vocab_size"))? {
            Some(v) => v as usize,
            None => self.strings("tokenizer.ggml.tokens")?.len(),
        };
        let head_dim = match self.opt_int(&self.arch_key("attention.key_length"))? {
            Some(d) => d as usize,
            None => hidden / heads,
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let (class, model_type, act) = match self.arch {
            GgufArch::Llama => ("LlamaForCausalLM", "llama", "silu"),
            GgufArch::Qwen2 => ("Qwen2ForCausalLM", "qwen2", "silu"),
            GgufArch::Gemma => ("GemmaForCausalLM", "gemma", "gelu_pytorch_tanh"),
        };
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": self.usize_of(&self.arch_key("feed_forward_length"))?,
            "num_hidden_layers": self.usize_of(&self.arch_key("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": act,
            "rms_norm_eps": self.opt_f64(&self.arch_key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            "rope_theta": self.opt_f64(&self.arch_key("rope.freq_base"))?.unwrap_or(10_000.0),
            "max_position_embeddings": self.opt_int(&self.arch_key("context_length"))?.unwrap_or(2048),
            "vocab_size": vocab,
            "tie_word_embeddings": tied,
            "torch_dtype": "float32",
        });
        if self.arch == GgufArch::Gemma {
            cfg["hidden_activation"] = json!(act);
        }
        // RoPE scaling as llama.cpp writes it, carried as `rope_scaling` so that
        // `ModelConfig::rope` applies it (linear) or refuses it naming the field (yarn, ...)
        // instead of the model training with unscaled frequencies.
        let scaling = match self.metadata(&self.arch_key("rope.scaling.type")) {
            Some(Value::String(kind)) if kind != "none" => Some(kind.clone()),
            Some(Value::String(_)) => None,
            Some(_) => {
                return Err(self.meta_err(&self.arch_key("rope.scaling.type"), "is not a string"));
            }
            // Older files name only a linear factor.
            None => self
                .opt_f64(&self.arch_key("rope.scale_linear"))?
                .filter(|f| *f != 1.0)
                .map(|_| "linear".to_string()),
        };
        if let Some(kind) = scaling {
            let factor = match self.opt_f64(&self.arch_key("rope.scaling.factor"))? {
                Some(f) => Some(f),
                None => self.opt_f64(&self.arch_key("rope.scale_linear"))?,
            };
            let mut s = json!({ "rope_type": kind });
            if let Some(f) = factor {
                s["factor"] = json!(f);
            }
            if let Some(n) = self.opt_int(&self.arch_key("rope.scaling.original_context_length"))? {
                s["original_max_position_embeddings"] = json!(n);
            }
            cfg["rope_scaling"] = s;
        }
        for (key, field) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
            ("tokenizer.ggml.padding_token_id", "pad_token_id"),
        ] {
            if let Some(id) = self.opt_int(key)? {
                cfg[field] = json!(id);
            }
        }
        Ok(cfg)
    }

    /// Maps a GGUF tensor name to its Hugging Face name.
    pub fn hf_name(&self, name: &str) -> Result<String, GgufError> {
        let unknown = |why| GgufError::UnknownTensor {
            path: self.path.clone(),
            name: name.to_owned(),
            why,
        };
        match name {
            "token_embd.weight" => return Ok("model.embed_tokens.weight".into()),
            "output_norm.weight" => return Ok("model.norm.weight".into()),
            "output.weight" => return Ok("lm_head.weight".into()),
            "rope_freqs.weight" => return Err(unknown("RoPE frequency scaling is not supported")),
            _ => {}
        }
        let rest = name
            .strip_prefix("blk.")
            .ok_or_else(|| unknown("not a known global tensor"))?;
        let (layer, leaf) = rest
            .split_once('.')
            .ok_or_else(|| unknown("no layer index"))?;
        let layer: usize = layer.parse().map_err(|_| unknown("bad layer index"))?;
        let (module, kind) = leaf
            .rsplit_once('.')
            .ok_or_else(|| unknown("no weight/bias suffix"))?;
        let hf = match module {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return Err(unknown("unknown layer module")),
        };
        if kind != "weight" && kind != "bias" {
            return Err(unknown("unknown suffix"));
        }
        Ok(format!("model.layers.{layer}.{hf}.{kind}"))
    }

    /// Reads every tensor, dequantized to f32 on `device`, under its Hugging Face name, with
    /// Llama's Q/K rows un-permuted and Gemma's norm offset removed: the weights a Hugging Face
    /// checkpoint of the same model would hold (up to quantization error).
    pub fn hf_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>, GgufError> {
        let (heads, kv_heads) = self.head_counts()?;
        let file = File::open(&self.path).map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let mut out = HashMap::with_capacity(names.len());
        for name in names {
            let hf = self.hf_name(name)?;
            let tensor_err = |message: String| GgufError::Tensor {
                path: self.path.clone(),
                name: name.clone(),
                message,
            };
            let q = self
                .content
                .tensor(&mut reader, name, device)
                .map_err(|e| GgufError::Corrupt {
                    path: self.path.clone(),
                    message: format!("tensor {name}: {e}"),
                })?;
            let mut t = q
                .dequantize(device)
                .map_err(|e| tensor_err(e.to_string()))?;
            if self.arch == GgufArch::Llama && hf.ends_with("weight") {
                if hf.ends_with("self_attn.q_proj.weight") {
                    t = unpermute_rows(&t, heads).map_err(|e| tensor_err(e.to_string()))?;
                } else if hf.ends_with("self_attn.k_proj.weight") {
                    t = unpermute_rows(&t, kv_heads).map_err(|e| tensor_err(e.to_string()))?;
                }
            }
            if self.arch == GgufArch::Gemma && hf.ends_with("norm.weight") {
                t = (t - 1.0).map_err(|e| tensor_err(e.to_string()))?;
            }
            out.insert(hf, t);
        }
        Ok(out)
    }

    /// Builds the Hugging Face tokenizer from `tokenizer.ggml.*`: byte-level BPE with the
    /// pre-tokenizer the GGUF's `tokenizer.ggml.pre` names, control tokens as special added
    /// tokens, user-defined tokens as plain added tokens.
    pub fn hf_tokenizer(&self) -> Result<Tokenizer, GgufError> {
        let tok_err = |message: String| GgufError::Tokenizer {
            path: self.path.clone(),
            message,
        };
        match self.metadata("tokenizer.ggml.model") {
            Some(Value::String(m)) if m == "gpt2" => {}
            Some(Value::String(m)) => {
                return Err(tok_err(format!(
                    "tokenizer.ggml.model {m:?} is not supported (only byte-level BPE, \"gpt2\")"
                )));
            }
            _ => return Err(tok_err("tokenizer.ggml.model is missing".into())),
        }
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let merges_raw = self.strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match self.metadata("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v.iter().map(|x| as_i64(x).unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(tok_err("tokenizer.ggml.tokens has duplicate tokens".into()));
        }
        let merges = merges_raw
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| tok_err(format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err(e.to_string()))?;
        let pre = match self.metadata("tokenizer.ggml.pre") {
            Some(Value::String(p)) => p.clone(),
            _ => "default".to_owned(),
        };
        let byte_level = ByteLevel::default()
            .add_prefix_space(false)
            .trim_offsets(true);
        let split = |re: &str| {
            Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err(e.to_string()))
        };
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            // SmolLM / StarCoder style: every digit alone, then GPT-2 byte-level splitting.
            "smollm" | "starcoder" | "refact" => Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.use_regex(true).into(),
            ])
            .into(),
            "qwen2" => Sequence::new(vec![
                split(QWEN2_SPLIT)?.into(),
                byte_level.use_regex(false).into(),
            ])
            .into(),
            "llama-bpe" | "llama3" => Sequence::new(vec![
                split(LLAMA3_SPLIT)?.into(),
                byte_level.use_regex(false).into(),
            ])
            .into(),
            "gpt-2" | "gpt2" | "default" => byte_level.use_regex(true).into(),
            other => {
                return Err(tok_err(format!(
                    "tokenizer.ggml.pre {other:?} is not supported (smollm, starcoder, qwen2, llama-bpe, gpt-2)"
                )));
            }
        };
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre_tokenizer));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        tok.with_post_processor(Some(ByteLevelProcessor::default().trim_offsets(false)));
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (t, ty) in tokens.iter().zip(&types) {
            match *ty {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(t.clone(), true)),
                TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(t.clone(), false)),
                _ => {}
            }
        }
        tok.add_special_tokens(special)
            .map_err(|e| tok_err(e.to_string()))?;
        tok.add_tokens(user).map_err(|e| tok_err(e.to_string()))?;
        Ok(tok)
    }

    /// `tokenizer_config.json`: special tokens by text and the GGUF's chat template (ChatML
    /// when it has none).
    pub fn hf_tokenizer_config(&self) -> Result<TokenizerConfig, GgufError> {
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let token = |key: &str| -> Result<Option<TokenSpec>, GgufError> {
            match self.opt_int(key)? {
                None => Ok(None),
                Some(id) => tokens
                    .get(id as usize)
                    .map(|t| Some(TokenSpec::Text(t.clone())))
                    .ok_or_else(|| self.meta_err(key, "is outside the vocabulary")),
            }
        };
        let template = match self.metadata("tokenizer.chat_template") {
            Some(Value::String(s)) => s.clone(),
            _ => CHATML_TEMPLATE.to_owned(),
        };
        Ok(TokenizerConfig {
            bos_token: token("tokenizer.ggml.bos_token_id")?,
            eos_token: token("tokenizer.ggml.eos_token_id")?,
            pad_token: token("tokenizer.ggml.padding_token_id")?,
            unk_token: token("tokenizer.ggml.unknown_token_id")?,
            chat_template: Some(TemplateSpec::Single(template)),
            model_max_length: self
                .opt_int(&self.arch_key("context_length"))?
                .map(|v| v as f64),
            tokenizer_class: Some("PreTrainedTokenizerFast".into()),
        })
    }

    /// Writes a Hugging Face model directory for this model into `out` (created if needed).
    pub fn convert_to_hf_dir(&self, out: &Path) -> Result<Conversion, GgufError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| GgufError::Io { path, source }
        };
        std::fs::create_dir_all(out).map_err(io(out))?;
        let config = self.hf_config()?;
        let tensors = self.hf_tensors(&Device::Cpu)?;
        let parameters = tensors.values().map(Tensor::elem_count).sum();
        let tokenizer = self.hf_tokenizer()?;
        let tok_config = self.hf_tokenizer_config()?;
        // Weights first under a temporary name, so a half-written directory never looks whole.
        let weights = out.join(crate::hub_dir::WEIGHTS_FILE);
        let partial = out.join("model.safetensors.partial");
        candle_core::safetensors::save(&tensors, &partial).map_err(|e| GgufError::Tensor {
            path: self.path.clone(),
            name: "*".into(),
            message: format!("writing {}: {e}", partial.display()),
        })?;
        let tok_path = out.join("tokenizer.json");
        save_tokenizer(&tokenizer, &tok_path).map_err(|e| GgufError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let cfg_path = out.join("tokenizer_config.json");
        tok_config
            .write(&cfg_path)
            .map_err(|e| GgufError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let mut generation = json!({});
        for field in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(field) {
                generation[field] = v.clone();
            }
        }
        let gen_path = out.join("generation_config.json");
        write_json(&gen_path, &generation).map_err(io(&gen_path))?;
        std::fs::rename(&partial, &weights).map_err(io(&weights))?;
        // config.json last: its presence marks a complete directory.
        let config_path = out.join("config.json");
        write_json(&config_path, &config).map_err(io(&config_path))?;
        Ok(Conversion {
            dir: out.to_owned(),
            arch: self.arch,
            parameters,
        })
    }
}

fn write_json(path: &Path, value: &Json) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// Undoes llama.cpp's Q/K row permutation: for a weight (out, in) with `heads` heads,
/// reshape to (heads, out/heads/2, 2, in), swap axes 1 and 2, reshape back.
pub fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = t.dims2()?;
    if heads == 0 || out % (2 * heads) != 0 {
        candle_core::bail!("{out} rows cannot be split into {heads} heads of pairs");
    }
    t.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// llama.cpp's permutation (the inverse of [`unpermute_rows`]), as its converter applies it
/// to Hugging Face Q/K weights: reshape to (heads, 2, out/heads/2, in), swap axes 1 and 2.
pub fn permute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = t.dims2()?;
    if heads == 0 || out % (2 * heads) != 0 {
        candle_core::bail!("{out} rows cannot be split into {heads} heads of pairs");
    }
    t.reshape((heads, 2, out / heads / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// Opens `gguf` and converts it into `out` (see [`GgufFile::convert_to_hf_dir`]).
pub fn convert_to_hf_dir(gguf: &Path, out: &Path) -> Result<Conversion, GgufError> {
    GgufFile::open(gguf)?.convert_to_hf_dir(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let t = Tensor::arange(0f32, 8. * 3., &Device::Cpu)
            .and_then(|t| t.reshape((8, 3)))
            .expect("tensor");
        let p = permute_rows(&t, 2).expect("permute");
        assert_ne!(
            p.to_vec2::<f32>().expect("vec"),
            t.to_vec2::<f32>().expect("vec")
        );
        // Head 0 rows (0..4) = pairs (0,2),(1,3) interleaved: rows 0,2,1,3.
        let rows: Vec<f32> = p
            .to_vec2::<f32>()
            .expect("vec")
            .iter()
            .map(|r| r[0] / 3.0)
            .collect();
        assert_eq!(rows, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        let back = unpermute_rows(&p, 2).expect("unpermute");
        assert_eq!(
            back.to_vec2::<f32>().expect("vec"),
            t.to_vec2::<f32>().expect("vec")
        );
        assert!(unpermute_rows(&t, 3).is_err());
    }
}
