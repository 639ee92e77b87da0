//! IA3 (Liu et al. 2022, arXiv 2205.05638), as PEFT's `ia3/layer.py`: a learned vector scales the
//! output of a target module, or, for `feedforward_modules`, its input.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::models::Linear;

#[derive(Module, Debug)]
pub struct Ia3 {
    /// [out] for output scaling, [in] for feed-forward (input) scaling.
    pub ia3_l: Param<Tensor<1>>,
    pub feedforward: bool,
}

impl Ia3 {
    pub fn num_params(&self) -> usize {
        self.ia3_l.lazy_shape().dims::<1>()[0]
    }

    /// Feed-forward: `base(x ⊙ l)`; otherwise `base(x) ⊙ l` (the bias is scaled too, as PEFT).
    pub fn forward<const D: usize>(&self, base: &Linear, x: Tensor<D>) -> Tensor<D> {
        let l = self.ia3_l.val().unsqueeze::<D>();
        if self.feedforward {
            base.base_forward(x * l)
        } else {
            base.base_forward(x) * l
        }
    }
}
