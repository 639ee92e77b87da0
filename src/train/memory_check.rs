//! The refusal of a run the memory estimate (`train::memory`) says will not fit, with the
//! settings that would.

use super::memory::{gib, MemoryEstimate, MemoryPlan, WeightStorage};

/// A run the estimate says will not fit, with the settings that would.
#[derive(Debug, thiserror::Error)]
#[error("training needs an estimated {} but the machine has {} available (MemAvailable in /proc/meminfo): {estimate}; the largest part is set by {sized_by}.\n{}\nor pass --ignore-memory-estimate to train anyway", gib(estimate.total()), gib(*available), fitting_lines(fitting))]
pub struct TooLarge {
    pub estimate: MemoryEstimate,
    /// The settings that size the estimate's largest part.
    pub sized_by: &'static str,
    pub available: u64,
    /// (flags, estimated total) of each change that fits.
    pub fitting: Vec<(String, u64)>,
}

fn fitting_lines(fitting: &[(String, u64)]) -> String {
    if fitting.is_empty() {
        return "none of --base-dtype bf16, --quantize-base int4, --gradient-checkpointing, a smaller --batch-size or --max-len fits alone".into();
    }
    let lines: Vec<String> = fitting
        .iter()
        .map(|(flags, total)| format!("  {flags}: {}", gib(*total)))
        .collect();
    format!("settings that fit:\n{}", lines.join("\n"))
}

impl MemoryPlan {
    /// Refuses a plan whose estimate exceeds `available` bytes, naming the changes that fit:
    /// a narrower or quantized base, checkpointing, the largest batch size or length that fits.
    pub fn check(&self, available: u64) -> Result<MemoryEstimate, TooLarge> {
        let estimate = self.estimate();
        if estimate.total() <= available {
            return Ok(estimate);
        }
        let mut options: Vec<(String, MemoryPlan)> = Vec::new();
        if self.linear_storage == WeightStorage::F32 {
            options.push((
                "--base-dtype bf16".into(),
                self.with_storage(WeightStorage::Bf16),
            ));
        }
        if !matches!(
            self.linear_storage,
            WeightStorage::Int4 | WeightStorage::Nf4
        ) {
            let mut plan = self.with_storage(WeightStorage::Bf16);
            plan.linear_storage = WeightStorage::Int4;
            options.push(("--base-dtype bf16 --quantize-base int4".into(), plan));
        }
        if !self.checkpointing {
            options.push((
                "--gradient-checkpointing".into(),
                MemoryPlan {
                    checkpointing: true,
                    ..*self
                },
            ));
        }
        // Together, for a model that no single change brings under the limit.
        if !self.checkpointing {
            let mut plan = self.with_storage(WeightStorage::Bf16);
            plan.checkpointing = true;
            if self.linear_storage == WeightStorage::F32 {
                options.push(("--base-dtype bf16 --gradient-checkpointing".into(), plan));
            }
            plan.linear_storage = WeightStorage::Int4;
            options.push((
                "--base-dtype bf16 --quantize-base int4 --gradient-checkpointing".into(),
                plan,
            ));
        }
        if let Some(b) = self.largest(available, |p, v| p.batch = v, self.batch) {
            options.push((
                format!("--batch-size {b}"),
                MemoryPlan { batch: b, ..*self },
            ));
        }
        if let Some(s) = self.largest(available, |p, v| p.seq = v, self.seq) {
            options.push((format!("--max-len {s}"), MemoryPlan { seq: s, ..*self }));
        }
        let fitting = options
            .into_iter()
            .map(|(flags, plan)| (flags, plan.estimate().total()))
            .filter(|(_, total)| *total <= available)
            .collect();
        Err(TooLarge {
            sized_by: estimate.largest_part_settings(&self.adapter),
            estimate,
            available,
            fitting,
        })
    }

    fn with_storage(&self, storage: WeightStorage) -> MemoryPlan {
        MemoryPlan {
            linear_storage: storage,
            embedding_storage: storage,
            ..*self
        }
    }

    /// The largest value below `current` (halving) for which the plan fits.
    fn largest(&self, available: u64, set: fn(&mut MemoryPlan, u64), current: u64) -> Option<u64> {
        let mut v = current / 2;
        while v >= 1 {
            let mut plan = *self;
            set(&mut plan, v);
            if plan.estimate().total() <= available {
                return Some(v);
            }
            v /= 2;
        }
        None
    }
}
