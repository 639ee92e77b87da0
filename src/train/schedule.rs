//! Learning-rate schedules as transformers' `get_scheduler` (optimization.py): the factor applied
//! to the base learning rate at optimizer step `k` (0-based), with linear warm-up.

use std::f64::consts::PI;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// HF `constant`: the base rate from the first step (no warm-up, as `get_constant_schedule`).
    Constant,
    /// HF `constant_with_warmup`: linear warm-up, then the base rate.
    #[serde(rename = "constant_with_warmup", alias = "constant-with-warmup")]
    #[value(name = "constant_with_warmup", alias = "constant-with-warmup")]
    ConstantWithWarmup,
    /// Linear warm-up, then linear decay to 0 at the last step.
    Linear,
    /// Linear warm-up, then half a cosine down to 0.
    Cosine,
}

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    pub fn lr(&self, step: usize) -> f64 {
        let (k, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let factor = if self.kind == ScheduleKind::Constant {
            1.0
        } else if step < self.warmup_steps {
            k / w.max(1.0)
        } else {
            let progress = (k - w) / (t - w).max(1.0);
            match self.kind {
                ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
                ScheduleKind::Linear => ((t - k) / (t - w).max(1.0)).max(0.0),
                ScheduleKind::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
            }
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_warms_up_then_decays_to_zero() {
        let s = Schedule {
            kind: ScheduleKind::Linear,
            base_lr: 1.0,
            warmup_steps: 2,
            total_steps: 10,
        };
        let lrs: Vec<f64> = (0..11).map(|k| s.lr(k)).collect();
        assert_eq!(lrs[0], 0.0);
        assert_eq!(lrs[1], 0.5);
        assert_eq!(lrs[2], 1.0);
        assert!((lrs[6] - 0.5).abs() < 1e-12);
        assert_eq!(lrs[10], 0.0);
    }

    #[test]
    fn constant_ignores_warmup_and_constant_with_warmup_ramps_up_as_hf() {
        let s = |kind| Schedule {
            kind,
            base_lr: 1.0,
            warmup_steps: 4,
            total_steps: 10,
        };
        assert_eq!(s(ScheduleKind::Constant).lr(0), 1.0);
        let w = s(ScheduleKind::ConstantWithWarmup);
        assert_eq!((w.lr(0), w.lr(2), w.lr(4), w.lr(9)), (0.0, 0.5, 1.0, 1.0));
    }

    #[test]
    fn cosine_schedule_is_half_way_at_the_middle() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 2.0,
            warmup_steps: 0,
            total_steps: 10,
        };
        assert!((s.lr(5) - 1.0).abs() < 1e-12);
        assert_eq!(s.lr(0), 2.0);
    }
}
