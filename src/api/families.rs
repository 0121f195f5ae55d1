//! The Hugging Face names of each [`Architecture`]: the `architectures` class and the
//! `model_type` a `config.json` of the family carries. One table, read by the model crate's
//! config reader and by `llamaduo validate` (which checks a local base's config.json offline).

use super::Architecture;

impl Architecture {
    /// Every family, in the order messages list them.
    pub const ALL: [Architecture; 6] = [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Mistral,
        Architecture::Gemma,
        Architecture::Gemma3,
    ];

    /// The transformers class (`architectures[0]` of config.json).
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Gemma => "GemmaForCausalLM",
            Architecture::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// The `model_type` of config.json.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Mistral => "mistral",
            Architecture::Gemma => "gemma",
            Architecture::Gemma3 => "gemma3_text",
        }
    }

    /// The family of a config.json: `architectures[0]` when present, else `model_type`.
    /// The error is what the config names (or that it names nothing).
    pub fn from_hf(class: Option<&str>, model_type: Option<&str>) -> Result<Self, String> {
        if let Some(class) = class {
            return Self::ALL
                .into_iter()
                .find(|a| a.hf_class() == class)
                .ok_or_else(|| class.to_string());
        }
        match model_type {
            Some(t) => Self::ALL
                .into_iter()
                .find(|a| a.hf_model_type() == t)
                .ok_or_else(|| t.to_string()),
            None => Err("<no architectures and no model_type>".to_string()),
        }
    }

    /// "LlamaForCausalLM, ... and Gemma3ForCausalLM (model_type llama, ..., gemma3_text)",
    /// for messages that list what is supported.
    pub fn supported_list() -> String {
        let classes: Vec<&str> = Self::ALL.iter().map(|a| a.hf_class()).collect();
        let types: Vec<&str> = Self::ALL.iter().map(|a| a.hf_model_type()).collect();
        let (last, rest) = classes.split_last().unwrap_or((&"", &[]));
        format!(
            "{} and {last} (model_type {})",
            rest.join(", "),
            types.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_returned() {
        for a in Architecture::ALL {
            assert_eq!(Architecture::from_hf(Some(a.hf_class()), None), Ok(a));
            assert_eq!(Architecture::from_hf(None, Some(a.hf_model_type())), Ok(a));
        }
        // The class wins over model_type, as in transformers' AutoModel mapping.
        assert_eq!(
            Architecture::from_hf(Some("Qwen3ForCausalLM"), Some("llama")),
            Ok(Architecture::Qwen3)
        );
        assert_eq!(
            Architecture::from_hf(Some("GPT2LMHeadModel"), None),
            Err("GPT2LMHeadModel".to_string())
        );
        assert!(Architecture::from_hf(None, None).is_err());
        let list = Architecture::supported_list();
        assert!(
            list.starts_with("LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM")
                && list.contains("and Gemma3ForCausalLM (model_type llama, qwen2, qwen3"),
            "{list}"
        );
    }
}
