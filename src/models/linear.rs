//! A linear layer with an adapter slot. Weights are stored in burn's orientation
//! `weight: [in, out]` (PyTorch's `[out, in]` transposed once at load, see `tensor_util`).
//! Adapters act on activations (`y = W·x + b + s·B(A(x))`), never by rebuilding a dense weight.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

use crate::peft::adapter::LinearAdapter;
use crate::quant::QuantWeight;

#[derive(Module, Debug)]
pub struct Linear {
    /// [in, out]
    pub weight: Param<Tensor<2>>,
    /// [out]
    pub bias: Option<Param<Tensor<1>>>,
    pub adapter: Option<LinearAdapter>,
    /// A quantized frozen weight (`--quantize-base`, a GGUF base): when set it is the weight, and
    /// `weight` is a `[1, 1]` placeholder (`Linear::quantized`).
    #[module(skip)]
    pub quant: Option<QuantWeight>,
    /// What the frozen bf16 weight's products compute in (`--compute-dtype`, set on the whole
    /// model by `CausalLm::set_compute_dtype`).
    #[module(skip)]
    pub compute: ComputeDtype,
}

/// The arithmetic of the frozen-weight products (`--compute-dtype`): f32 (a bf16/f16 weight is
/// widened, `kernels::narrow_linear`), or bf16 (a bf16 weight and the rounded input multiplied
/// by AVX512-BF16, f32 accumulation, `kernels::bf16_gemm`; as PyTorch's CPU bf16 autocast).
/// Bf16 applies only to bf16 weights on flex on a CPU with avx512bf16; elsewhere products stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl Linear {
    pub fn new(weight: Param<Tensor<2>>, bias: Option<Param<Tensor<1>>>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
            quant: None,
            compute: ComputeDtype::F32,
        }
    }

    /// A frozen linear whose weight is `quant` ([out, in] blocks), dequantized per tile in each
    /// product (`kernels::quant_linear`).
    pub fn quantized(
        quant: QuantWeight,
        bias: Option<Param<Tensor<1>>>,
        device: &burn::tensor::Device,
    ) -> Self {
        let placeholder = Param::from_tensor(Tensor::zeros([1, 1], device)).set_require_grad(false);
        Self {
            weight: placeholder,
            bias,
            adapter: None,
            quant: Some(quant),
            compute: ComputeDtype::F32,
        }
    }

    /// Weights held in `quant` that `Module::num_params` does not see (it counts the `[1, 1]`
    /// placeholder): `in × out − 1` for a quantized layer, 0 otherwise.
    pub fn params_outside_module(&self) -> usize {
        match &self.quant {
            Some(q) => (q.0.rows * q.0.cols).saturating_sub(1),
            None => 0,
        }
    }

    pub fn in_features(&self) -> usize {
        if let Some(q) = &self.quant {
            return q.0.cols;
        }
        self.weight.lazy_shape().dims::<2>()[0]
    }

    pub fn out_features(&self) -> usize {
        if let Some(q) = &self.quant {
            return q.0.rows;
        }
        self.weight.lazy_shape().dims::<2>()[1]
    }

    /// The weight [in, out] when this is a plain frozen linear (no bias, no adapter), the case the
    /// fused output-head kernels take.
    pub fn plain_frozen_weight(&self) -> Option<Tensor<2>> {
        if self.quant.is_some() {
            return None;
        }
        let weight = self.weight.val();
        (self.bias.is_none() && self.adapter.is_none() && !weight.is_require_grad())
            .then_some(weight)
    }

    /// The frozen base: x: [..., in] -> [..., out].
    pub fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(q) = &self.quant {
            let x = crate::models::ggml_activations::for_quant(x, q);
            let y = crate::kernels::quant_linear::quant_linear(x, q);
            return match bias {
                Some(b) => y + b.unsqueeze::<D>(),
                None => y,
            };
        }
        let weight = self.weight.val();
        let x = crate::models::ggml_activations::for_dense(x, weight.dtype());
        // Decoding: a few rows against every weight, split over all threads.
        if let Some(y) = crate::kernels::gemv::few_rows_linear(&x, &weight) {
            return match bias {
                Some(b) => y + b.unsqueeze::<D>(),
                None => y,
            };
        }
        if let Some(y) = bf16_product(self.compute, &x, &weight) {
            return match bias {
                Some(b) => y + b.unsqueeze::<D>(),
                None => y,
            };
        }
        // A bf16/f16 weight (`--base-dtype`, `CausalLm::cast_decode_weights`): widened for this
        // product only, the narrow weight kept for the backward (`kernels::narrow_linear`).
        if let Some(y) = crate::kernels::narrow_linear::narrow_linear(&x, &weight) {
            return match bias {
                Some(b) => y + b.unsqueeze::<D>(),
                None => y,
            };
        }
        burn::tensor::module::linear(x, widened(weight), bias)
    }

    /// The weight [in, out] in f32: itself when stored in f32, else a widened copy for this one
    /// product (a frozen base kept in bf16/f16 by `--base-dtype`; compute stays f32).
    pub fn weight_f32(&self) -> Tensor<2> {
        if let Some(q) = &self.quant {
            return crate::kernels::quant_linear::dequantized(&q.0, &self.weight.val().device());
        }
        widened(self.weight.val())
    }

    /// x: [..., in] -> [..., out], through the adapter when one is attached.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.adapter {
            None => self.base_forward(x),
            Some(adapter) => adapter.forward(self, x),
        }
    }
}

/// `tensor` in f32 (a no-op for f32).
pub fn widened<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    if tensor.dtype() == DType::F32 {
        tensor
    } else {
        tensor.cast(DType::F32)
    }
}

/// `x · W` for a frozen weight W [in, out] of any float dtype, computed in f32: a bf16/f16 weight
/// (`--base-dtype`, `CausalLm::cast_decode_weights`) is widened for this product only, and under
/// autodiff the backward keeps the narrow weight, not its f32 copy (`kernels::narrow_linear`).
pub fn frozen_product<const D: usize>(x: Tensor<D>, weight: &Tensor<2>) -> Tensor<D> {
    if let Some(y) = crate::kernels::narrow_linear::narrow_linear(&x, weight) {
        return y;
    }
    burn::tensor::module::linear(x, widened(weight.clone()), None)
}

/// `x · W` without bias for `linear`'s frozen weight, whatever it is stored as: quantized
/// (`kernels::quant_linear`), narrow or f32 (`frozen_product`).
pub fn frozen_product_of<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    match &linear.quant {
        Some(q) => crate::kernels::quant_linear::quant_linear(x, q),
        None => {
            let weight = linear.weight.val();
            match bf16_product(linear.compute, &x, &weight) {
                Some(y) => y,
                None => frozen_product(x, &weight),
            }
        }
    }
}

/// `bf16(x) · W` by `kernels::bf16_gemm` when `compute` is bf16 and the kernel takes this case
/// (a frozen bf16 weight on flex, a CPU with avx512bf16); `None` otherwise.
fn bf16_product<const D: usize>(
    compute: ComputeDtype,
    x: &Tensor<D>,
    weight: &Tensor<2>,
) -> Option<Tensor<D>> {
    match compute {
        ComputeDtype::F32 => None,
        ComputeDtype::Bf16 => crate::kernels::bf16_gemm::bf16_linear(x, weight),
    }
}
