//! Host <-> tensor conversions in one place. PyTorch stores a Linear weight as `[out, in]`; burn's
//! `linear` expects `[in, out]`: the transpose happens here, once, at load and save time.

use burn::module::Param;
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

pub fn tensor2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A frozen base weight `[rows, cols]` stored in `dtype` (`--base-dtype`): f32 goes through
/// `tensor2` unchanged; bf16/f16 are narrowed here (round to nearest even, as torch's `.to()`),
/// optionally transposing from `[cols, rows]` in the same pass, so that no f32 tensor of it is
/// ever made. `None` for a dtype other than f32/bf16/f16.
pub fn base_tensor2(
    values: Vec<f32>,
    shape: [usize; 2],
    transposed_from: bool,
    dtype: DType,
    device: &Device,
) -> Option<Tensor<2>> {
    let [rows, cols] = shape;
    fn narrow<T: burn::tensor::Element>(
        values: &[f32],
        [rows, cols]: [usize; 2],
        transposed_from: bool,
        f: impl Fn(f32) -> T,
    ) -> TensorData {
        let out: Vec<T> = if transposed_from {
            // values is [cols, rows]: out[r, c] = values[c, r].
            (0..rows * cols)
                .map(|i| f(values[(i % cols) * rows + i / cols]))
                .collect()
        } else {
            values.iter().map(|&v| f(v)).collect()
        };
        TensorData::new(out, [rows, cols])
    }
    let data = match dtype {
        DType::F32 => {
            let values = if transposed_from {
                transpose(&values, cols, rows)
            } else {
                values
            };
            return Some(tensor2(values, shape, device));
        }
        DType::BF16 => narrow(&values, shape, transposed_from, half::bf16::from_f32),
        DType::F16 => narrow(&values, shape, transposed_from, half::f16::from_f32),
        _ => return None,
    };
    drop(values);
    let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
    Some(Tensor::from_data(data, options))
}

pub fn tensor1(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// A frozen parameter (base weights never receive gradients).
pub fn frozen<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}

/// A trainable parameter.
pub fn trainable<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(true)
}

/// Token ids `[batch, seq]` as an Int tensor.
pub fn ids_tensor(ids: &[i64], batch: usize, seq: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [batch, seq]), device)
}

/// A float tensor's values on the host.
pub fn to_vec<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}
