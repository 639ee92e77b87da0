//! Causal LM loss as transformers computes it: logits at position t predict the label at t + 1;
//! labels equal to −100 are ignored. We return the *sum* of token losses and the token count, so
//! that a step over several micro-batches divides by the tokens of the whole accumulated batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

pub const IGNORE_INDEX: i64 = -100;

/// Non-ignored target tokens in `labels` [batch, seq] after the shift.
pub fn count_targets(labels: &[i64], batch: usize, seq: usize) -> usize {
    (0..batch)
        .map(|b| {
            labels[b * seq + 1..(b + 1) * seq]
                .iter()
                .filter(|&&l| l != IGNORE_INDEX)
                .count()
        })
        .sum()
}

/// The target of every position after the shift, [batch · seq] row-major: position t predicts
/// `labels[t + 1]`; the last position of each row predicts nothing (−100). Labels outside
/// `0..vocab` stay as they are: every loss here ignores them, as −100.
pub fn shifted_targets(labels: &[i64], batch: usize, seq: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(batch * seq);
    for b in 0..batch {
        out.extend_from_slice(&labels[b * seq + 1..(b + 1) * seq]);
        out.push(IGNORE_INDEX);
    }
    out
}

/// logits: [batch, seq, vocab], labels: [batch, seq] -> sum over targets of −log p(label), [1].
pub fn token_loss_sum(logits: Tensor<3>, labels: &[i64], batch: usize, seq: usize) -> Tensor<1> {
    let device = logits.device();
    let vocab = logits.dims()[2];
    let mut targets = Vec::with_capacity(batch * (seq - 1));
    let mut weights = Vec::with_capacity(batch * (seq - 1));
    for b in 0..batch {
        for &l in &labels[b * seq + 1..(b + 1) * seq] {
            let ignored = l == IGNORE_INDEX || l < 0 || l as usize >= vocab;
            targets.push(if ignored { 0 } else { l });
            weights.push(if ignored { 0.0f32 } else { 1.0 });
        }
    }
    let shifted = logits.slice([0..batch, 0..seq - 1, 0..vocab]);
    let logp = log_softmax(shifted, 2);
    let targets: Tensor<3, Int> =
        Tensor::from_data(TensorData::new(targets, [batch, seq - 1, 1]), &device);
    let weights: Tensor<3> =
        Tensor::from_data(TensorData::new(weights, [batch, seq - 1, 1]), &device);
    (logp.gather(2, targets) * weights).sum().neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_targets_move_labels_left_and_end_each_row_with_an_ignored_target() {
        let labels = [5, 6, 7, 1, 2, 3];
        assert_eq!(shifted_targets(&labels, 2, 3), [6, 7, -100, 2, 3, -100]);
    }

    #[test]
    fn ignored_labels_and_the_first_position_are_not_counted() {
        let labels = [5, -100, 7, 8, -100, -100, 1, 2];
        assert_eq!(count_targets(&labels, 2, 4), 4);
    }
}
