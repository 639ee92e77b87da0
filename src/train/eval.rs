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
    let mut sum = 0.0;
    let mut tokens = 0;
    for batch in batches {
        sum += model
            .token_loss_sum(&batch.inputs(), &batch.labels)
            .into_scalar::<f32>() as f64;
        tokens += batch.targets();
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
