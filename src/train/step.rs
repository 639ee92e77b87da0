//! One optimizer step: forward and backward over each micro-batch (gradient accumulation), the
//! loss normalised by the target tokens of the whole accumulated batch (as transformers'
//! Trainer), global-norm clipping, then AdamW.

use burn::optim::{GradientsAccumulator, GradientsParams};

use crate::models::{CausalLm, Inputs};
use crate::train::hook::StepHook;
use crate::train::loss::{count_targets, count_targets_lead};
use crate::train::optim::{clip_factor, global_grad_norm, AdamW};

/// One micro-batch on the host: right-padded ids, attention mask and labels, all [batch, seq].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub labels: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    pub fn inputs(&self) -> Inputs {
        Inputs::with_mask(self.ids.clone(), &self.mask, self.batch, self.seq)
    }

    pub fn targets(&self) -> usize {
        count_targets(&self.labels, self.batch, self.seq)
    }

    /// Targets when `lead` logit positions precede the first token (`CausalLm::loss_lead`).
    pub fn targets_for(&self, lead: usize) -> usize {
        count_targets_lead(&self.labels, self.batch, self.seq, lead)
    }

    /// Real (non-padding) tokens.
    pub fn tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean token loss of this step's batch, before the update.
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens: usize,
    pub targets: usize,
    /// The method's extra term inside `loss` (AdaLoRA's orthogonality penalty; 0 for others), so
    /// the cross-entropy alone is `loss - extra_loss`.
    pub extra_loss: f64,
}

/// Runs one optimizer step over `micro_batches` and returns the updated model.
pub fn train_step(
    model: CausalLm,
    optim: &mut AdamW,
    micro_batches: &[Batch],
    lr: f64,
    max_grad_norm: Option<f64>,
) -> (CausalLm, StepStats) {
    train_step_with(
        model,
        optim,
        micro_batches,
        lr,
        max_grad_norm,
        &mut StepHook::None,
    )
}

/// `train_step` with a method's hook: its extra loss joins the first micro-batch's loss (the
/// logged loss includes it, as PEFT's AdaLoRA loss does), it sees the gradients, and it runs
/// after the optimizer step.
pub fn train_step_with(
    model: CausalLm,
    optim: &mut AdamW,
    micro_batches: &[Batch],
    lr: f64,
    max_grad_norm: Option<f64>,
    hook: &mut StepHook,
) -> (CausalLm, StepStats) {
    let lead = model.loss_lead();
    let targets: usize = micro_batches.iter().map(|b| b.targets_for(lead)).sum();
    let denom = targets.max(1) as f64;
    let mut accumulator = GradientsAccumulator::<CausalLm>::new();
    let (mut loss_sum, mut extra_sum) = (0.0, 0.0);
    for (k, batch) in micro_batches.iter().enumerate() {
        let extra = if k == 0 {
            hook.extra_loss(&model)
        } else {
            None
        };
        if let Some(e) = &extra {
            extra_sum += e.clone().into_scalar::<f32>() as f64;
        }
        // A micro-batch with no learned token adds no loss and no gradient (its loss would be a
        // constant: backward on it has nothing to differentiate).
        let loss = if batch.targets_for(lead) > 0 {
            let loss = model
                .token_loss_sum(&batch.inputs(), &batch.labels)
                .div_scalar(denom);
            Some(match extra {
                Some(extra) => loss + extra,
                None => loss,
            })
        } else {
            extra
        };
        let Some(loss) = loss else {
            continue;
        };
        loss_sum += loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulator.accumulate(&model, grads);
    }
    let grads = accumulator.grads();
    let grad_norm = global_grad_norm(&model, &grads);
    let scale = clip_factor(grad_norm, max_grad_norm);
    hook.observe_grads(&model, &grads, scale);
    let mut model = optim.step(model, grads, lr, scale);
    hook.after_step(&mut model, optim.step.saturating_sub(1) as usize);
    let tokens = micro_batches.iter().map(Batch::tokens).sum();
    (
        model,
        StepStats {
            loss: loss_sum,
            grad_norm,
            tokens,
            targets,
            extra_loss: extra_sum,
        },
    )
}
