//! Text a person reads: the line printed when a stage run ends and the table of rounds printed
//! at the end of a run.

use crate::api::{LlamaDuoMigrationStatus, RoundOutcome, RoundStatus, StageResult, StageRun};

/// One line for a finished stage run, e.g.
/// `  round 1 train       ok  402 steps, loss 0.412, 3100 tok/s  (41.2s)`.
pub fn stage_line(run: &StageRun, result: &StageResult) -> String {
    let what = if result.succeeded {
        let details = if result
            .synthesize
            .as_ref()
            .is_some_and(|s| s.requested == 0 && s.produced == 0)
        {
            // Round 0: synthesis only freezes the coverage split the base student is judged on.
            "coverage split frozen, no samples asked for".to_string()
        } else if let Some(s) = &result.synthesize {
            format!(
                "{} samples ({} malformed, {} duplicates, {} decontaminated dropped)",
                s.produced, s.rejected_malformed, s.deduplicated, s.decontaminated
            )
        } else if let Some(t) = &result.train {
            let epochs = match (t.epochs, t.best_epoch, t.eval_loss) {
                (Some(e), Some(b), Some(l)) => {
                    format!(" ({e} epochs, kept epoch {b}: held-out loss {})", loss(l))
                }
                (Some(e), _, _) => format!(" ({e} epochs)"),
                _ => String::new(),
            };
            let warnings = if t.warnings.is_empty() {
                String::new()
            } else {
                format!("; warning: {}", t.warnings.join("; "))
            };
            format!(
                "{} steps{epochs} on {} samples, loss {}, {:.0} tok/s{warnings}",
                t.steps,
                t.training_samples,
                loss(t.final_loss),
                t.tokens_per_second
            )
        } else if let Some(e) = &result.evaluate {
            format!(
                "mean score {:.1}, pass rate {:.0}% on {} answers",
                e.scores.mean,
                e.scores.pass_rate * 100.0,
                e.answers
            )
        } else {
            String::new()
        };
        format!("ok    {details}")
    } else {
        format!(
            "FAILED (attempt {}{}): {}",
            run.attempt,
            if result.is_permanent_failure() {
                ", permanent: not retried"
            } else {
                ""
            },
            result.message.as_deref().unwrap_or("no reason given")
        )
    };
    let tokens = result.service_tokens.total();
    let tokens = if tokens > 0 {
        format!(", {tokens} service tokens")
    } else {
        String::new()
    };
    format!(
        "  round {} {:<10} {what}{tokens}  ({:.1}s)",
        run.round,
        run.stage.as_str(),
        result.duration_seconds
    )
}

/// Wall time of a round: the sum of its stages' successful attempts.
pub fn round_seconds(r: &RoundStatus) -> f64 {
    r.stages.iter().filter_map(|s| s.duration_seconds).sum()
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// A loss for people: three decimals, or two significant digits below 0.001 (a student that
/// learned a deterministic task reaches 1e-5, which "0.000" would hide).
fn loss(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// The table of rounds: samples, loss, scores, tokens, duration, outcome.
pub fn rounds_table(status: &LlamaDuoMigrationStatus) -> String {
    let header = [
        "round", "new", "trained", "loss", "epoch", "mean", "pass", "tokens", "time", "outcome",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in &status.rounds {
        rows.push(vec![
            r.round.to_string(),
            opt(r.synthesized, |v| v.to_string()),
            opt(r.training_samples, |v| v.to_string()),
            opt(r.train_loss, loss),
            opt(r.best_epoch, |v| v.to_string()),
            opt(r.scores, |s| format!("{:.1}", s.mean)),
            opt(r.scores, |s| format!("{:.0}%", s.pass_rate * 100.0)),
            r.service_tokens.total().to_string(),
            // abs: never print "-0s" for a round whose stages took no measurable time.
            format!("{:.0}s", round_seconds(r).max(0.0).abs()),
            match r.outcome {
                Some(RoundOutcome::Baseline) => "base student",
                Some(RoundOutcome::TargetReached) => "target reached",
                Some(RoundOutcome::BelowTarget) => "below target",
                Some(RoundOutcome::Stopped) => "stopped",
                Some(RoundOutcome::Failed) => "failed",
                None => "running",
            }
            .to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                // Numbers right-aligned, words left-aligned.
                if c == header.len() - 1 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Scores, Stage, StageRecord, SynthesizeOutcome, TokenUsage, TrainOutcome};

    #[test]
    fn the_table_lines_up_and_shows_each_round() {
        let status = LlamaDuoMigrationStatus {
            rounds: vec![
                RoundStatus {
                    round: 1,
                    synthesized: Some(400),
                    training_samples: Some(454),
                    train_loss: Some(0.8123),
                    scores: Some(Scores {
                        mean: 55.25,
                        pass_rate: 0.5,
                        ..Scores::default()
                    }),
                    service_tokens: TokenUsage {
                        input: 100,
                        output: 50,
                    },
                    stages: vec![StageRecord {
                        stage: Stage::Train,
                        attempts: 1,
                        succeeded: true,
                        message: None,
                        duration_seconds: Some(12.4),
                        budget_exhausted: false,
                        failure_class: None,
                        generation: None,
                    }],
                    outcome: Some(RoundOutcome::BelowTarget),
                    ..RoundStatus::default()
                },
                RoundStatus {
                    round: 2,
                    ..RoundStatus::default()
                },
            ],
            ..LlamaDuoMigrationStatus::default()
        };
        let t = rounds_table(&status);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[2].contains("0.812") && lines[2].contains("55.2"),
            "{t}"
        );
        assert!(
            lines[2].contains("150") && lines[2].contains("below target"),
            "{t}"
        );
        assert!(lines[3].ends_with("running"), "{t}");
        assert_eq!(lines[0].find("outcome"), lines[2].find("below"), "{t}");
    }

    #[test]
    fn stage_lines_say_what_happened() {
        let run = StageRun {
            round: 2,
            stage: Stage::Synthesize,
            attempt: 1,
            name: "q-r2-synthesize".into(),
            generation: None,
            progress: None,
        };
        let mut r = StageResult::failure(Stage::Synthesize, 2, "teacher unreachable");
        assert!(stage_line(&run, &r).contains("FAILED (attempt 1): teacher unreachable"));
        r.succeeded = true;
        r.message = None;
        r.failure_class = None;
        r.synthesize = Some(SynthesizeOutcome {
            produced: 40,
            ..SynthesizeOutcome::default()
        });
        r.service_tokens = TokenUsage {
            input: 10,
            output: 5,
        };
        let line = stage_line(&run, &r);
        let mut round0 = r.clone();
        round0.synthesize = Some(SynthesizeOutcome::default());
        assert!(
            stage_line(&run, &round0).contains("coverage split frozen, no samples asked for"),
            "round 0 synthesis only freezes the coverage split"
        );
        assert!(
            line.contains("ok    40 samples") && line.contains("15 service tokens"),
            "{line}"
        );
        r.synthesize = None;
        r.train = Some(TrainOutcome {
            steps: 7,
            final_loss: 0.5,
            ..TrainOutcome::default()
        });
        assert!(stage_line(&run, &r).contains("7 steps"));
        assert_eq!(loss(0.0412), "0.041");
        assert_eq!(loss(0.000_021_4), "2.1e-5");
        assert_eq!(loss(0.0), "0.000");
    }
}
