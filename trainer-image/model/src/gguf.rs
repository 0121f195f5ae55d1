//! GGUF (llama.cpp's format) bases: read the file, dequantize every tensor to f32 under its
//! Hugging Face name, and convert the whole model into a Hugging Face directory (config.json,
//! f32 model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json) that
//! the normal [`crate::hub_dir`] path loads.
//!
//! Two details make or break the conversion: llama.cpp stores Llama's Q and K projection rows
//! permuted for its interleaved RoPE (undone here; it does not permute Qwen2, Qwen3, Gemma or
//! Gemma 3), and Gemma's and Gemma 3's RMSNorm weights with the "1 +" offset folded in
//! (subtracted here). SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`, Gemma)
//! become the tokenizer.json transformers writes for them ([`spm`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
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
use crate::tokenizer::{
    CHAT_TEMPLATE_FILE, TemplateSpec, TokenSpec, TokenizerConfig, save_tokenizer,
};

mod spm;

/// Changes whenever [`convert_to_hf_dir`] writes something different for the same file, so
/// caches of converted directories can key on it (2: Gemma 3, SentencePiece tokenizers,
/// chat_template.jinja; 3: SentencePiece merges tie -0.0 and 0.0 scores as transformers does).
pub const CONVERSION_VERSION: u32 = 3;

/// Gemma 3's chat template (as its tokenizer_config.json has it, base and instruction-tuned
/// models alike), for a Gemma 3 GGUF that carries none.
pub const GEMMA3_CHAT_TEMPLATE: &str = include_str!("gguf/gemma3_chat_template.jinja");

/// The RoPE base of Gemma 3's sliding-window layers, which llama.cpp fixes rather than
/// storing (`rope_freq_base_train_swa = 10000`).
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10_000.0;
/// llama.cpp's Gemma 3 layer pattern when the file names none: every sixth layer global.
const GEMMA3_SWA_PATTERN: usize = 6;
/// Gemma 3 27B (62 layers) scales queries by 1/sqrt(hidden / heads), every other size by
/// 1/sqrt(head_dim) (llama.cpp, after gemma_pytorch's config).
const GEMMA3_27B_LAYERS: usize = 62;

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
        "{path}: general.architecture {arch:?} is not supported (supported: llama, qwen2, qwen3, gemma, gemma3)"
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
    /// `qwen3`: per-head q/k norms (`attn_q_norm`, `attn_k_norm`), no permutation.
    Qwen3,
    /// `gemma`: norms stored as 1 + w, GELU MLP, no permutation.
    Gemma,
    /// `gemma3` (text): as `gemma`, plus q/k head norms, norms after attention and MLP, and
    /// sliding-window layers.
    Gemma3,
}

impl GgufArch {
    fn prefix(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma => "gemma",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Whether llama.cpp stored the norm weights as 1 + w.
    fn norm_offset(self) -> bool {
        matches!(self, Self::Gemma | Self::Gemma3)
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
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        // candle's reader still panics on some malformed headers (a `general.alignment` of 0
        // divides by zero); such a file is corrupt, not a reason to bring the stage down.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let content = read
            .map_err(|panic| GgufError::Corrupt {
                path: path.to_owned(),
                message: format!(
                    "the GGUF reader failed on its header ({}; a general.alignment of 0?)",
                    panic_text(&panic)
                ),
            })?
            .map_err(|e| GgufError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let data_len = file_len.saturating_sub(content.tensor_data_offset);
        for (name, info) in &content.tensor_infos {
            check_tensor_extent(name, info, data_len).map_err(|message| GgufError::Corrupt {
                path: path.to_owned(),
                message,
            })?;
        }
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
            "qwen3" => GgufArch::Qwen3,
            "gemma" => GgufArch::Gemma,
            "gemma3" => GgufArch::Gemma3,
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

    /// `block_count`, refused when more than the file has tensors: every layer has weights,
    /// and Gemma 3's per-layer attention kinds are built from it, so a count of 2^40 taken on
    /// trust asked for terabytes.
    fn layer_count(&self) -> Result<usize, GgufError> {
        let key = self.arch_key("block_count");
        let layers = self.usize_of(&key)?;
        let tensors = self.content.tensor_infos.len();
        if layers > tensors {
            return Err(self.meta_err(
                &key,
                &format!(
                    "is {layers}, more than the file's {tensors} tensors (every layer has weights)"
                ),
            ));
        }
        Ok(layers)
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
            GgufArch::Qwen3 => ("Qwen3ForCausalLM", "qwen3", "silu"),
            GgufArch::Gemma => ("GemmaForCausalLM", "gemma", "gelu_pytorch_tanh"),
            GgufArch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text", "gelu_pytorch_tanh"),
        };
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": self.usize_of(&self.arch_key("feed_forward_length"))?,
            "num_hidden_layers": self.layer_count()?,
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
        if matches!(self.arch, GgufArch::Gemma | GgufArch::Gemma3) {
            cfg["hidden_activation"] = json!(act);
        }
        if self.arch == GgufArch::Gemma3 {
            self.gemma3_config(&mut cfg, hidden, heads, head_dim)?;
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

    /// The Gemma 3 fields of config.json (transformers-4 spelling, which transformers 5 reads
    /// too): the layer kinds, window, the two RoPE bases and the attention scale, as
    /// llama.cpp's loader derives them from the file.
    fn gemma3_config(
        &self,
        cfg: &mut Json,
        hidden: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<(), GgufError> {
        let layers = self.layer_count()?;
        let window_key = self.arch_key("attention.sliding_window");
        let window = self.opt_int(&window_key)?.filter(|w| *w > 0);
        let pattern_key = self.arch_key("attention.sliding_window_pattern");
        let sliding: Vec<bool> = match (window, self.metadata(&pattern_key)) {
            (None, _) => vec![false; layers],
            (Some(_), Some(Value::Array(v))) => {
                let flags: Option<Vec<bool>> = v
                    .iter()
                    .map(|x| match x {
                        Value::Bool(b) => Some(*b),
                        other => as_i64(other).map(|i| i != 0),
                    })
                    .collect();
                match flags {
                    Some(f) if f.len() == layers => f,
                    _ => {
                        return Err(self.meta_err(&pattern_key, "is not one flag per layer"));
                    }
                }
            }
            (Some(_), Some(_)) => {
                let p = self.usize_of(&pattern_key)?.max(1);
                (0..layers).map(|i| (i + 1) % p != 0).collect()
            }
            (Some(_), None) => (0..layers)
                .map(|i| (i + 1) % GEMMA3_SWA_PATTERN != 0)
                .collect(),
        };
        let kinds: Vec<&str> = sliding
            .iter()
            .map(|s| {
                if *s {
                    crate::config::gemma3::SLIDING_ATTENTION
                } else {
                    crate::config::gemma3::FULL_ATTENTION
                }
            })
            .collect();
        let scalar = if layers == GEMMA3_27B_LAYERS {
            hidden / heads
        } else {
            head_dim
        };
        cfg["layer_types"] = json!(kinds);
        cfg["sliding_window"] = json!(window);
        cfg["rope_local_base_freq"] = json!(GEMMA3_LOCAL_ROPE_BASE);
        cfg["query_pre_attn_scalar"] = json!(scalar);
        cfg["final_logit_softcapping"] =
            match self.opt_f64(&self.arch_key("final_logit_softcapping"))? {
                Some(c) if c != 0.0 => json!(c),
                _ => Json::Null,
            };
        cfg["attn_logit_softcapping"] = Json::Null;
        cfg["use_bidirectional_attention"] = json!(false);
        Ok(())
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
        let gemma3 = self.arch == GgufArch::Gemma3;
        let head_norms = matches!(self.arch, GgufArch::Gemma3 | GgufArch::Qwen3);
        let hf = match module {
            "attn_norm" => "input_layernorm",
            // Gemma 3's ffn_norm is the MLP's input norm; its post_attention_norm is applied
            // to the attention output.
            "ffn_norm" if gemma3 => "pre_feedforward_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "post_attention_norm" if gemma3 => "post_attention_layernorm",
            "post_ffw_norm" if gemma3 => "post_feedforward_layernorm",
            "attn_q_norm" if head_norms => "self_attn.q_norm",
            "attn_k_norm" if head_norms => "self_attn.k_norm",
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
    /// Llama's Q/K rows un-permuted and Gemma's and Gemma 3's norm offset removed (every
    /// `*norm.weight`, the q/k head norms included): the weights a Hugging Face checkpoint of
    /// the same model would hold (up to quantization error).
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
            if self.arch.norm_offset() && hf.ends_with("norm.weight") {
                t = (t - 1.0).map_err(|e| tensor_err(e.to_string()))?;
            }
            out.insert(hf, t);
        }
        Ok(out)
    }

    /// Builds the Hugging Face tokenizer from `tokenizer.ggml.*`: for `gpt2` vocabularies
    /// byte-level BPE with the pre-tokenizer the GGUF's `tokenizer.ggml.pre` names, control
    /// tokens as special added tokens, user-defined tokens as plain added tokens; for `llama`
    /// (SentencePiece) vocabularies the tokenizer.json transformers writes (see [`spm`]).
    pub fn hf_tokenizer(&self) -> Result<Tokenizer, GgufError> {
        let tok_err = |message: String| GgufError::Tokenizer {
            path: self.path.clone(),
            message,
        };
        match self.metadata("tokenizer.ggml.model") {
            Some(Value::String(m)) if m == "gpt2" => {}
            Some(Value::String(m)) if m == "llama" => return self.spm_tokenizer(),
            Some(Value::String(m)) => {
                return Err(tok_err(format!(
                    "tokenizer.ggml.model {m:?} is not supported (byte-level BPE \"gpt2\" and SentencePiece \"llama\")"
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

    /// The SentencePiece tokenizer of a `tokenizer.ggml.model = "llama"` file.
    fn spm_tokenizer(&self) -> Result<Tokenizer, GgufError> {
        let tok_err = |message: String| GgufError::Tokenizer {
            path: self.path.clone(),
            message,
        };
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let key = "tokenizer.ggml.scores";
        let scores: Vec<f32> = match self.metadata(key) {
            Some(Value::Array(v)) => v
                .iter()
                .map(|x| as_f64(x).map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| self.meta_err(key, "holds a non-number"))?,
            _ => return Err(self.meta_err(key, "is missing (SentencePiece merges need it)")),
        };
        let key = "tokenizer.ggml.token_type";
        let types: Vec<i64> = match self.metadata(key) {
            Some(Value::Array(v)) => v
                .iter()
                .map(as_i64)
                .collect::<Option<_>>()
                .ok_or_else(|| self.meta_err(key, "holds a non-integer"))?,
            _ => return Err(self.meta_err(key, "is missing")),
        };
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            Ok(self.opt_int(key)?.and_then(|i| u32::try_from(i).ok()))
        };
        let flag = |key: &str, default: bool| -> bool {
            match self.metadata(key) {
                Some(Value::Bool(b)) => *b,
                Some(other) => as_i64(other).map_or(default, |i| i != 0),
                None => default,
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        spm::tokenizer(&spm::SpmVocab {
            tokens: &tokens,
            scores: &scores,
            types: &types,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            // llama.cpp's defaults for SentencePiece vocabularies: BOS and a space prefix.
            add_bos: bos.filter(|_| flag("tokenizer.ggml.add_bos_token", true)),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            gemma: matches!(self.arch, GgufArch::Gemma | GgufArch::Gemma3),
        })
        .map_err(tok_err)
    }

    /// `tokenizer_config.json`: special tokens by text, whether BOS/EOS are added to a plain
    /// text, and the GGUF's chat template (Gemma 3's own for a Gemma 3 file without one,
    /// else ChatML).
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
            _ if self.arch == GgufArch::Gemma3 => GEMMA3_CHAT_TEMPLATE.to_owned(),
            _ => CHATML_TEMPLATE.to_owned(),
        };
        let spm =
            matches!(self.metadata("tokenizer.ggml.model"), Some(Value::String(m)) if m == "llama");
        let flag = |key: &str| match self.metadata(key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => as_i64(other).map(|i| i != 0),
            None => None,
        };
        // What the tokenizer.json post-processor does: for SentencePiece vocabularies it
        // prepends BOS unless the file says not to (llama.cpp's default) and never appends
        // EOS; byte-level ones add nothing and say nothing.
        let add_bos_token = spm.then(|| flag("tokenizer.ggml.add_bos_token").unwrap_or(true));
        let add_eos_token = spm.then_some(false);
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
            add_bos_token,
            add_eos_token,
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
        // Where transformers >= 4.47 saves the template, read before tokenizer_config.json's.
        if let Some(template) = tok_config.template() {
            let path = out.join(CHAT_TEMPLATE_FILE);
            std::fs::write(&path, template).map_err(io(&path))?;
        }
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

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Refuses a tensor whose size overflows, that is empty, or whose bytes lie past the end of the
/// file. candle multiplies the dimensions and the block size unchecked when it reads a tensor:
/// dimensions whose product overflowed panicked in debug builds and, in release, wrapped round
/// to a small size read from the wrong place; and it views an empty tensor's (unaligned, empty)
/// buffer as f32 blocks, undefined behaviour that aborts a debug build.
fn check_tensor_extent(name: &str, info: &TensorInfo, data_len: u64) -> Result<(), String> {
    let dims = info.shape.dims();
    let dtype = info.ggml_dtype;
    let elems = dims
        .iter()
        .try_fold(1u64, |n, d| n.checked_mul(*d as u64))
        .ok_or_else(|| format!("tensor {name}: dimensions {dims:?} overflow 64 bits"))?;
    if elems == 0 {
        return Err(format!(
            "tensor {name} has no elements (dimensions {dims:?})"
        ));
    }
    let bytes = (elems / dtype.block_size() as u64)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| format!("tensor {name}: {elems} elements of {dtype:?} overflow 64 bits"))?;
    let end = info.offset.checked_add(bytes);
    if end.is_none_or(|end| end > data_len) {
        return Err(format!(
            "tensor {name}: {bytes} bytes at offset {} run past the {data_len} bytes of tensor data (truncated file?)",
            info.offset
        ));
    }
    Ok(())
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

/// `gguf` as a Hugging Face directory under `cache`, converted once: the directory is named
/// after the file's SHA-256 and [`CONVERSION_VERSION`], never its name, so two different files
/// called `model.gguf` never share a conversion and a converter that writes something else
/// converts again. The conversion is written into a temporary directory beside it and renamed
/// into place, so a crash leaves no directory that looks whole; of two processes converting
/// at once, the later rename loses harmlessly. Train, evaluate and serve all load GGUF bases
/// through this one cache.
pub fn cached_hf_dir(gguf: &Path, cache: &Path) -> Result<PathBuf, GgufError> {
    use sha2::Digest;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GgufError::Io { path, source }
    };
    let mut file = std::fs::File::open(gguf).map_err(io(gguf))?;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(io(gguf))?;
    let digest = format!("{:x}", hash.finalize());
    let dir = cache.join(format!("{}-v{CONVERSION_VERSION}", &digest[..16]));
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let tmp = cache.join(format!(
        ".{}-v{CONVERSION_VERSION}.tmp-{}",
        &digest[..16],
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = convert_to_hf_dir(gguf, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(source) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("config.json").is_file() {
            return Err(GgufError::Io { path: dir, source });
        }
    }
    Ok(dir)
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
