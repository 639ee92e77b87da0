//! The kernels room: fused CPU ops as burn custom ops with handwritten backward (burn 0.22's
//! backend extension, `extension` feature), one op per file, forward and backward side by side,
//! shapes in comments (as llm.c).
//!
//! Every op has a public `Tensor`-level function that picks its path by the tensors' device:
//! on flex (with or without autodiff) and f32 it runs the fused kernel; everywhere else (wgpu,
//! ndarray, another dtype, or `PEFT_KERNELS=off`) it runs the plain burn composition that is
//! kept beside it as its reference. Tests check that both give the same values and gradients.

use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device, Tensor};

pub mod attention;
pub mod bf16_gemm;
pub mod cross_entropy;
pub mod flex;
pub mod gemv;
pub mod lora_linear;
pub mod narrow_linear;
pub mod quant_linear;
pub mod rms_norm;
pub mod rope;
pub mod rows;
pub mod simd;
pub mod softmax;
pub mod swiglu;

/// Whether fused kernels are switched off for this process (`PEFT_KERNELS=off`): every op then
/// runs its reference composition (A/B checks, debugging).
pub fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("PEFT_KERNELS").is_ok_and(|v| v == "off" || v == "0"))
}

/// Whether `device` runs the flex backend (autodiff or not).
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// Whether an op over `tensor` takes the fused path: flex, f32, kernels not disabled.
pub fn fused<const D: usize>(tensor: &Tensor<D>) -> bool {
    !disabled() && tensor.dtype() == DType::F32 && is_flex(&tensor.device())
}
