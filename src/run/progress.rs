//! Reading a stage's stdout: `{"progress": {...}}` lines (docs/stage-contract.md, "Progress")
//! become [`Progress`] values; every other line is a log line.
//!
//! Besides the contract's form, a bare training log line with `step` (and `total_steps` or
//! `totalSteps`, `loss`, `tokens_per_s`, `eta_s`) is understood too, so a trainer that logs
//! its steps as JSON drives the bar without a second line per step.

use serde_json::Value;

use crate::api::{Progress, ProgressLine};

/// The progress a stdout line reports, if any.
pub fn parse_line(line: &str) -> Option<Progress> {
    let line = line.trim();
    if !line.starts_with('{') {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_lines_parse() {
        let p =
            parse_line(r#"{"progress":{"done":5,"total":40,"unit":"samples"}}"#).expect("progress");
        assert_eq!((p.done, p.total), (5, Some(40)));
        assert_eq!(p.unit.as_deref(), Some("samples"));
    }

    #[test]
    fn training_step_lines_parse() {
        let p = parse_line(
            r#"{"step":12,"total_steps":50,"loss":1.25,"tokens_per_s":3400.5,"eta_s":20}"#,
        )
        .expect("step line");
        assert_eq!((p.done, p.total), (12, Some(50)));
        assert_eq!(p.loss, Some(1.25));
        assert_eq!(p.tokens_per_second, Some(3400.5));
        assert_eq!(p.eta_seconds, Some(20.0));
    }

    #[test]
    fn logs_are_not_progress() {
        assert_eq!(parse_line("2026-01-01 INFO starting"), None);
        assert_eq!(parse_line(r#"{"level":"info","msg":"hi"}"#), None);
        assert_eq!(parse_line("{not json"), None);
    }
}
