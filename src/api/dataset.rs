//! Dataset rows (JSONL), compatible with OpenAI fine-tuning files and Hugging Face chat
//! datasets: coverage/train.jsonl, coverage/test.jsonl and round-{n}/synthetic.jsonl all hold
//! one [`DatasetRow`] per line.

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system prompt.
    System,
    /// The user's instruction.
    User,
    /// The model's response.
    Assistant,
}

/// One chat message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

/// Where a row came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RowSource {
    /// The coverage dataset.
    Coverage,
    /// Written by the teacher.
    Synthetic,
}

/// One training or test example.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DatasetRow {
    /// The conversation: optional system message, then user/assistant turns; the last message
    /// is the assistant's answer.
    pub messages: Vec<Message>,
    /// Stable id, unique within the migration's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Coverage or synthetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RowSource>,
    /// For synthetic rows: the teacher model that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    /// For synthetic rows: the id of the coverage row used as the example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_id: Option<String>,
}

/// Why a row is not a usable example.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowError {
    /// No messages at all.
    #[error("messages is empty: a row needs a user message followed by an assistant message")]
    Empty,
    /// The last message is not the assistant's.
    #[error("the last message must have role assistant (the reference answer)")]
    NoAnswer,
    /// No user message before the answer.
    #[error("a user message must come before the assistant's answer")]
    NoPrompt,
    /// A message with empty content.
    #[error("messages[{0}].content is empty")]
    EmptyContent(usize),
}

impl DatasetRow {
    /// A single-turn row.
    pub fn single_turn(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Self {
            messages: vec![
                Message {
                    role: Role::User,
                    content: prompt.into(),
                },
                Message {
                    role: Role::Assistant,
                    content: answer.into(),
                },
            ],
            id: None,
            source: None,
            generator: None,
            seed_id: None,
        }
    }

    /// Checks the row is a usable example: user turn(s) then a final assistant answer.
    pub fn validate(&self) -> Result<(), RowError> {
        let last = self.messages.last().ok_or(RowError::Empty)?;
        if last.role != Role::Assistant {
            return Err(RowError::NoAnswer);
        }
        if !self.messages.iter().any(|m| m.role == Role::User) {
            return Err(RowError::NoPrompt);
        }
        if let Some(i) = self
            .messages
            .iter()
            .position(|m| m.content.trim().is_empty())
        {
            return Err(RowError::EmptyContent(i));
        }
        Ok(())
    }

    /// The conversation before the answer (what the model is prompted with).
    pub fn prompt_messages(&self) -> &[Message] {
        match self.messages.split_last() {
            Some((_, init)) => init,
            None => &[],
        }
    }

    /// The last user message: the instruction.
    pub fn instruction(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
    }

    /// The final assistant message: the reference answer.
    pub fn answer(&self) -> Option<&str> {
        self.messages
            .last()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_fine_tuning_rows() {
        let line = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}"#;
        let row: DatasetRow = serde_json::from_str(line).expect("parses");
        row.validate().expect("valid");
        assert_eq!(row.instruction(), Some("2+2?"));
        assert_eq!(row.answer(), Some("4"));
        assert_eq!(row.prompt_messages().len(), 2);
    }

    #[test]
    fn rejects_rows_without_answer_or_prompt() {
        let mut row = DatasetRow::single_turn("q", "a");
        row.messages.pop();
        assert_eq!(row.validate(), Err(RowError::NoAnswer));
        let row = DatasetRow {
            messages: vec![Message {
                role: Role::Assistant,
                content: "a".into(),
            }],
            ..DatasetRow::single_turn("", "")
        };
        assert_eq!(row.validate(), Err(RowError::NoPrompt));
        assert_eq!(
            DatasetRow::single_turn(" ", "a").validate(),
            Err(RowError::EmptyContent(0))
        );
    }

    #[test]
    fn synthetic_rows_round_trip_with_provenance() {
        let mut row = DatasetRow::single_turn("q", "a");
        row.id = Some("s-1".into());
        row.source = Some(RowSource::Synthetic);
        row.generator = Some("gpt-4o".into());
        row.seed_id = Some("c-7".into());
        let json = serde_json::to_string(&row).expect("serializes");
        assert!(json.contains(r#""source":"synthetic""#));
        let back: DatasetRow = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, row);
    }
}
