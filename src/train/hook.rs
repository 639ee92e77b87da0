//! Method-specific work the training loop runs around each optimizer step: a closed enum,
//! dispatched by `match`. AdaLoRA is the user: its orthogonality penalty joins the loss and its
//! rank allocator runs after every optimizer step, so nobody has to remember to call
//! `update_and_allocate` (PEFT issues #432, #1801).

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::AdapterError;
use crate::models::CausalLm;
use crate::peft::rank_allocator::{Allocation, RankAllocator};

/// AdaLoRA's full-rank tensors and allocator state, beside a checkpoint's PEFT files.
pub const ADALORA_STATE_FILE: &str = "adalora_state.safetensors";

#[derive(Debug, Clone, Default)]
pub enum StepHook {
    #[default]
    None,
    AdaLora(RankAllocator),
}

impl StepHook {
    /// A term added to the first micro-batch's loss of every step (so once per optimizer step).
    pub fn extra_loss(&self, model: &CausalLm) -> Option<Tensor<1>> {
        match self {
            Self::None => None,
            Self::AdaLora(allocator) => allocator.orth_penalty(model),
        }
    }

    /// Sees the step's gradients (already scaled by the clipping factor) before the optimizer
    /// consumes them.
    pub fn observe_grads(&mut self, model: &CausalLm, grads: &GradientsParams, scale: f64) {
        match self {
            Self::None => {}
            Self::AdaLora(allocator) => allocator.observe_grads(model, grads, scale),
        }
    }

    /// Runs after the optimizer step `step` (0-based).
    pub fn after_step(&mut self, model: &mut CausalLm, step: usize) {
        match self {
            Self::None => {}
            Self::AdaLora(allocator) => {
                allocator.update_and_allocate(model, step);
            }
        }
    }

    /// Saves the hook's own state into a checkpoint folder.
    pub fn save(&self, model: &mut CausalLm, dir: &Path) -> Result<(), AdapterError> {
        match self {
            Self::None => Ok(()),
            Self::AdaLora(allocator) => allocator.save_state(model, &dir.join(ADALORA_STATE_FILE)),
        }
    }

    /// Restores the hook's state (and the model tensors only it holds) from a checkpoint folder;
    /// call before loading the optimizer, whose state follows the restored parameters by name.
    pub fn restore(&mut self, model: &mut CausalLm, dir: &Path) -> Result<(), AdapterError> {
        match self {
            Self::None => Ok(()),
            Self::AdaLora(allocator) => {
                allocator.restore_state(model, &dir.join(ADALORA_STATE_FILE))
            }
        }
    }

    /// A short status for the progress display and metrics.
    pub fn status(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::AdaLora(allocator) => allocator
                .last
                .map(|a: Allocation| format!("rank budget {} (kept {})", a.budget, a.kept)),
        }
    }
}
