//! Hugging Face model directories: `config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json` and `chat_template.jinja` (both optional) and safetensors
//! weights, single-file or sharded with `model.safetensors.index.json`. Files are checked up
//! front so a missing or truncated file is reported by name, then the weights are
//! memory-mapped into a [`VarBuilder`] that casts to the requested dtype as tensors are read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde_json::Value;

use crate::chat_template::{ChatTemplate, ChatTemplateError};
use crate::tokenizer::{TextTokenizer, TokenizerError};

/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Why a model directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HubDirError {
    /// The path is not a directory.
    #[error("{0} is not a model directory (expected a folder with config.json)")]
    NotADirectory(PathBuf),
    /// A required file is absent.
    #[error("{path} is missing: {hint}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is present but malformed.
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer files are wrong.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The chat template is wrong.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    /// candle failed to map the weights.
    #[error("cannot map the weights of {dir}: {message}")]
    Weights {
        /// The model directory.
        dir: PathBuf,
        /// candle's message.
        message: String,
    },
}

/// One tensor's entry in a safetensors header.
#[derive(Deserialize, Debug, Clone)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// A tensor described by a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// safetensors dtype name (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// The shard holding it.
    pub file: PathBuf,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// A checked Hugging Face model directory.
#[derive(Debug, Clone)]
pub struct HubDir {
    dir: PathBuf,
    config: Value,
    generation_config: Option<Value>,
    weight_files: Vec<PathBuf>,
    tensors: BTreeMap<String, TensorMeta>,
}

fn read_json(path: &Path) -> Result<Value, HubDirError> {
    let text = std::fs::read_to_string(path).map_err(|source| HubDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| HubDirError::Corrupt {
        path: path.to_owned(),
        message: format!("not valid JSON: {e}"),
    })
}

/// Reads and checks a safetensors header: the header parses, offsets are contiguous and
/// in bounds, and the file is exactly as long as the header says (a truncated download fails
/// here, by name, rather than as a bus error later through the memory map).
pub fn read_safetensors_header(
    path: &Path,
) -> Result<BTreeMap<String, (String, Vec<usize>)>, HubDirError> {
    let corrupt = |message: String| HubDirError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let io = |source| HubDirError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|_| {
        corrupt(format!(
            "only {file_len} bytes, too short for a safetensors header"
        ))
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(corrupt(format!(
            "header length {header_len} does not fit in a file of {file_len} bytes"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io)?;
    let raw: HashMap<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let mut out = BTreeMap::new();
    let mut data_end = 0u64;
    for (name, v) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| corrupt(format!("tensor {name}: bad header entry: {e}")))?;
        let (begin, end) = e.data_offsets;
        if end < begin {
            return Err(corrupt(format!("tensor {name}: data_offsets reversed")));
        }
        data_end = data_end.max(end);
        out.insert(name, (e.dtype, e.shape));
    }
    // Checked: data_offsets are the file's word, and `8 + header + u64::MAX` panicked (debug)
    // or wrapped round (release) to a length that could match the file.
    let expected = (8 + header_len).checked_add(data_end).ok_or_else(|| {
        corrupt(format!(
            "a tensor's data_offsets end at byte {data_end}, past any file size"
        ))
    })?;
    if expected != file_len {
        return Err(corrupt(format!(
            "header describes {expected} bytes but the file has {file_len} (truncated or damaged download?)"
        )));
    }
    Ok(out)
}

impl HubDir {
    /// Opens and checks a model directory: config.json parses, tokenizer.json exists, the
    /// weights are present with valid headers, and a sharded index names only existing shards
    /// that hold the tensors it lists.
    pub fn open(dir: &Path) -> Result<Self, HubDirError> {
        if !dir.is_dir() {
            return Err(HubDirError::NotADirectory(dir.to_owned()));
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(HubDirError::Missing {
                path: config_path,
                hint: "a Hugging Face model directory needs config.json (save it with save_pretrained)",
            });
        }
        let config = read_json(&config_path)?;
        if !config.is_object() {
            return Err(HubDirError::Corrupt {
                path: config_path,
                message: "expected a JSON object".into(),
            });
        }
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(HubDirError::Missing {
                path: tok_path,
                hint: "a fast tokenizer file is required (save the tokenizer with transformers' PreTrainedTokenizerFast)",
            });
        }
        let gen_path = dir.join("generation_config.json");
        let generation_config = if gen_path.exists() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        let (weight_files, tensors) = Self::check_weights(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            generation_config,
            weight_files,
            tensors,
        })
    }

    fn check_weights(
        dir: &Path,
    ) -> Result<(Vec<PathBuf>, BTreeMap<String, TensorMeta>), HubDirError> {
        let single = dir.join(WEIGHTS_FILE);
        let index_path = dir.join(WEIGHTS_INDEX_FILE);
        let mut tensors = BTreeMap::new();
        if index_path.exists() {
            let index: IndexFile =
                serde_json::from_value(read_json(&index_path)?).map_err(|e| {
                    HubDirError::Corrupt {
                        path: index_path.clone(),
                        message: format!("expected {{\"weight_map\": {{tensor: file}}}}: {e}"),
                    }
                })?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            if shards.is_empty() {
                return Err(HubDirError::Corrupt {
                    path: index_path,
                    message: "weight_map is empty".into(),
                });
            }
            let mut headers = HashMap::new();
            let mut files = Vec::new();
            for shard in shards {
                if shard.contains('/') || shard.contains("..") {
                    return Err(HubDirError::Corrupt {
                        path: index_path.clone(),
                        message: format!("shard name {shard:?} must be a file in the directory"),
                    });
                }
                let path = dir.join(shard);
                if !path.exists() {
                    return Err(HubDirError::Missing {
                        path,
                        hint: "the shard is listed in model.safetensors.index.json; download it again",
                    });
                }
                headers.insert(shard.clone(), read_safetensors_header(&path)?);
                files.push(path);
            }
            for (name, shard) in &index.weight_map {
                let header = &headers[shard];
                let (dtype, shape) = header.get(name).ok_or_else(|| HubDirError::Corrupt {
                    path: dir.join(shard),
                    message: format!("tensor {name} is listed in the index but not in this shard"),
                })?;
                tensors.insert(
                    name.clone(),
                    TensorMeta {
                        dtype: dtype.clone(),
                        shape: shape.clone(),
                        file: dir.join(shard),
                    },
                );
            }
            Ok((files, tensors))
        } else if single.exists() {
            for (name, (dtype, shape)) in read_safetensors_header(&single)? {
                tensors.insert(
                    name,
                    TensorMeta {
                        dtype,
                        shape,
                        file: single.clone(),
                    },
                );
            }
            Ok((vec![single], tensors))
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() {
                "only safetensors weights are supported; convert pytorch_model.bin with save_pretrained(safe_serialization=True)"
            } else {
                "expected model.safetensors or model.safetensors.index.json with its shards"
            };
            Err(HubDirError::Missing { path: single, hint })
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `config.json` as parsed JSON (the model code deserializes its own config type).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// `generation_config.json`, if present.
    pub fn generation_config(&self) -> Option<&Value> {
        self.generation_config.as_ref()
    }

    /// `config.json`'s `model_type` (`llama`, `qwen2`, `mistral`, `gemma`, ...).
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(Value::as_str)
    }

    /// The safetensors files.
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.weight_files
    }

    /// Every tensor in the weights, with dtype, shape and shard.
    pub fn tensors(&self) -> &BTreeMap<String, TensorMeta> {
        &self.tensors
    }

    /// Loads the tokenizer with its special tokens.
    pub fn tokenizer(&self) -> Result<TextTokenizer, HubDirError> {
        Ok(TextTokenizer::from_dir(&self.dir)?)
    }

    /// The chat template: `override_source` (the spec's `student.chatTemplate`), else the
    /// model's own, else ChatML.
    pub fn chat_template(
        &self,
        tokenizer: &TextTokenizer,
        override_source: Option<&str>,
    ) -> Result<ChatTemplate, HubDirError> {
        Ok(ChatTemplate::for_tokenizer(tokenizer, override_source)?)
    }

    /// Memory-maps the weights into a [`VarBuilder`]; tensors are cast to `dtype` on `get`.
    pub fn var_builder(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, HubDirError> {
        // SAFETY: the files are mapped read-only; they were checked for size above, and the
        // trainer never writes into a model directory it is reading from.
        unsafe { VarBuilder::from_mmaped_safetensors(&self.weight_files, dtype, device) }.map_err(
            |e| HubDirError::Weights {
                dir: self.dir.clone(),
                message: e.to_string(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn write_model(dir: &Path, tensors: &[(&str, Tensor)]) {
        std::fs::write(dir.join("config.json"), r#"{"model_type":"llama"}"#).expect("config");
        std::fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| ((*n).to_owned(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join(WEIGHTS_FILE)).expect("save");
    }

    #[test]
    fn opens_single_file_and_casts_on_load() {
        let tmp = tempfile::tempdir().expect("tmp");
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .and_then(|t| t.reshape((2, 3)))
            .expect("tensor");
        write_model(tmp.path(), &[("a.weight", t)]);
        let hub = HubDir::open(tmp.path()).expect("opens");
        assert_eq!(hub.model_type(), Some("llama"));
        assert_eq!(hub.tensors()["a.weight"].shape, vec![2, 3]);
        let vb = hub.var_builder(DType::BF16, &Device::Cpu).expect("maps");
        let got = vb.get((2, 3), "a.weight").expect("gets");
        assert_eq!(got.dtype(), DType::BF16);
    }

    #[test]
    fn truncated_weights_are_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let t = Tensor::zeros((16, 16), DType::F32, &Device::Cpu).expect("tensor");
        write_model(tmp.path(), &[("a.weight", t)]);
        let path = tmp.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("truncate");
        let err = HubDir::open(tmp.path()).expect_err("corrupt");
        let msg = err.to_string();
        assert!(msg.contains("model.safetensors is corrupt"), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn missing_files_are_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let err = HubDir::open(tmp.path()).expect_err("no config");
        assert!(err.to_string().contains("config.json is missing"), "{err}");
        std::fs::write(tmp.path().join("config.json"), "{").expect("write");
        let err = HubDir::open(tmp.path()).expect_err("bad config");
        assert!(err.to_string().contains("config.json is corrupt"), "{err}");
        std::fs::write(tmp.path().join("config.json"), "{}").expect("write");
        let err = HubDir::open(tmp.path()).expect_err("no tokenizer");
        assert!(
            err.to_string().contains("tokenizer.json is missing"),
            "{err}"
        );
        std::fs::write(tmp.path().join("tokenizer.json"), "{}").expect("write");
        let err = HubDir::open(tmp.path()).expect_err("no weights");
        assert!(
            err.to_string().contains("model.safetensors is missing"),
            "{err}"
        );
    }

    #[test]
    fn sharded_index_is_checked() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        std::fs::write(dir.join("config.json"), "{}").expect("config");
        std::fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
        let a = Tensor::ones((2, 2), DType::F32, &Device::Cpu).expect("a");
        let b = Tensor::zeros(3, DType::F32, &Device::Cpu).expect("b");
        candle_core::safetensors::save(
            &HashMap::from([("a".to_owned(), a)]),
            dir.join("model-00001-of-00002.safetensors"),
        )
        .expect("shard 1");
        candle_core::safetensors::save(
            &HashMap::from([("b".to_owned(), b)]),
            dir.join("model-00002-of-00002.safetensors"),
        )
        .expect("shard 2");
        let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index).expect("index");
        let hub = HubDir::open(dir).expect("opens");
        assert_eq!(hub.weight_files().len(), 2);
        let vb = hub.var_builder(DType::F32, &Device::Cpu).expect("maps");
        let b = vb.get(3, "b").expect("b from shard 2");
        assert_eq!(b.to_vec1::<f32>().expect("vec"), vec![0.0; 3]);
        // An index naming a tensor its shard lacks.
        let bad = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#;
        std::fs::write(dir.join(WEIGHTS_INDEX_FILE), bad).expect("index");
        let err = HubDir::open(dir).expect_err("missing tensor");
        assert!(err.to_string().contains("tensor c is listed"), "{err}");
        // A missing shard.
        std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).expect("rm");
        std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index).expect("index");
        let err = HubDir::open(dir).expect_err("missing shard");
        assert!(
            err.to_string()
                .contains("model-00002-of-00002.safetensors is missing"),
            "{err}"
        );
    }
}
