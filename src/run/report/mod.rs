//! The report of a local run: `DIR/report.html` (self-contained: inline CSS and SVG, no network
//! assets) and `DIR/report.png`, both showing the mean score per round against the target and
//! the service tokens per round, plus the best model's path.

mod html;
mod png;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::api::LlamaDuoMigrationStatus;

use super::manifest::LocalMigration;
use super::status_file::write_atomically;

pub use html::render_html;
pub use png::render_png;

/// What both renderings show.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportData {
    /// `namespace/name`.
    pub title: String,
    /// The target mean score.
    pub target: f64,
    /// (round, mean score) of every scored round.
    pub scores: Vec<(u32, f64)>,
    /// (round, service tokens) of every round.
    pub tokens: Vec<(u32, u64)>,
    /// Phase and message.
    pub phase: String,
    /// The latest decision.
    pub message: String,
    /// "round N, mean score S, PATH" of the best round.
    pub best: Option<String>,
}

impl ReportData {
    /// The data of `status` for `migration`.
    pub fn new(migration: &LocalMigration, status: &LlamaDuoMigrationStatus) -> Self {
        Self {
            title: format!("{}/{}", migration.namespace, migration.name),
            target: migration.spec.target.mean_score,
            scores: status
                .rounds
                .iter()
                .filter_map(|r| r.scores.map(|s| (r.round, s.mean)))
                .collect(),
            tokens: status
                .rounds
                .iter()
                .map(|r| (r.round, r.service_tokens.total()))
                .collect(),
            phase: format!("{:?}", status.phase.unwrap_or_default()),
            message: status.message.clone().unwrap_or_default(),
            best: status.best.as_ref().map(|b| {
                format!(
                    "round {}, mean score {:.1}, {}",
                    b.round,
                    b.mean_score,
                    super::display_uri(&b.model_uri)
                )
            }),
        }
    }

    /// Highest round shown (at least 1).
    pub fn last_round(&self) -> u32 {
        self.tokens
            .iter()
            .map(|t| t.0)
            .chain(self.scores.iter().map(|s| s.0))
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// Top of the tokens axis: a round number above the largest value.
    pub fn tokens_axis_max(&self) -> u64 {
        nice_ceiling(self.tokens.iter().map(|t| t.1).max().unwrap_or(0))
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (at least 10).
pub fn nice_ceiling(v: u64) -> u64 {
    let mut p = 1u64;
    loop {
        for m in [1, 2, 5] {
            let c = m * p;
            if c >= v.max(10) {
                return c;
            }
        }
        p = p.saturating_mul(10);
    }
}

/// A compact axis label: 750, 2.5k, 20k, 1.2M.
pub fn short_number(v: f64) -> String {
    let (scaled, suffix) = if v >= 1_000_000.0 {
        (v / 1_000_000.0, "M")
    } else if v >= 1000.0 {
        (v / 1000.0, "k")
    } else {
        (v, "")
    };
    if (scaled - scaled.round()).abs() < 0.05 {
        format!("{scaled:.0}{suffix}")
    } else {
        format!("{scaled:.1}{suffix}")
    }
}

/// `DIR/report.html` and `DIR/report.png`.
pub fn paths(workdir: &Path) -> (PathBuf, PathBuf) {
    (workdir.join("report.html"), workdir.join("report.png"))
}

/// Writes both reports (atomically).
pub fn write_reports(
    migration: &LocalMigration,
    status: &LlamaDuoMigrationStatus,
    workdir: &Path,
) -> anyhow::Result<()> {
    let data = ReportData::new(migration, status);
    let (html_path, png_path) = paths(workdir);
    let table = super::summary::rounds_table(status);
    write_atomically(&html_path, render_html(&data, &table).as_bytes())
        .with_context(|| format!("writing {}", html_path.display()))?;
    let png = render_png(&data).context("encoding the PNG report")?;
    write_atomically(&png_path, &png).with_context(|| format!("writing {}", png_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(750.0), "750");
        assert_eq!(short_number(2500.0), "2.5k");
        assert_eq!(short_number(20_000.0), "20k");
        assert_eq!(short_number(1_250_000.0), "1.2M");
    }

    #[test]
    fn axis_ceilings_are_round_numbers() {
        assert_eq!(nice_ceiling(0), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(4_100), 5_000);
        assert_eq!(nice_ceiling(50_000), 50_000);
        assert_eq!(nice_ceiling(50_001), 100_000);
    }
}
