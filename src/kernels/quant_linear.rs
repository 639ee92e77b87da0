//! A frozen linear whose weight is quantized (`--quantize-base`, a GGUF base): `y = x·Wᵀ` with W
//! `[out, in]` kept as blocks ([`crate::quant::QMatrix`]) and dequantized a panel at a time into a
//! per-thread f32 buffer that one gemm call consumes, so no f32 copy of W ever exists beyond a
//! panel per thread. The backward gives only the input gradient `dx = dy·W` the same way (column
//! panels of W, so each thread owns its slice of dx); the weight is frozen and takes none. The same
//! kernel serves the few-row decoding case: panels are split over threads whatever the row count,
//! and a one-row gemm over a panel is the dot products `gemv` would do.
//!
//! The plain composition (dequantize the whole weight, then burn's `linear`) is kept beside it as
//! its reference and as the path off flex (`kernels` module docs).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::flex::{tensor, F32};
use crate::quant::{QMatrix, QuantWeight};

#[backend_extension(Flex, Autodiff)]
pub trait QuantLinearOps: Backend {
    /// x [N, in] (f32), weight [out, in] quantized (a constant) -> [N, out] (f32)
    fn quant_linear(x: FloatTensor<Self>, weight: QuantWeight) -> FloatTensor<Self>;
}

/// A raw pointer the panel tasks share; each writes a disjoint column range of the output.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks write disjoint elements (distinct column ranges) and the buffer outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `offset` values on (a method, so closures capture the whole `Send` wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Panels per thread: enough to balance uneven panels, few enough to amortise each gemm call.
const PANELS_PER_THREAD: usize = 4;

/// Splits `n` units of `step` into about `PANELS_PER_THREAD × threads` ranges, multiples of `step`.
fn panels(n: usize, step: usize) -> Vec<(usize, usize)> {
    let units = n.div_ceil(step);
    let wanted = rayon::current_num_threads() * PANELS_PER_THREAD;
    let per = units.div_ceil(wanted).max(1) * step;
    (0..n).step_by(per).map(|a| (a, (a + per).min(n))).collect()
}

/// `dst[i, j] (row stride dst_rs) = Σ_k lhs[i, k] · rhs[k, j]` for an m×k lhs (row-major,
/// contiguous) and a k×n rhs with strides (rhs_rs, rhs_cs), single-threaded.
///
/// # Safety
/// `dst` must address m rows of n values at stride `dst_rs`, exclusively for this call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    debug_assert!(lhs.len() >= m * k);
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs.as_ptr(),
        1,
        k as isize,
        rhs.as_ptr(),
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// y [n, out] = x [n, in] · Wᵀ, a panel of W's rows (y's columns) per task.
pub fn forward_host(x: &[f32], n: usize, w: &QMatrix) -> Vec<f32> {
    let (inp, out) = (w.cols, w.rows);
    let mut y = vec![0.0f32; n * out];
    let dst = Out(y.as_mut_ptr());
    panels(out, 1)
        .into_par_iter()
        .for_each_init(Vec::new, |buf, (r0, r1)| {
            buf.clear();
            w.decode_rows(r0, r1, buf);
            // SAFETY: y is n×out; this task writes columns r0..r1 of every row, no other task does.
            // Pᵀ [in, r1-r0]: element (k, j) is buf[j·in + k].
            unsafe { gemm_into(n, r1 - r0, inp, dst.at(r0), out, x, buf, 1, inp) };
        });
    y
}

/// dx [n, in] = dy [n, out] · W, a block-aligned panel of W's columns (dx's columns) per task.
pub fn backward_host(dy: &[f32], n: usize, w: &QMatrix) -> Vec<f32> {
    let (inp, out) = (w.cols, w.rows);
    let mut dx = vec![0.0f32; n * inp];
    let dst = Out(dx.as_mut_ptr());
    panels(inp, w.block_len())
        .into_par_iter()
        .for_each_init(Vec::new, |buf, (c0, c1)| {
            buf.clear();
            for r in 0..out {
                w.decode(r, c0, c1, buf);
            }
            // SAFETY: dx is n×in; this task writes columns c0..c1 of every row, no other task does.
            unsafe { gemm_into(n, c1 - c0, out, dst.at(c0), inp, dy, buf, c1 - c0, 1) };
        });
    dx
}

fn forward(x: FlexTensor, w: &QMatrix) -> FlexTensor {
    let x = F32::new(x);
    let n = x.dims()[0];
    tensor(forward_host(x.as_slice(), n, w), [n, w.rows])
}

fn backward(dy: FlexTensor, w: &QMatrix) -> FlexTensor {
    let dy = F32::new(dy);
    let n = dy.dims()[0];
    tensor(backward_host(dy.as_slice(), n, w), [n, w.cols])
}

impl QuantLinearOps for Flex {
    fn quant_linear(x: FlexTensor, weight: QuantWeight) -> FlexTensor {
        forward(x, &weight.0)
    }
}

impl<C: CheckpointStrategy> QuantLinearOps for Autodiff<Flex, C> {
    fn quant_linear(x: FloatTensor<Self>, weight: QuantWeight) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuantLinearBackward;

        impl Backward<Flex, 1> for QuantLinearBackward {
            /// The quantized weight (shared, not copied).
            type State = QuantWeight;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x] = ops.parents;
                let dy = grads.consume::<Flex>(&ops.node);
                if let Some(node) = node_x {
                    grads.register::<Flex>(node.id, backward(dy, &ops.state.0));
                }
            }
        }

        match QuantLinearBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = forward(x.into_primitive(), &weight.0);
                prep.finish(weight, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive(), &weight.0)),
        }
    }
}

/// The whole weight dequantized, in burn's orientation [in, out] (the reference composition's
/// weight; also merges and DoRA's weight norm).
pub fn dequantized(weight: &QMatrix, device: &burn::tensor::Device) -> Tensor<2> {
    let w = Tensor::<2>::from_data(
        TensorData::new(weight.dequantize(), [weight.rows, weight.cols]),
        device,
    );
    w.transpose()
}

/// `x · Wᵀ` for x [.., in] and a quantized W [out, in]: the kernel on flex in f32, else the
/// reference composition (the whole weight dequantized for this product, then `linear`).
pub fn quant_linear<const D: usize>(x: Tensor<D>, weight: &QuantWeight) -> Tensor<D> {
    let (inp, out) = (weight.0.cols, weight.0.rows);
    let dims = x.dims();
    if !super::fused(&x) || D < 2 || dims[D - 1] != inp {
        return reference(x, weight);
    }
    let rows: usize = dims[..D - 1].iter().product();
    let y = Tensor::<2>::from_dispatch(<Dispatch as QuantLinearOps>::quant_linear(
        x.reshape([rows, inp]).into_dispatch(),
        weight.clone(),
    ));
    let mut out_dims = dims;
    out_dims[D - 1] = out;
    y.reshape(out_dims)
}

/// The plain composition: dequantize W whole, then burn's `linear`.
pub fn reference<const D: usize>(x: Tensor<D>, weight: &QuantWeight) -> Tensor<D> {
    let w = dequantized(&weight.0, &x.device());
    burn::tensor::module::linear(x, w, None)
}
