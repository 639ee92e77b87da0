//! Evaluation: mean token loss and perplexity over a dataset, token-weighted across records
//! (only non-ignored target tokens count), on a model without autodiff.

use crate::models::CausalLm;
use crate::train::loss::token_loss_sum;
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
    for (k, batch) in batches.iter().enumerate() {
        let logits = model.forward(&batch.inputs(), None);
        sum += token_loss_sum(logits, &batch.labels, batch.batch, batch.seq).into_scalar::<f32>()
            as f64;
        tokens += batch.targets();
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
