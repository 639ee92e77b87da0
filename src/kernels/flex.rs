//! Host access to flex tensors for the kernels: contiguous f32 slices in, fresh tensors out.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, TensorData};

/// A contiguous f32 flex tensor (copied only when the input was a strided view).
pub struct F32 {
    tensor: FlexTensor,
}

impl F32 {
    /// Panics on a non-f32 tensor: callers choose the fused path only for f32 (`kernels::fused`).
    pub fn new(tensor: FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "fused kernels take f32 tensors");
        let tensor = if tensor.is_contiguous() {
            tensor
        } else {
            tensor.to_contiguous()
        };
        Self { tensor }
    }

    pub fn dims(&self) -> &[usize] {
        self.tensor.layout().shape()
    }

    pub fn as_slice(&self) -> &[f32] {
        let layout = self.tensor.layout();
        &self.tensor.storage::<f32>()[layout.start_offset()..][..layout.num_elements()]
    }

    pub fn into_inner(self) -> FlexTensor {
        self.tensor
    }
}

/// A contiguous f32 tensor from host values.
pub fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// Integer ids (i64 or i32 storage) as i64 values.
pub fn ids(tensor: &FlexTensor) -> Vec<i64> {
    let t = tensor.to_contiguous();
    let n = t.layout().num_elements();
    let off = t.layout().start_offset();
    match t.dtype() {
        DType::I64 => t.storage::<i64>()[off..][..n].to_vec(),
        DType::I32 => t.storage::<i32>()[off..][..n]
            .iter()
            .map(|&v| v as i64)
            .collect(),
        other => panic!("ids tensor of dtype {other:?}"),
    }
}
