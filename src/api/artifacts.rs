//! The artifact layout under a migration's root, `{storage.url}/{namespace}/{migration}/{uid}/`
//! in a cluster and `{workdir}/artifacts/{namespace}/{migration}/` with `llamaduo run`
//! (docs/stage-contract.md).
//!
//! Both the stages that write artifacts and the operator that records their URIs derive every
//! path from here, so the layout is spelled once.

/// Paths of a migration's artifacts, relative to its root, plus the root URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactLayout {
    root: String,
}

impl ArtifactLayout {
    /// The layout of the migration `namespace/name` under a storage URL.
    pub fn new(storage_url: &str, namespace: &str, name: &str) -> Self {
        let base = storage_url.trim_end_matches('/');
        Self {
            root: format!("{base}/{namespace}/{name}"),
        }
    }

    /// A layout rooted at an existing migration root URL (as passed in a stage config).
    pub fn from_root(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// The migration's root URL.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The URL of a path relative to the root.
    pub fn url(&self, relative: &str) -> String {
        format!("{}/{}", self.root, relative)
    }

    /// Coverage seeds, frozen at the first round.
    pub const COVERAGE_TRAIN: &'static str = "coverage/train.jsonl";
    /// The frozen test set.
    pub const COVERAGE_TEST: &'static str = "coverage/test.jsonl";
    /// The student's base model when it is built from scratch (written once, by round 1's
    /// train stage, and shared by every later round and by evaluation).
    pub const STUDENT_BASE: &'static str = "student/base";
    /// Written last into a finished model directory: which files it holds and how to load
    /// them. Its presence means the directory is complete.
    pub const MODEL_MANIFEST: &'static str = "llamaduo-model.json";

    /// `round-{n}`.
    pub fn round_dir(round: u32) -> String {
        format!("round-{round}")
    }
    /// `round-{n}/synthetic.jsonl`: that round's new, deduplicated samples.
    pub fn synthetic(round: u32) -> String {
        format!("round-{round}/synthetic.jsonl")
    }
    /// `round-{n}/model`: PEFT adapter or full weights, with tokenizer.json and config.json.
    pub fn model(round: u32) -> String {
        format!("round-{round}/model")
    }
    /// `round-{n}/checkpoints`: resume points for training.
    pub fn checkpoints(round: u32) -> String {
        format!("round-{round}/checkpoints")
    }
    /// `round-{n}/eval`: answers.jsonl, judgements.jsonl, summary.json.
    pub fn eval_dir(round: u32) -> String {
        format!("round-{round}/eval")
    }
    /// `round-{n}/{stage}.result.json`: the stage's result, kept beside its artifacts.
    pub fn result(round: u32, stage: super::Stage) -> String {
        format!("round-{round}/{stage}.result.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Stage;

    #[test]
    fn layout_follows_the_contract() {
        let l = ArtifactLayout::new("file:///artifacts/", "team-a", "tickets");
        assert_eq!(l.root(), "file:///artifacts/team-a/tickets");
        assert_eq!(
            l.url(ArtifactLayout::COVERAGE_TRAIN),
            "file:///artifacts/team-a/tickets/coverage/train.jsonl"
        );
        assert_eq!(ArtifactLayout::synthetic(3), "round-3/synthetic.jsonl");
        assert_eq!(ArtifactLayout::model(2), "round-2/model");
        assert_eq!(ArtifactLayout::checkpoints(2), "round-2/checkpoints");
        assert_eq!(ArtifactLayout::eval_dir(1), "round-1/eval");
        assert_eq!(
            ArtifactLayout::result(1, Stage::Train),
            "round-1/train.result.json"
        );
    }
}
