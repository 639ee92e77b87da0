//! AdaLoRA's SVD-form adapter (Zhang et al. 2023, arXiv 2303.10512), as PEFT's `SVDLinear`
//! (tuners/adalora/layer.py): `ΔW = P·(Q ⊙ Λ)·α / (ranknum + 1e-5)` with `Q = lora_A` [r, in],
//! `Λ = lora_E` [r, 1], `P = lora_B` [out, r] and `ranknum = init_r`, fixed even after pruning
//! (PEFT copies the original `ranknum` back when it resizes a pruned module on load).
//!
//! Orientation as `lora.rs`: burn keeps `a: [in, r]`, `b: [r, out]`, `e: [r]`. The module always
//! keeps all `init_r` ranks; pruned ones have `Λ = 0` and are cut out only when saving, as PEFT
//! masks during training and slices in `resize_state_dict_by_rank_pattern`.

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};

use crate::models::Linear;

#[derive(Module, Debug)]
pub struct AdaLora {
    /// Q transposed: [in, r]
    pub lora_a: Param<Tensor<2>>,
    /// Λ: [r]
    pub lora_e: Param<Tensor<1>>,
    /// P transposed: [r, out]
    pub lora_b: Param<Tensor<2>>,
    /// `lora_alpha / (init_r + 1e-5)`.
    pub scale: f64,
    pub dropout: Dropout,
    /// Which of the `r` singular values are kept (PEFT's boolean `rank_pattern` entry).
    #[module(skip)]
    pub kept: Vec<bool>,
}

impl AdaLora {
    /// `init_r`: ranks held, pruned or not.
    pub fn rank(&self) -> usize {
        self.lora_a.lazy_shape().dims::<2>()[1]
    }

    /// Trainable values as PEFT counts them once the module is resized to its kept ranks.
    pub fn num_params(&self) -> usize {
        let [i, _] = self.lora_a.lazy_shape().dims::<2>();
        let [_, o] = self.lora_b.lazy_shape().dims::<2>();
        self.kept.iter().filter(|&&k| k).count() * (i + o + 1)
    }

    /// `y = W·x + b + (dropout(x)·(Q ⊙ Λ)ᵀ·Pᵀ)·α / ranknum` (PEFT `SVDLinear.forward`).
    pub fn forward<const D: usize>(&self, base: &Linear, x: Tensor<D>) -> Tensor<D> {
        let scaled_a = self.lora_a.val() * self.lora_e.val().unsqueeze::<2>();
        let low = linear(
            linear(self.dropout.forward(x.clone()), scaled_a, None),
            self.lora_b.val(),
            None,
        );
        base.base_forward(x) + low.mul_scalar(self.scale)
    }

    /// `ΔW` in burn orientation [in, out], for folding.
    pub fn delta(&self) -> Tensor<2> {
        (self.lora_a.val() * self.lora_e.val().unsqueeze::<2>())
            .matmul(self.lora_b.val())
            .mul_scalar(self.scale)
    }

    /// `‖A·Aᵀ − I‖_F + ‖Bᵀ·B − I‖_F` in PEFT's orientation (`AdaLoraModel.forward`); here
    /// `A·Aᵀ = aᵀ·a` and `Bᵀ·B = b·bᵀ`, both [r, r].
    pub fn orth_penalty(&self) -> Tensor<1> {
        let a = self.lora_a.val();
        let b = self.lora_b.val();
        let r = self.rank();
        let device = a.device();
        let eye = Tensor::<2>::eye(r, &device);
        let frob = |m: Tensor<2>| (m - eye.clone()).powi_scalar(2).sum().sqrt();
        frob(a.clone().transpose().matmul(a)) + frob(b.clone().matmul(b.transpose()))
    }

    /// Sets Λ to zero where `kept` is false and records the pattern (PEFT `mask_to_budget` /
    /// `mask_using_rank_pattern`). The parameter keeps its id, so optimizer state follows it.
    pub fn apply_mask(&mut self, kept: Vec<bool>) {
        let device = self.lora_e.val().device();
        let mask: Vec<f32> = kept.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
        let n = mask.len();
        let mask = Tensor::<1>::from_data(TensorData::new(mask, [n]), &device);
        let param = std::mem::replace(
            &mut self.lora_e,
            Param::from_tensor(Tensor::zeros([1], &device)),
        );
        self.lora_e = param.map(|e| {
            let require_grad = e.is_require_grad();
            let masked = (e * mask).detach();
            if require_grad {
                masked.require_grad()
            } else {
                masked
            }
        });
        self.kept = kept;
    }
}
