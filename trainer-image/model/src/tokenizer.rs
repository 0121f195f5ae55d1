//! Text tokenizers: loading a Hugging Face `tokenizer.json` with the special tokens named in
//! `tokenizer_config.json` / `config.json` / `generation_config.json`, and training a
//! byte-level BPE tokenizer on the training data for `fromScratch` students.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::{TokenIds, token_ids_or_none};

/// ChatML turn start.
pub const IM_START: &str = "<|im_start|>";
/// ChatML turn end (also the end-of-sequence token of ChatML models).
pub const IM_END: &str = "<|im_end|>";
/// End of text; the padding token of models built from scratch.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// File in which transformers (4.47 and later) saves the chat template instead of
/// `tokenizer_config.json`'s `chat_template` field.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The special tokens of a `fromScratch` tokenizer, in id order (0, 1, 2).
pub const CHATML_SPECIALS: [&str; 3] = [END_OF_TEXT, IM_START, IM_END];

/// Strings that end an assistant turn in the chat templates of the supported families. When a
/// model's template uses one of them, generation stops on it as well as on the EOS token.
pub const END_OF_TURN_MARKERS: [&str; 5] =
    [IM_END, "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>"];

/// Why a tokenizer could not be loaded, trained or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file exists but does not parse.
    #[error("{path} is not a valid {what}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the file should have been.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A special token named by the configuration is not in the vocabulary.
    #[error(
        "{field} = {token:?} is not in the tokenizer's vocabulary; fix {field} in tokenizer_config.json"
    )]
    UnknownSpecial {
        /// The configuration field (`eos_token`, ...).
        field: &'static str,
        /// The token text.
        token: String,
    },
    /// An id named by the configuration is outside the vocabulary.
    #[error("{field} = {id} is outside the vocabulary of {vocab} tokens")]
    IdOutOfRange {
        /// The configuration field.
        field: &'static str,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// Nothing says which token ends a sequence.
    #[error(
        "no end-of-sequence token: set eos_token in tokenizer_config.json or eos_token_id in config.json"
    )]
    NoEos,
    /// Bad arguments to BPE training.
    #[error("cannot train a BPE tokenizer: {0}")]
    Train(String),
    /// The tokenizers library failed.
    #[error("tokenizer failed: {0}")]
    Tokenizers(String),
}

fn tk_err(e: tokenizers::Error) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// A special token in `tokenizer_config.json`: either a plain string or an `AddedToken` object.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum TokenSpec {
    /// `"eos_token": "<|im_end|>"`.
    Text(String),
    /// `"eos_token": {"content": "<|im_end|>", ...}`.
    Object {
        /// The token text.
        content: String,
    },
}

impl TokenSpec {
    /// The token text.
    pub fn text(&self) -> &str {
        match self {
            Self::Text(s) | Self::Object { content: s } => s,
        }
    }
}

/// A chat template entry: older configs hold a list of named templates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum TemplateSpec {
    /// One template.
    Single(String),
    /// Named templates; `default` is the chat template.
    Named(Vec<NamedTemplate>),
}

/// One named template of a [`TemplateSpec::Named`] list.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct NamedTemplate {
    /// Template name (`default`, `tool_use`, ...).
    pub name: String,
    /// Jinja source.
    pub template: String,
}

/// The fields of `tokenizer_config.json` the trainer uses (all optional; unknown fields are
/// ignored on read).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct TokenizerConfig {
    /// Beginning-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<TokenSpec>,
    /// End-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<TokenSpec>,
    /// Padding token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token: Option<TokenSpec>,
    /// Unknown token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unk_token: Option<TokenSpec>,
    /// The Jinja chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<TemplateSpec>,
    /// Longest sequence the model was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_max_length: Option<f64>,
    /// Tokenizer class for transformers (`PreTrainedTokenizerFast` for ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_class: Option<String>,
    /// Whether encoding a plain text prepends the BOS token (Gemma, Llama 2: yes). In a
    /// `tokenizer.json` the post-processor does it; see [`TextTokenizer::encode_text`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_bos_token: Option<bool>,
    /// Whether encoding a plain text appends the EOS token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_eos_token: Option<bool>,
}

impl TokenizerConfig {
    /// The chat template source: the single template, or the one named `default`.
    pub fn template(&self) -> Option<&str> {
        match self.chat_template.as_ref()? {
            TemplateSpec::Single(s) => Some(s),
            TemplateSpec::Named(list) => list
                .iter()
                .find(|t| t.name == "default")
                .map(|t| t.template.as_str()),
        }
    }

    /// Reads `tokenizer_config.json`.
    pub fn read(path: &Path) -> Result<Self, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| TokenizerError::Parse {
            path: path.to_owned(),
            what: "tokenizer_config.json",
            message: e.to_string(),
        })
    }

    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), TokenizerError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| TokenizerError::Parse {
            path: path.to_owned(),
            what: "tokenizer_config.json",
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(|source| TokenizerError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// The special-token fields of `config.json` / `generation_config.json`: one id or a list;
/// `null` and negative ids (`"pad_token_id": -1`) mean none, as for [`crate::config`].
#[derive(Deserialize, Default, Debug)]
struct IdFields {
    #[serde(default, deserialize_with = "token_ids_or_none")]
    bos_token_id: Option<TokenIds>,
    #[serde(default, deserialize_with = "token_ids_or_none")]
    eos_token_id: Option<TokenIds>,
    #[serde(default, deserialize_with = "token_ids_or_none")]
    pad_token_id: Option<TokenIds>,
}

fn read_id_fields(path: &Path) -> Result<IdFields, TokenizerError> {
    if !path.exists() {
        return Ok(IdFields::default());
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Parse {
        path: path.to_owned(),
        what: "JSON configuration",
        message: e.to_string(),
    })
}

/// A byte range `(start, end)` of a text.
pub type ByteSpan = (usize, usize);

/// A tokenizer with the special tokens the trainer and generator need.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    config: TokenizerConfig,
    /// The model's chat template: `chat_template.jinja`, else tokenizer_config.json's.
    chat_template: Option<String>,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    pad_id: u32,
    special_ids: HashSet<u32>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from a Hugging Face model directory, with special tokens from
    /// `tokenizer_config.json`, `config.json` and `generation_config.json` where present, and
    /// the chat template from `chat_template.jinja` (where transformers saves it since 4.47)
    /// or else `tokenizer_config.json`'s `chat_template`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|source| TokenizerError::Io {
            path: tok_path.clone(),
            source,
        })?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Parse {
            path: tok_path.clone(),
            what: "tokenizer.json",
            message: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.exists() {
            TokenizerConfig::read(&cfg_path)?
        } else {
            TokenizerConfig::default()
        };
        let model = read_id_fields(&dir.join("config.json"))?;
        let generation = read_id_fields(&dir.join("generation_config.json"))?;
        // transformers reads the .jinja file first and the config field only without it.
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let template = if jinja_path.is_file() {
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|source| TokenizerError::Io {
                    path: jinja_path.clone(),
                    source,
                })?,
            )
        } else {
            config.template().map(str::to_owned)
        };
        Self::new(inner, config, template, &model, &generation)
    }

    /// Wraps an in-memory tokenizer (for example one from [`train_bpe`]) with its config.
    pub fn from_parts(inner: Tokenizer, config: TokenizerConfig) -> Result<Self, TokenizerError> {
        let template = config.template().map(str::to_owned);
        Self::new(
            inner,
            config,
            template,
            &IdFields::default(),
            &IdFields::default(),
        )
    }

    fn new(
        inner: Tokenizer,
        config: TokenizerConfig,
        chat_template: Option<String>,
        model: &IdFields,
        generation: &IdFields,
    ) -> Result<Self, TokenizerError> {
        let vocab = inner.get_vocab_size(true);
        let lookup = |field: &'static str, spec: &Option<TokenSpec>| -> Result<Option<u32>, _> {
            match spec {
                None => Ok(None),
                Some(t) => inner.token_to_id(t.text()).map(Some).ok_or_else(|| {
                    TokenizerError::UnknownSpecial {
                        field,
                        token: t.text().to_owned(),
                    }
                }),
            }
        };
        let check = |field: &'static str, id: u32| {
            if (id as usize) < vocab {
                Ok(id)
            } else {
                Err(TokenizerError::IdOutOfRange { field, id, vocab })
            }
        };
        let bos_id = match lookup("bos_token", &config.bos_token)? {
            Some(id) => Some(id),
            None => match generation
                .bos_token_id
                .as_ref()
                .or(model.bos_token_id.as_ref())
            {
                Some(ids) => ids
                    .to_vec()
                    .first()
                    .map(|&i| check("bos_token_id", i))
                    .transpose()?,
                None => None,
            },
        };
        // Every id that may end a generation: generation_config's list (Llama 3 has several),
        // config.json's, the tokenizer's eos token, and the template's end-of-turn marker.
        let mut eos: BTreeSet<u32> = BTreeSet::new();
        for ids in [&generation.eos_token_id, &model.eos_token_id]
            .into_iter()
            .flatten()
        {
            for id in ids.to_vec() {
                eos.insert(check("eos_token_id", id)?);
            }
        }
        let eos_token_id = lookup("eos_token", &config.eos_token)?;
        eos.extend(eos_token_id);
        // Without a template of its own the model is trained and prompted with the ChatML
        // fallback, whose turns end in <|im_end|>: when that is a token, generation must
        // stop on it too. (It is not made the only EOS of a model that names none: that
        // stays an error asking for the configuration.)
        let template = match chat_template.as_deref() {
            Some(t) => t,
            None if !eos.is_empty() => crate::chat_template::CHATML_TEMPLATE,
            None => "",
        };
        for marker in END_OF_TURN_MARKERS {
            if template.contains(marker)
                && let Some(id) = inner.token_to_id(marker)
            {
                eos.insert(id);
            }
        }
        // Preferred id first: the tokenizer's eos token, else the smallest configured id.
        let mut eos_ids: Vec<u32> = Vec::with_capacity(eos.len());
        eos_ids.extend(eos_token_id);
        eos_ids.extend(eos.iter().copied().filter(|&i| Some(i) != eos_token_id));
        let first_eos = *eos_ids.first().ok_or(TokenizerError::NoEos)?;
        let pad_id = match lookup("pad_token", &config.pad_token)? {
            Some(id) => id,
            None => match generation
                .pad_token_id
                .as_ref()
                .or(model.pad_token_id.as_ref())
            {
                Some(ids) => match ids.to_vec().first() {
                    Some(&i) => check("pad_token_id", i)?,
                    None => first_eos,
                },
                None => first_eos,
            },
        };
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        Ok(Self {
            inner,
            config,
            chat_template,
            bos_id,
            eos_ids,
            pad_id,
            special_ids,
        })
    }

    /// Token ids of a text, without adding BOS/EOS (chat templates write those themselves).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a plain text prompt (not a chat), with the special tokens the tokenizer
    /// adds around a text: Gemma's and Llama 2's `<bos>` / `<s>`, nothing for byte-level BPE
    /// tokenizers. This is transformers' `tokenizer(text)`, which completion endpoints use;
    /// Gemma without its `<bos>` writes nonsense.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, true).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a text with the byte range of `text` each token came from (as
    /// [`Self::encode`], no BOS/EOS added). A token that a normalizer or pre-tokenizer
    /// inserted (a SentencePiece `▁`) gets the range of the text it is attached to.
    pub fn encode_with_offsets(
        &self,
        text: &str,
    ) -> Result<(Vec<u32>, Vec<ByteSpan>), TokenizerError> {
        // `encode` reports byte offsets into the original text (`encode_fast` reports none).
        let enc = self.inner.encode(text, false).map_err(tk_err)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of token ids; `skip_special` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special).map_err(tk_err)
    }

    /// Id of a token string, if in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// BOS token text, for chat templates.
    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.and_then(|i| self.inner.id_to_token(i))
    }

    /// Ids that end a generation, preferred first (never empty).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// EOS token text, for chat templates.
    pub fn eos_token(&self) -> Option<String> {
        match &self.config.eos_token {
            Some(t) => Some(t.text().to_owned()),
            None => self
                .eos_ids
                .first()
                .and_then(|&i| self.inner.id_to_token(i)),
        }
    }

    /// The padding id (the EOS id when the model names none).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Whether an id is a special added token (`<|im_end|>`, `<|endoftext|>`, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Texts of the special added tokens.
    pub fn special_tokens(&self) -> Vec<String> {
        let mut v: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// The model's own chat template, if it has one (`chat_template.jinja` or
    /// `tokenizer_config.json`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The parsed `tokenizer_config.json`.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Trains a byte-level BPE tokenizer on `texts`, the way GPT-2/Qwen tokenizers are built:
/// ByteLevel pre-tokenizer (GPT-2 split regex, no prefix space), the full 256-symbol byte
/// alphabet (so any text encodes, even characters absent from the data), ByteLevel decoder,
/// and `specials` as special added tokens with ids `0..specials.len()`.
///
/// The vocabulary holds at least `256 + specials.len()` tokens whatever `vocab_size` says,
/// because every byte must stay encodable, and fewer than `vocab_size` when the data has no
/// more pairs occurring at least twice: size the model by the result's
/// `get_vocab_size(true)`.
pub fn train_bpe<S: AsRef<str> + Send + Sync>(
    texts: &[S],
    vocab_size: usize,
    specials: &[&str],
) -> Result<Tokenizer, TokenizerError> {
    if texts.iter().all(|t| t.as_ref().is_empty()) {
        return Err(TokenizerError::Train(
            "no training text: the dataset is empty".into(),
        ));
    }
    let mut seen = HashSet::new();
    for s in specials {
        if s.is_empty() || !seen.insert(*s) {
            return Err(TokenizerError::Train(format!(
                "special tokens must be distinct and non-empty, got {specials:?}"
            )));
        }
    }
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let specials_added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size.max(alphabet.len() + specials.len()))
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet)
        .special_tokens(specials_added)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(
        ByteLevel::default()
            .add_prefix_space(false)
            .trim_offsets(true)
            .use_regex(true),
    ));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(ByteLevelProcessor::default().trim_offsets(false)));
    tokenizer
        .train(&mut trainer, texts.iter().map(|t| t.as_ref()))
        .map_err(|e| TokenizerError::Train(e.to_string()))?;
    Ok(tokenizer)
}

/// Saves a tokenizer as `tokenizer.json`.
pub fn save_tokenizer(tokenizer: &Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    let json = tokenizer.to_string(true).map_err(tk_err)?;
    std::fs::write(path, json).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Vocabulary as a map from token text to id (added tokens included).
pub fn vocab_of(tokenizer: &Tokenizer) -> HashMap<String, u32> {
    tokenizer.get_vocab(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| {
                format!(
                    "Summarize ticket {i}: the printer on floor {} jams when printing {} pages.",
                    i % 7,
                    i * 3
                )
            })
            .collect()
    }

    #[test]
    fn trains_bpe_with_chatml_specials_first() {
        let tok = train_bpe(&corpus(), 400, &CHATML_SPECIALS).expect("trains");
        assert_eq!(tok.token_to_id(END_OF_TEXT), Some(0));
        assert_eq!(tok.token_to_id(IM_START), Some(1));
        assert_eq!(tok.token_to_id(IM_END), Some(2));
        assert_eq!(tok.get_vocab_size(true), 400);
        // Specials are split out of running text as single tokens.
        let enc = tok
            .encode_fast("<|im_start|>user\nhi<|im_end|>", false)
            .expect("encodes");
        assert_eq!(enc.get_ids()[0], 1);
        assert_eq!(*enc.get_ids().last().expect("ids"), 2);
    }

    #[test]
    fn tiny_vocab_keeps_the_byte_alphabet() {
        let tok = train_bpe(&corpus(), 64, &CHATML_SPECIALS).expect("trains");
        assert_eq!(tok.get_vocab_size(true), 256 + 3);
        let text = "日本語 ✓ never seen";
        let ids = tok.encode_fast(text, false).expect("encodes");
        assert_eq!(tok.decode(ids.get_ids(), false).expect("decodes"), text);
    }

    #[test]
    fn rejects_empty_data_and_duplicate_specials() {
        let empty: Vec<String> = vec![];
        assert!(matches!(
            train_bpe(&empty, 300, &CHATML_SPECIALS),
            Err(TokenizerError::Train(_))
        ));
        assert!(matches!(
            train_bpe(&corpus(), 300, &[IM_END, IM_END]),
            Err(TokenizerError::Train(_))
        ));
    }

    #[test]
    fn token_specs_parse_strings_and_objects() {
        let cfg: TokenizerConfig = serde_json::from_str(
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "chat_template": [{"name": "default", "template": "T"}, {"name": "x", "template": "U"}],
                "added_tokens_decoder": {}}"#,
        )
        .expect("parses");
        assert_eq!(cfg.bos_token.as_ref().map(TokenSpec::text), Some("<s>"));
        assert_eq!(cfg.eos_token.as_ref().map(TokenSpec::text), Some("</s>"));
        assert_eq!(cfg.template(), Some("T"));
    }
}
