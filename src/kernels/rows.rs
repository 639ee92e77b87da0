//! Row views of f32 flex tensors for the element-wise kernels: `[.., width]` read as `rows` rows
//! of `width` values, each contiguous, consecutive rows a fixed `stride` apart. That covers
//! contiguous tensors and a slice of the last dim (ChatGLM's gate and up halves of
//! `dense_h_to_4h`) without a copy; any other layout is copied to contiguous first.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape};

pub struct Rows {
    tensor: FlexTensor,
    start: usize,
    stride: usize,
    rows: usize,
    width: usize,
}

impl Rows {
    /// Panics on a non-f32 tensor: callers take the fused path only for f32 (`kernels::fused`).
    pub fn new(tensor: FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "fused kernels take f32 tensors");
        match row_layout(&tensor) {
            Some((start, stride, rows, width)) => Self {
                tensor,
                start,
                stride,
                rows,
                width,
            },
            None => {
                let tensor = tensor.to_contiguous();
                let (start, stride, rows, width) =
                    row_layout(&tensor).expect("a contiguous tensor has a row layout");
                Self {
                    tensor,
                    start,
                    stride,
                    rows,
                    width,
                }
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn shape(&self) -> Shape {
        self.tensor.layout().shape().clone()
    }

    /// Row `r` (r < rows).
    #[inline]
    pub fn row(&self, r: usize) -> &[f32] {
        &self.tensor.storage::<f32>()[self.start + r * self.stride..][..self.width]
    }

    /// Columns `from..from + len` of every row (a view, no copy).
    pub fn cols(&self, from: usize, len: usize) -> Rows {
        assert!(from + len <= self.width, "column range out of the row");
        let mut shape = self.shape();
        let last = shape.num_dims() - 1;
        shape[last] = len;
        let mut strides = self.tensor.layout().strides().to_vec();
        let start = self.tensor.layout().start_offset() + from;
        if let Some(s) = strides.last_mut() {
            *s = 1;
        }
        let layout = burn::backend::flex::Layout::new(shape, strides, start);
        Rows {
            tensor: self.tensor.clone().with_layout(layout),
            start: self.start + from,
            stride: self.stride,
            rows: self.rows,
            width: len,
        }
    }

    /// The tensor this view reads (for saving it in a backward state).
    pub fn tensor(&self) -> &FlexTensor {
        &self.tensor
    }
}

/// (start, row stride, rows, width) when every row of the last dim is contiguous and the leading
/// dims collapse to one stride.
fn row_layout(tensor: &FlexTensor) -> Option<(usize, usize, usize, usize)> {
    let layout = tensor.layout();
    let dims = layout.shape();
    let strides = layout.strides();
    let nd = dims.num_dims();
    if nd == 0 {
        return Some((layout.start_offset(), 1, 1, 1));
    }
    let width = dims[nd - 1];
    if width > 1 && strides[nd - 1] != 1 {
        return None;
    }
    let rows: usize = (0..nd - 1).map(|i| dims[i]).product();
    // The stride of the innermost leading dim of size > 1; every outer one must be its multiple
    // by the sizes in between (a plain row-major stack of rows).
    let mut stride: Option<isize> = None;
    let mut expected: Option<isize> = None;
    for i in (0..nd - 1).rev() {
        if dims[i] == 1 {
            continue;
        }
        let s = strides[i];
        match expected {
            None => {
                if s < width as isize {
                    return None;
                }
                stride = Some(s);
            }
            Some(e) if e != s => return None,
            Some(_) => {}
        }
        expected = Some(s * dims[i] as isize);
    }
    let stride = stride.unwrap_or(width as isize).max(1) as usize;
    Some((layout.start_offset(), stride, rows, width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor;

    #[test]
    fn a_slice_of_the_last_dim_is_read_in_place_with_the_full_row_stride() {
        let values: Vec<f32> = (0..2 * 3 * 8).map(|v| v as f32).collect();
        let t = tensor(values, [2, 3, 8]).narrow(2, 4, 4);
        let rows = Rows::new(t);
        assert_eq!((rows.rows(), rows.width(), rows.stride), (6, 4, 8));
        assert_eq!(rows.row(5), &[44.0, 45.0, 46.0, 47.0]);
    }

    #[test]
    fn a_transposed_tensor_is_copied_to_rows() {
        let values: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let rows = Rows::new(tensor(values, [2, 3]).transpose(0, 1));
        assert_eq!((rows.rows(), rows.width()), (3, 2));
        assert_eq!(rows.row(2), &[2.0, 5.0]);
    }

    #[test]
    fn column_views_of_a_packed_row_split_it_in_two() {
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let rows = Rows::new(tensor(values, [2, 6]));
        let (a, b) = (rows.cols(0, 3), rows.cols(3, 3));
        assert_eq!(a.row(1), &[6.0, 7.0, 8.0]);
        assert_eq!(b.row(1), &[9.0, 10.0, 11.0]);
        assert_eq!(b.tensor().layout().shape().dims::<2>(), [2, 3]);
    }
}
