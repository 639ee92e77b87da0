//! Few-row linear for decoding: `y[m, N] = x[m, K] · W[K, N]` with m ≤ `MAX_ROWS`, split over
//! column blocks on every thread. Decoding one token multiplies a single row by every weight, a
//! memory-bound product (each weight is read once per token); flex's gemm runs such small
//! products on one thread (below its parallel threshold), so a decoding step used one core.
//! Here each thread streams its own column block of `W` (rows of `W` are contiguous in burn's
//! `[in, out]` orientation) and accumulates `x[r, i] · W[i, block]` for every row at once.
//!
//! Inference only (no autodiff): training and prefill keep burn's linear.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::flex::{tensor, F32};

/// Rows up to which the column-split kernel beats gemm (one decoding step per sequence).
pub const MAX_ROWS: usize = 8;

/// Columns per task: a multiple of the SIMD width, small enough that both threads get several.
const BLOCK: usize = 128;

#[backend_extension(Flex)]
pub trait FewRowsLinearOps: Backend {
    /// x [m, K], weight [K, N] -> [m, N]
    fn few_rows_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `acc[r, ..] += x[r, i] · w_block[i, ..]` over all i, for one column block.
#[inline(always)]
fn block_body(x: &[f32], w: &[f32], k: usize, n: usize, j0: usize, out: &mut [f32]) {
    let width = out.len() / (x.len() / k);
    let rows = x.len() / k;
    for i in 0..k {
        let wrow = &w[i * n + j0..i * n + j0 + width];
        for r in 0..rows {
            let xi = x[r * k + i];
            for (o, &wv) in out[r * width..(r + 1) * width].iter_mut().zip(wrow) {
                *o += xi * wv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(x: &[f32], w: &[f32], k: usize, n: usize, j0: usize, out: &mut [f32]) {
    block_body(x, w, k, n, j0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(x: &[f32], w: &[f32], k: usize, n: usize, j0: usize, out: &mut [f32]) {
    block_body(x, w, k, n, j0, out)
}

fn block(x: &[f32], w: &[f32], k: usize, n: usize, j0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { block_avx512(x, w, k, n, j0, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { block_avx2(x, w, k, n, j0, out) };
        }
    }
    block_body(x, w, k, n, j0, out)
}

fn few_rows_flex(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let (x, w) = (F32::new(x), F32::new(weight));
    let (m, k, n) = (x.dims()[0], x.dims()[1], w.dims()[1]);
    let (xs, ws) = (x.as_slice(), w.as_slice());
    // Per block: its m × width partial results, laid out row by row.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let j0 = b * BLOCK;
            let width = BLOCK.min(n - j0);
            let mut out = vec![0f32; m * width];
            block(xs, ws, k, n, j0, &mut out);
            (j0, out)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (j0, out) in blocks {
        let width = out.len() / m;
        for r in 0..m {
            y[r * n + j0..r * n + j0 + width].copy_from_slice(&out[r * width..(r + 1) * width]);
        }
    }
    tensor(y, [m, n])
}

impl FewRowsLinearOps for Flex {
    fn few_rows_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        few_rows_flex(x, weight)
    }
}

/// `x · weight` for x [.., K] with at most `MAX_ROWS` rows, on flex f32 without autodiff;
/// `None` when the fused path does not apply (the caller uses burn's linear).
pub fn few_rows_linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    let dims = x.dims();
    let k = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if rows == 0
        || rows > MAX_ROWS
        || x.is_autodiff()
        || weight.is_autodiff()
        || !super::fused(x)
        || !super::fused(weight)
    {
        return None;
    }
    let n = weight.dims()[1];
    let flat = x.clone().reshape([rows, k]);
    let y: Tensor<2> = Tensor::from_dispatch(<Dispatch as FewRowsLinearOps>::few_rows_linear(
        flat.into_dispatch(),
        weight.clone().into_dispatch(),
    ));
    let mut out = dims;
    out[D - 1] = n;
    Some(y.reshape(out))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn few_rows_linear_equals_matmul_for_odd_widths_and_several_rows() {
        let device = Device::flex();
        for (m, k, n) in [(1, 576, 1536), (3, 37, 301), (8, 64, 129)] {
            let x = Tensor::<3>::random([1, m, k], Distribution::Uniform(-1.0, 1.0), &device);
            let w = Tensor::<2>::random([k, n], Distribution::Uniform(-1.0, 1.0), &device);
            let want = x.clone().matmul(w.clone().unsqueeze::<3>());
            let got = few_rows_linear(&x, &w).expect("fused path applies");
            let diff = (want - got).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-4, "({m}, {k}, {n}): {diff}");
        }
    }

    #[test]
    fn few_rows_linear_declines_many_rows_and_autodiff() {
        let device = Device::flex();
        let w = Tensor::<2>::zeros([4, 4], &device);
        assert!(few_rows_linear(&Tensor::<2>::zeros([MAX_ROWS + 1, 4], &device), &w).is_none());
        let ad = device.autodiff();
        let w = Tensor::<2>::zeros([4, 4], &ad);
        assert!(few_rows_linear(&Tensor::<2>::zeros([1, 4], &ad), &w).is_none());
    }
}
