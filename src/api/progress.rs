//! Progress lines (docs/stage-contract.md, "Progress"): a stage run may print
//! `{"progress": {...}}` lines on stdout while it works, so the local runner can draw a progress
//! bar with rate and ETA, and the operator can read the last one from the pod log into
//! `status.current.progress` ([`RunProgress`]). Other stdout lines are logs. The lines are
//! advisory: the result file stays the only record of what a run did.
//!
//! Besides the contract's form, a bare training log line with `step` (and `total_steps` or
//! `totalSteps`, `loss`, `tokens_per_s`, `eta_s`) is understood too, so a trainer that logs
//! its steps as JSON drives the bar without a second line per step.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest output line read as progress: a stage's own lines are a few hundred bytes; a
/// longer one is a log line (or garbage) and is not parsed.
pub const MAX_PROGRESS_LINE: usize = 4096;

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
    /// The progress one output line reports, if any (see the module docs for the forms).
    pub fn from_line(line: &str) -> Option<Progress> {
        let line = line.trim();
        if !line.starts_with('{') || line.len() > MAX_PROGRESS_LINE {
            return None;
        }
        if let Ok(p) = serde_json::from_str::<ProgressLine>(line) {
            return Some(p.progress);
        }
        let v: Value = serde_json::from_str(line).ok()?;
        let step = v.get("step")?.as_u64()?;
        let num = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(Value::as_f64));
        Some(Progress {
            done: step,
            total: num(&["total_steps", "totalSteps", "steps"]).map(|t| t as u64),
            unit: Some("steps".into()),
            loss: num(&["loss"]),
            tokens_per_second: num(&["tokens_per_s", "tokens_per_second", "tokensPerSecond"]),
            eta_seconds: num(&["eta_s", "eta", "eta_seconds", "etaSeconds"]),
            message: None,
        })
    }

    /// The last progress line of an output tail (a pod log read with `tailLines`), if any;
    /// lines that are not progress (logs, a line cut by `limitBytes`, garbage) are passed over.
    pub fn last_in(output: &str) -> Option<Progress> {
        output.lines().rev().find_map(Progress::from_line)
    }

    /// The line a stage prints (one JSON object, no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(&ProgressLine {
            progress: self.clone(),
        })
        .unwrap_or_default()
    }
}

/// What a running stage has done, as `status.current.progress` shows it: the stage's last
/// progress line, read by the operator from the pod log (at most once per
/// `--progress-interval-seconds` per migration) or by `llamaduo run` from the process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// What is counted: samples (synthesize), steps (train), answers (evaluate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Units done, counting earlier attempts of the same run.
    pub done: u64,
    /// Units in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// done / total, in whole percent (0-100), when the total is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// The stage's estimate of the seconds left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// The same estimate for people (`1h2m`, `4m30s`, `12s`): the ETA column of kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    /// Training loss of the latest logged step (train).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Throughput in tokens per second (train, evaluate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// The stage's note on what it is doing (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When this progress was read.
    pub observed_time: Time,
}

/// Longest progress message kept in status.
const MAX_MESSAGE_CHARS: usize = 256;

impl RunProgress {
    /// `p` as read at `now`, with percent and ETA derived and odd numbers dropped (a NaN loss,
    /// a negative ETA, done beyond total).
    pub fn new(p: &Progress, now: &Time) -> Self {
        let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
        let percent = p
            .total
            .filter(|t| *t > 0)
            .map(|t| (p.done.min(t).saturating_mul(100) / t) as u32);
        let eta_seconds = finite(p.eta_seconds)
            .filter(|s| *s >= 0.0)
            .map(|s| s.round().min(u64::MAX as f64) as u64);
        Self {
            unit: p.unit.as_ref().map(|u| u.chars().take(32).collect()),
            done: p.done,
            total: p.total,
            percent,
            eta_seconds,
            eta: eta_seconds.map(human_duration),
            loss: finite(p.loss),
            tokens_per_second: finite(p.tokens_per_second).filter(|t| *t >= 0.0),
            message: p
                .message
                .as_ref()
                .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect()),
            observed_time: now.clone(),
        }
    }
}

/// `3725` -> `1h2m`, `270` -> `4m30s`, `12` -> `12s`.
pub fn human_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("time"))
    }

    #[test]
    fn contract_and_training_step_lines_parse() {
        let p = Progress::from_line(r#"{"progress":{"done":5,"total":40,"unit":"samples"}}"#)
            .expect("progress");
        assert_eq!((p.done, p.total), (5, Some(40)));
        assert_eq!(p.unit.as_deref(), Some("samples"));
        let p = Progress::from_line(
            r#"{"step":12,"total_steps":50,"loss":1.25,"tokens_per_s":3400.5,"eta_s":20}"#,
        )
        .expect("step line");
        assert_eq!((p.done, p.total), (12, Some(50)));
        assert_eq!(p.loss, Some(1.25));
        assert_eq!(p.tokens_per_second, Some(3400.5));
        assert_eq!(p.eta_seconds, Some(20.0));
    }

    #[test]
    fn logs_garbage_and_oversized_lines_are_not_progress() {
        assert_eq!(Progress::from_line("2026-01-01 INFO starting"), None);
        assert_eq!(Progress::from_line(r#"{"level":"info","msg":"hi"}"#), None);
        assert_eq!(Progress::from_line("{not json"), None);
        assert_eq!(Progress::from_line(r#"{"progress":{"done":"x"}}"#), None);
        let huge = format!(
            r#"{{"progress":{{"done":1,"message":"{}"}}}}"#,
            "x".repeat(MAX_PROGRESS_LINE)
        );
        assert_eq!(Progress::from_line(&huge), None);
    }

    #[test]
    fn the_last_progress_line_of_a_log_tail_wins() {
        let tail = concat!(
            "{\"progress\":{\"done\":3,\"total\":10}}\n",
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"step\"}}\n",
            "{\"progress\":{\"done\":7,\"total\":10}}\n",
            "{\"progress\":{\"done\":8,\"tot",
        );
        assert_eq!(Progress::last_in(tail).map(|p| p.done), Some(7));
        assert_eq!(Progress::last_in("no progress yet\n"), None);
        assert_eq!(Progress::last_in(""), None);
    }

    #[test]
    fn status_progress_derives_percent_and_eta_and_drops_odd_numbers() {
        let p = Progress {
            done: 30,
            total: Some(120),
            unit: Some("steps".into()),
            loss: Some(f64::NAN),
            tokens_per_second: Some(1500.0),
            eta_seconds: Some(270.4),
            message: Some("é".repeat(1000)),
        };
        let r = RunProgress::new(&p, &at(100));
        assert_eq!(r.percent, Some(25));
        assert_eq!(
            (r.eta_seconds, r.eta.as_deref()),
            (Some(270), Some("4m30s"))
        );
        assert_eq!(r.loss, None);
        assert_eq!(r.message.as_ref().map(|m| m.chars().count()), Some(256));
        let over = Progress {
            done: 500,
            total: Some(100),
            eta_seconds: Some(-3.0),
            ..Progress::default()
        };
        let r = RunProgress::new(&over, &at(100));
        assert_eq!((r.percent, r.eta_seconds), (Some(100), None));
        let unknown = RunProgress::new(&Progress::default(), &at(1));
        assert_eq!((unknown.percent, unknown.eta), (None, None));
        assert_eq!(human_duration(3725), "1h2m");
        assert_eq!(human_duration(12), "12s");
    }

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
