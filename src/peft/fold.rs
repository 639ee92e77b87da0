//! Folding an attached adapter into its layer's weights in memory (for inference, and to stack
//! several adapters: each one is folded before the next is attached). The folded layer computes
//! the same function as the unfolded one, up to f32 rounding.
//!
//! burn orientation `W: [in, out]`, so PEFT's `ΔW = s·B·A` ([out, in]) is `s·a·b` here.

use burn::tensor::{DType, Tensor};

use crate::models::tensor_util::frozen;
use crate::models::Linear;
use crate::peft::adapter::LinearAdapter;

/// Replaces `linear`'s weights by the adapted ones and removes the adapter.
pub fn fold(linear: &mut Linear) {
    let Some(adapter) = linear.adapter.take() else {
        return;
    };
    // A bf16/f16 base (`--base-dtype`) is merged in f32 and rounded back to its own dtype once
    // (issue 17: a low-precision base merges in f32 and keeps its storage dtype).
    let dtype = linear.weight.val().dtype();
    let w = linear.weight_f32().detach();
    let (w, bias) = match adapter {
        LinearAdapter::Lora(l) => {
            let merged = w + l
                .lora_a
                .val()
                .matmul(l.lora_b.val())
                .mul_scalar(l.scale)
                .detach();
            match &l.magnitude {
                // DoRA: W' = (m / ‖W + ΔW‖_row) · (W + ΔW); the bias is not rescaled.
                Some(m) => {
                    let norm = merged.clone().powi_scalar(2).sum_dim(0).sqrt();
                    let gain: Tensor<2> = m.val().detach().unsqueeze::<2>() / norm;
                    (merged * gain, linear.bias.as_ref().map(|b| b.val()))
                }
                None => (merged, linear.bias.as_ref().map(|b| b.val())),
            }
        }
        LinearAdapter::AdaLora(svd) => (
            w + svd.delta().detach(),
            linear.bias.as_ref().map(|b| b.val()),
        ),
        LinearAdapter::Ia3(a) => {
            let l = a.ia3_l.val().detach();
            if a.feedforward {
                // base(x ⊙ l): scale the input rows of W.
                (
                    w * l.unsqueeze_dim::<2>(1),
                    linear.bias.as_ref().map(|b| b.val()),
                )
            } else {
                // base(x) ⊙ l: scale the output columns of W and the bias.
                (
                    w * l.clone().unsqueeze::<2>(),
                    linear.bias.as_ref().map(|b| b.val() * l),
                )
            }
        }
    };
    // A quantized base (`--quantize-base`) folds to f32: never a 4-bit merge (issue 17 item 5).
    linear.quant = None;
    linear.weight = frozen(if dtype == DType::F32 {
        w
    } else {
        w.cast(dtype)
    });
    linear.bias = bias.map(frozen);
}
