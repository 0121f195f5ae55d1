//! Learning-rate schedule: linear warmup from 0 to the peak, then cosine decay to 0 at the
//! last step (transformers' `get_cosine_schedule_with_warmup`, steps counted from 0).

/// Warmup + cosine schedule over `total_steps` optimizer steps.
#[derive(Clone, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// All optimizer steps.
    pub total_steps: u64,
}

impl CosineSchedule {
    /// A schedule whose warmup is `ceil(warmup_ratio · total_steps)` steps (as transformers).
    pub fn with_ratio(peak: f64, warmup_ratio: f64, total_steps: u64) -> Self {
        let warmup_steps = (warmup_ratio.clamp(0.0, 1.0) * total_steps as f64).ceil() as u64;
        Self {
            peak,
            warmup_steps,
            total_steps,
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        self.peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_at_known_steps() {
        let s = CosineSchedule::with_ratio(1e-3, 0.1, 100);
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-4).abs() < 1e-15);
        assert!((s.lr(10) - 1e-3).abs() < 1e-15);
        // Halfway through the decay (step 10 + 45) the cosine is at one half.
        assert!((s.lr(55) - 5e-4).abs() < 1e-12);
        assert!(s.lr(99) < 2e-6 && s.lr(99) > 0.0);
        assert_eq!(s.lr(100), 0.0);
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = CosineSchedule::with_ratio(2e-4, 0.0, 4);
        assert_eq!(s.lr(0), 2e-4);
        assert!((s.lr(2) - 1e-4).abs() < 1e-15);
    }
}
