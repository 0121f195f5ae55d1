//! What the user sees while a local run works: one line per event on stdout, and while a stage
//! runs a progress bar on stderr (done/total, rate, ETA, and loss or throughput when the stage
//! reports them). With `--json` stdout is kept for the final machine-readable status and the
//! event lines go to stderr without bars.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::{Progress, StageRun};

/// How events are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lines on stdout, bars on stderr when it is a terminal.
    Terminal,
    /// Lines on stderr, no bars (stdout carries JSON).
    Json,
    /// Nothing (tests).
    Silent,
}

/// The terminal display of a run.
pub struct Display {
    mode: Mode,
    bar: Option<ProgressBar>,
}

impl Display {
    /// A display in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self { mode, bar: None }
    }

    /// Prints an event line (above the bar, if one is drawn).
    pub fn line(&self, text: &str) {
        match (self.mode, &self.bar) {
            (Mode::Terminal, Some(bar)) => bar.suspend(|| println!("{text}")),
            (Mode::Terminal, None) => println!("{text}"),
            (Mode::Json, _) => eprintln!("{text}"),
            (Mode::Silent, _) => {}
        }
    }

    /// A stage run started: a fresh bar (a spinner until the stage reports a total).
    pub fn stage_started(&mut self, run: &StageRun) {
        self.finish_bar();
        if self.mode != Mode::Terminal {
            return;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        bar.set_prefix(format!("round {} {:<10}", run.round, run.stage.as_str()));
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }

    /// The running stage reported progress.
    pub fn progress(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        if let Some(total) = p.total
            && bar.length() != Some(total)
        {
            bar.set_length(total);
            bar.set_style(bar_style(p.unit.as_deref().unwrap_or("")));
        }
        bar.set_position(p.done);
        bar.set_message(detail(p));
    }

    /// The running stage ended; `summary` is printed in place of its bar.
    pub fn stage_ended(&mut self, summary: &str) {
        self.finish_bar();
        self.line(summary);
    }

    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.finish_bar();
    }
}

/// Loss, throughput, the stage's own ETA and its note, as shown after the bar.
pub fn detail(p: &Progress) -> String {
    let mut parts = Vec::new();
    if let Some(l) = p.loss {
        parts.push(format!("loss {l:.3}"));
    }
    if let Some(t) = p.tokens_per_second {
        parts.push(format!("{t:.0} tok/s"));
    }
    if let Some(m) = &p.message {
        parts.push(m.clone());
    }
    parts.join("  ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_template(unit: &str) -> String {
    format!("  {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{rate}} eta {{eta}}  {{msg}}")
}

fn bar_style(unit: &str) -> ProgressStyle {
    let template = bar_template(unit);
    ProgressStyle::with_template(&template)
        .map(|s| {
            s.progress_chars("=> ").with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_shows_what_the_stage_reports() {
        let p = Progress {
            done: 1,
            loss: Some(0.5),
            tokens_per_second: Some(1234.4),
            message: Some("epoch 2".into()),
            ..Progress::default()
        };
        assert_eq!(detail(&p), "loss 0.500  1234 tok/s  epoch 2");
        assert_eq!(detail(&Progress::default()), "");
    }

    #[test]
    fn templates_are_valid() {
        ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {msg}").expect("ok");
        ProgressStyle::with_template(&bar_template("steps")).expect("ok");
    }
}
