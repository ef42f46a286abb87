//! The learning-rate schedule: linear warmup from 0, then constant, linear or cosine decay to 0
//! at the last step, with the formulas of transformers' `get_*_schedule_with_warmup` (which
//! sparsify uses).

use crate::config::Schedule;

/// The factor (0 to 1) applied to the peak learning rate at optimiser step `step` (0-based) of
/// a run of `total` steps with `warmup` warmup steps.
pub fn lr_factor(schedule: Schedule, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / decay_steps;
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (total.saturating_sub(step) as f64 / decay_steps).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values of transformers' lr_lambda for (warmup 2, total 10), derived by hand from its
    // definitions: linear max(0, (10 - s) / 8), cosine 0.5 (1 + cos(pi (s - 2) / 8)).
    #[test]
    fn follows_transformers_formulas() {
        assert_eq!(lr_factor(Schedule::Linear, 0, 2, 10), 0.0);
        assert_eq!(lr_factor(Schedule::Linear, 1, 2, 10), 0.5);
        assert_eq!(lr_factor(Schedule::Linear, 2, 2, 10), 1.0);
        assert_eq!(lr_factor(Schedule::Linear, 6, 2, 10), 0.5);
        assert_eq!(lr_factor(Schedule::Linear, 10, 2, 10), 0.0);
        assert!((lr_factor(Schedule::Cosine, 6, 2, 10) - 0.5).abs() < 1e-15);
        assert!(
            (lr_factor(Schedule::Cosine, 4, 2, 10) - (0.5 + 0.5 * 0.5f64.sqrt())).abs() < 1e-15
        );
        assert_eq!(lr_factor(Schedule::Constant, 9, 2, 10), 1.0);
        assert_eq!(lr_factor(Schedule::Constant, 0, 0, 10), 1.0);
    }
}
