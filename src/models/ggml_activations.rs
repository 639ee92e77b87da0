//! A comparison mode, never a training path: the activations rounded as llama.cpp's CPU backend
//! rounds them, so `peft export logits --ggml-activations` computes what a GGUF file defines
//! when llama.cpp runs it. ggml-cpu converts the second operand of `mul_mat` to the weight type's
//! `vec_dot_type` before the dot products (ggml-cpu.c `ggml_compute_forward_mul_mat`: `from_float`
//! of `type_traits_cpu[vec_dot_type]`): F16 for an F16 weight (`GGML_FP32_TO_FP16`, round to
//! nearest even), Q8_0 for Q8_0 and Q4_0 weights (`quantize_row_q8_0`: per 32 values
//! `d = absmax / 127`, `q = round(x / d)`, d stored as f16). Products then accumulate in f32.
//! F32 weights (and BF16, whose `vec_dot_type` is BF16: not emulated) are left alone.
//!
//! Off by default; only the hidden `peft export logits` switches it on for its process.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Tensor, TensorData};

use crate::gguf::dequant::GgmlType;
use crate::quant::{QFormat, QuantWeight};

static ON: AtomicBool = AtomicBool::new(false);
/// The tied output head's type in the GGUF file the model was read from, when it is Q8_0 or
/// Q4_0: `--model file.gguf` widens embeddings to f32, so the head product cannot see it.
static TIED_HEAD_Q8_0: AtomicBool = AtomicBool::new(false);

/// Switches the emulation on or off for this process.
pub fn set(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Declares the tied head (`token_embd` as the output) of the file being compared as stored in
/// a block type whose products take Q8_0 activations.
pub fn set_tied_head_q8_0(on: bool) {
    TIED_HEAD_Q8_0.store(on, Ordering::Relaxed);
}

/// `x` as ggml feeds it to the tied output head (the token embedding, stored as `dtype`).
pub fn for_tied_head<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if is_on() && TIED_HEAD_Q8_0.load(Ordering::Relaxed) {
        return q8_0_rows(x);
    }
    for_dense(x, dtype)
}

/// `x` as ggml feeds it to a product with a weight stored as `dtype` (plain tensor weights).
pub fn for_dense<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if !is_on() || dtype != DType::F16 {
        return x;
    }
    f16_rounded(x)
}

fn f16_rounded<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.cast(DType::F16).cast(DType::F32)
}

/// `x` as ggml feeds it to a product with the quantized weight `q`.
pub fn for_quant<const D: usize>(x: Tensor<D>, q: &QuantWeight) -> Tensor<D> {
    if !is_on() {
        return x;
    }
    match q.0.format {
        QFormat::Ggml(GgmlType::Q8_0 | GgmlType::Q4_0) => q8_0_rows(x),
        _ => x,
    }
}

/// Every row of the last dimension through Q8_0 and back (rows are whole 32-value blocks: the
/// weight's own rows are).
fn q8_0_rows<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let device = x.device();
    let values = crate::models::tensor_util::to_vec(x);
    let cols = dims[D - 1];
    if cols == 0 || cols % 32 != 0 {
        return Tensor::from_data(TensorData::new(values, dims), &device);
    }
    let bytes = crate::gguf::quantize::quantize_q8_0(&values);
    let mut back = Vec::with_capacity(values.len());
    crate::gguf::dequant::dequantize(GgmlType::Q8_0, &bytes, &mut back);
    Tensor::from_data(TensorData::new(back, dims), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn activations_round_like_ggml_fp32_to_fp16_and_quantize_row_q8_0() {
        // The global switch is left alone: other tests run models in this process.
        let device = Device::flex();
        let v: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 19) as f32 - 9.3) / 7.0)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(v.clone(), [2, 32]), &device);
        let got = crate::models::tensor_util::to_vec(f16_rounded(x.clone()));
        let want: Vec<f32> = v.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect();
        assert_eq!(got, want);
        let got = crate::models::tensor_util::to_vec(q8_0_rows(x));
        for (row, g) in v.chunks(32).zip(got.chunks(32)) {
            let d = row.iter().fold(0f32, |m, a| m.max(a.abs())) / 127.0;
            let d16 = half::f16::from_f32(d).to_f32();
            for (a, b) in row.iter().zip(g) {
                assert_eq!(*b, (a / d).round() * d16);
            }
        }
    }
}
