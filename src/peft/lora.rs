//! LoRA (Hu et al. 2021, arXiv 2106.09685), rsLoRA (Kalajdzievski 2023, arXiv 2312.03732) and DoRA
//! (Liu et al. 2024, arXiv 2402.09353), as PEFT computes them (tuners/lora/layer.py, variants.py).
//!
//! Orientation: PEFT's `lora_A.weight` is `[r, in]` and `lora_B.weight` is `[out, r]`; we keep
//! burn's `a: [in, r]`, `b: [r, out]` (their transposes), converted in `peft::format`.

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::tensor::module::linear;
use burn::tensor::Tensor;

use crate::models::Linear;

#[derive(Module, Debug)]
pub struct Lora {
    /// [in, r]
    pub lora_a: Param<Tensor<2>>,
    /// [r, out]
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's magnitude `m`: [out]
    pub magnitude: Option<Param<Tensor<1>>>,
    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scale: f64,
    pub dropout: Dropout,
}

impl Lora {
    pub fn rank(&self) -> usize {
        self.lora_a.lazy_shape().dims::<2>()[1]
    }

    pub fn num_params(&self) -> usize {
        let [i, r] = self.lora_a.lazy_shape().dims::<2>();
        let [_, o] = self.lora_b.lazy_shape().dims::<2>();
        r * (i + o) + self.magnitude.as_ref().map_or(0, |_| o)
    }

    /// `y = W·x + b + s·B(A(dropout(x)))`; DoRA rescales rows by `m / ‖W + s·BA‖_row` with the
    /// norm detached (DoRA §4.3, PEFT `DoraLinearVariant.forward`).
    pub fn forward<const D: usize>(&self, base: &Linear, x: Tensor<D>) -> Tensor<D> {
        if self.magnitude.is_none() && base.quant.is_none() {
            // Plain LoRA: one op (fused on flex, this same formula elsewhere); a dropout, when
            // there is one, applies to the low-rank input only, as PEFT's.
            let (weight, bias) = (base.weight.val(), base.bias.as_ref().map(|b| b.val()));
            let (a, b) = (self.lora_a.val(), self.lora_b.val());
            let x_low = (self.dropout.prob != 0.0).then(|| self.dropout.forward(x.clone()));
            return crate::kernels::lora_linear::lora_linear_in(
                x,
                x_low,
                weight,
                bias,
                a,
                b,
                self.scale,
                base.compute,
            );
        }
        let low = linear(
            linear(self.dropout.forward(x.clone()), self.lora_a.val(), None),
            self.lora_b.val(),
            None,
        );
        let Some(magnitude) = &self.magnitude else {
            return base.base_forward(x) + low.mul_scalar(self.scale);
        };
        // ‖W + s·A·B‖ over the input dimension, in burn orientation [in, out] -> [out].
        let delta = self
            .lora_a
            .val()
            .matmul(self.lora_b.val())
            .mul_scalar(self.scale);
        let norm = (base.weight_f32() + delta)
            .detach()
            .powi_scalar(2)
            .sum_dim(0)
            .sqrt()
            .squeeze_dim::<1>(0);
        let gain = (magnitude.val() / norm).unsqueeze::<D>();
        let plain = crate::models::linear::frozen_product_of(base, x);
        let out = (plain + low.mul_scalar(self.scale)) * gain;
        match &base.bias {
            Some(b) => out + b.val().unsqueeze::<D>(),
            None => out,
        }
    }
}
