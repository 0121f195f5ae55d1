//! Progress lines for the evaluate stage (docs/stage-contract.md, "Progress"): answers
//! generated, then judgements made, with a rate and an ETA, so `llamaduo run` draws a bar for
//! evaluation as it does for training. Work stored by an earlier attempt counts as done.

use std::time::{Duration, Instant};

use llamaduo::api::Progress;

/// Lines are printed at most this often (and always for the last unit).
const EVERY: Duration = Duration::from_millis(500);

/// Counts one phase's units and prints progress lines.
pub struct Meter {
    unit: &'static str,
    message: &'static str,
    done: u64,
    total: u64,
    /// Units done by this process (the rate ignores what earlier attempts stored).
    fresh: u64,
    started: Instant,
    last_print: Option<Instant>,
}

impl Meter {
    /// A phase of `total` units, `done` of them already stored; prints the first line.
    pub fn start(unit: &'static str, message: &'static str, done: u64, total: u64) -> Self {
        let mut m = Self {
            unit,
            message,
            done,
            total,
            fresh: 0,
            started: Instant::now(),
            last_print: None,
        };
        m.print(Instant::now());
        m
    }

    /// Records `n` more units done and prints a line when due.
    pub fn advance(&mut self, n: u64) {
        self.done = (self.done + n).min(self.total);
        self.fresh += n;
        let now = Instant::now();
        let due = self
            .last_print
            .is_none_or(|t| now.duration_since(t) >= EVERY);
        if due || self.done == self.total {
            self.print(now);
        }
    }

    /// The line as it would be printed now.
    pub fn progress(&self, now: Instant) -> Progress {
        let secs = now.duration_since(self.started).as_secs_f64();
        let rate = (secs > 0.0 && self.fresh > 0).then(|| self.fresh as f64 / secs);
        Progress {
            done: self.done,
            total: Some(self.total),
            unit: Some(self.unit.into()),
            eta_seconds: rate.map(|r| (self.total - self.done) as f64 / r),
            message: Some(self.message.into()),
            ..Progress::default()
        }
    }

    fn print(&mut self, now: Instant) {
        println!("{}", self.progress(now).to_line());
        self.last_print = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stored_work_as_done_but_not_in_the_rate() {
        let mut m = Meter::start("answers", "generating answers", 4, 10);
        m.started -= Duration::from_secs(2);
        m.advance(2);
        let p = m.progress(Instant::now());
        assert_eq!((p.done, p.total), (6, Some(10)));
        // 2 fresh answers in ~2 s: 1/s, so 4 left take ~4 s.
        let eta = p.eta_seconds.expect("eta");
        assert!((3.5..4.5).contains(&eta), "{eta}");
        assert_eq!(p.unit.as_deref(), Some("answers"));
    }

    #[test]
    fn never_counts_past_the_total() {
        let mut m = Meter::start("judgements", "judging answers", 0, 3);
        m.advance(5);
        let p = m.progress(Instant::now());
        assert_eq!(p.done, 3);
        assert_eq!(p.eta_seconds, Some(0.0));
    }
}
