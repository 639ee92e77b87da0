//! Evaluation: mean token loss and perplexity over a dataset, token-weighted across records
//! (only non-ignored target tokens count), on a model without autodiff.

use crate::models::CausalLm;
use crate::train::Batch;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// `model` should be `valid()` (no autodiff graph is kept for forward-only passes).
pub fn evaluate(model: &CausalLm, batches: &[Batch]) -> EvalResult {
    evaluate_with(model, batches, &mut |_| {})
}

/// As [`evaluate`], calling `done(k)` after the `k`-th batch (for a progress bar).
pub fn evaluate_with(
    model: &CausalLm,
    batches: &[Batch],
    done: &mut dyn FnMut(usize),
) -> EvalResult {
    let mut sum = 0.0;
    let mut tokens = 0;
    // The loss as in training (and PEFT): with virtual tokens, the first label counts too.
    let lead = model.loss_lead();
    for (k, batch) in batches.iter().enumerate() {
        // Nothing to score (e.g. a template that rendered nothing): no forward pass, no loss.
        let targets = batch.targets_for(lead);
        if targets == 0 {
            done(k + 1);
            continue;
        }
        sum += model
            .token_loss_sum(&batch.inputs(), &batch.labels)
            .into_scalar::<f32>() as f64;
        tokens += targets;
        done(k + 1);
    }
    let loss = if tokens == 0 {
        f64::NAN
    } else {
        sum / tokens as f64
    };
    EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
    }
}
