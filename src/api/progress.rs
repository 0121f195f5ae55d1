//! Progress lines (docs/stage-contract.md, "Progress"): a stage run may print
//! `{"progress": {...}}` lines on stdout while it works, so the local runner can draw a progress
//! bar with rate and ETA. Other stdout lines are logs. The lines are advisory: the result file
//! stays the only record of what a run did, and Kubernetes simply keeps them in the pod log.

use serde::{Deserialize, Serialize};

/// What a stage has done so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Units done (samples written, optimizer steps taken, answers scored), counting work done
    /// by earlier attempts of the same run.
    pub done: u64,
    /// Units the run will do in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What a unit is: "samples", "steps", "answers".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Training loss of the latest logged step (train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Throughput in tokens per second (train, evaluate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// The stage's own estimate of the seconds left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// A short note on what is happening ("building the tokenizer").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One progress line as printed: `{"progress": {...}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProgressLine {
    /// The progress.
    pub progress: Progress,
}

impl Progress {
    /// The line a stage prints (one JSON object, no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(&ProgressLine {
            progress: self.clone(),
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trips_in_camel_case() {
        let p = Progress {
            done: 3,
            total: Some(10),
            unit: Some("steps".into()),
            loss: Some(1.5),
            tokens_per_second: Some(1200.0),
            eta_seconds: Some(7.0),
            message: None,
        };
        let line = p.to_line();
        assert!(
            line.starts_with(r#"{"progress":{"done":3,"total":10"#),
            "{line}"
        );
        assert!(line.contains("tokensPerSecond"), "{line}");
        let back: ProgressLine = serde_json::from_str(&line).expect("parses");
        assert_eq!(back.progress, p);
    }
}
