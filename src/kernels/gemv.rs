//! Few-row linear for decoding: `y[m, N] = x[m, K] · W[K, N]` with m ≤ `MAX_ROWS`, split over
//! column blocks on every thread. Decoding one token multiplies a single row by every weight, a
//! memory-bound product (each weight is read once per token); flex's gemm runs such small
//! products on one thread (below its parallel threshold), so a decoding step used one core.
//! Here each thread streams its own column block of `W` (rows of `W` are contiguous in burn's
//! `[in, out]` orientation) and accumulates `x[r, i] · W[i, block]` for every row at once.
//!
//! Decoding weights may be bf16 (`CausalLm::cast_decode_weights`): half the bytes per token,
//! widened to f32 in registers (a bf16 is the top half of an f32), accumulated in f32.
//! `few_rows_linear_t` is the same product against a `[N, K]` weight (a tied embedding as the
//! output head): each output is a dot product of a row of `W` with `x`.
//!
//! Inference only (no autodiff): training and prefill keep burn's linear.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use half::bf16;
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
    /// x [m, K], weight [N, K] -> [m, N]
    fn few_rows_linear_t(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// A weight element the kernels widen to f32.
pub trait Weight: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// `acc[r, ..] += x[r, i] · w_block[i, ..]` over all i, for one column block.
#[inline(always)]
fn block_body<W: Weight>(x: &[f32], w: &[W], k: usize, n: usize, j0: usize, out: &mut [f32]) {
    let width = out.len() / (x.len() / k);
    let rows = x.len() / k;
    for i in 0..k {
        let wrow = &w[i * n + j0..i * n + j0 + width];
        for r in 0..rows {
            let xi = x[r * k + i];
            for (o, &wv) in out[r * width..(r + 1) * width].iter_mut().zip(wrow) {
                *o += xi * wv.f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<W: Weight>(
    x: &[f32],
    w: &[W],
    k: usize,
    n: usize,
    j0: usize,
    out: &mut [f32],
) {
    block_body(x, w, k, n, j0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<W: Weight>(
    x: &[f32],
    w: &[W],
    k: usize,
    n: usize,
    j0: usize,
    out: &mut [f32],
) {
    block_body(x, w, k, n, j0, out)
}

fn block<W: Weight>(x: &[f32], w: &[W], k: usize, n: usize, j0: usize, out: &mut [f32]) {
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

/// `y = x · W`, W [K, N] of f32 or bf16.
fn few_rows_flex(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let x = F32::new(x);
    let weight = weight.to_contiguous();
    let off = weight.layout().start_offset();
    let len = weight.layout().num_elements();
    match weight.dtype() {
        DType::BF16 => few_rows(
            &x,
            &weight.storage::<bf16>()[off..][..len],
            weight.layout().shape()[1],
        ),
        _ => {
            let w = F32::new(weight);
            few_rows(&x, w.as_slice(), w.dims()[1])
        }
    }
}

fn few_rows<W: Weight>(x: &F32, ws: &[W], n: usize) -> FlexTensor {
    let k = x.dims()[1];
    column_blocks(x, n, |xs, j0, out| block(xs, ws, k, n, j0, out))
}

/// `[m, n]` from column blocks of `BLOCK`, each filled by `kernel(x, j0, out)` on its own task
/// (`out` is the block's `m × width` results, row by row).
fn column_blocks(
    x: &F32,
    n: usize,
    kernel: impl Fn(&[f32], usize, &mut [f32]) + Sync,
) -> FlexTensor {
    let m = x.dims()[0];
    let xs = x.as_slice();
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let j0 = b * BLOCK;
            let mut out = vec![0f32; m * BLOCK.min(n - j0)];
            kernel(xs, j0, &mut out);
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

/// `y[r, j] = Σ_i x[r, i] · w[j, i]` for j in `j0..j0 + out.len() / rows` (W as [N, K]).
#[inline(always)]
fn dot_body<W: Weight>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    let rows = x.len() / k;
    let width = out.len() / rows;
    for j in 0..width {
        let wrow = &w[(j0 + j) * k..(j0 + j + 1) * k];
        for r in 0..rows {
            // 16 partial sums: vectorises and keeps rounding close to gemm's.
            let mut lanes = [0f32; 16];
            let xr = &x[r * k..(r + 1) * k];
            let (xb, wb) = (xr.chunks_exact(16), wrow.chunks_exact(16));
            let (xt, wt) = (xb.remainder(), wb.remainder());
            for (xc, wc) in xb.zip(wb) {
                for l in 0..16 {
                    lanes[l] += xc[l] * wc[l].f32();
                }
            }
            let tail: f32 = xt.iter().zip(wt).map(|(a, b)| a * b.f32()).sum();
            out[r * width + j] = lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512<W: Weight>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    dot_body(x, w, k, j0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<W: Weight>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    dot_body(x, w, k, j0, out)
}

fn dot<W: Weight>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { dot_avx512(x, w, k, j0, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { dot_avx2(x, w, k, j0, out) };
        }
    }
    dot_body(x, w, k, j0, out)
}

/// `y = x · Wᵀ`, W [N, K] of f32 or bf16.
fn few_rows_t_flex(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let x = F32::new(x);
    let weight = weight.to_contiguous();
    let off = weight.layout().start_offset();
    let len = weight.layout().num_elements();
    let n = weight.layout().shape()[0];
    match weight.dtype() {
        DType::BF16 => few_rows_t(&x, &weight.storage::<bf16>()[off..][..len], n),
        _ => {
            let w = F32::new(weight);
            few_rows_t(&x, w.as_slice(), n)
        }
    }
}

fn few_rows_t<W: Weight>(x: &F32, ws: &[W], n: usize) -> FlexTensor {
    let k = x.dims()[1];
    column_blocks(x, n, |xs, j0, out| dot(xs, ws, k, j0, out))
}

impl FewRowsLinearOps for Flex {
    fn few_rows_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        few_rows_flex(x, weight)
    }

    fn few_rows_linear_t(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        few_rows_t_flex(x, weight)
    }
}

/// Whether the few-row kernels take `x` against `weight`: flex, no autodiff, f32 input, f32 or
/// bf16 weight, at most `MAX_ROWS` rows.
fn applies<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<usize> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let weight_ok = matches!(weight.dtype(), DType::F32 | DType::BF16);
    let ok = rows > 0
        && rows <= MAX_ROWS
        && !x.is_autodiff()
        && !weight.is_autodiff()
        && weight_ok
        && !super::disabled()
        && super::fused(x)
        && super::is_flex(&weight.device());
    ok.then_some(rows)
}

/// `x · weight` for x [.., K], weight [K, N] (f32 or bf16), with at most `MAX_ROWS` rows, on
/// flex without autodiff; `None` when the fused path does not apply (the caller uses burn's
/// linear).
pub fn few_rows_linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    let rows = applies(x, weight)?;
    let mut dims = x.dims();
    let flat = x.clone().reshape([rows, dims[D - 1]]);
    let y: Tensor<2> = Tensor::from_dispatch(<Dispatch as FewRowsLinearOps>::few_rows_linear(
        flat.into_dispatch(),
        weight.clone().into_dispatch(),
    ));
    dims[D - 1] = weight.dims()[1];
    Some(y.reshape(dims))
}

/// `x · weightᵀ` for weight [N, K] (a tied embedding as the output head); as
/// `few_rows_linear` otherwise.
pub fn few_rows_linear_t<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    let rows = applies(x, weight)?;
    let mut dims = x.dims();
    let flat = x.clone().reshape([rows, dims[D - 1]]);
    let y: Tensor<2> = Tensor::from_dispatch(<Dispatch as FewRowsLinearOps>::few_rows_linear_t(
        flat.into_dispatch(),
        weight.clone().into_dispatch(),
    ));
    dims[D - 1] = weight.dims()[0];
    Some(y.reshape(dims))
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
    fn transposed_and_bf16_weights_give_the_product_of_the_widened_weight() {
        let device = Device::flex();
        let (m, k, n) = (2, 67, 300);
        let x = Tensor::<2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &device);
        let w = Tensor::<2>::random([n, k], Distribution::Uniform(-1.0, 1.0), &device);
        let want = x.clone().matmul(w.clone().transpose());
        let got = few_rows_linear_t(&x, &w).expect("fused path applies");
        assert!((want.clone() - got).abs().max().into_scalar::<f32>() < 1e-4);
        // bf16: the reference is the f32 product with the rounded weight.
        let w16 = w.cast(DType::BF16);
        let want16 = x.clone().matmul(w16.clone().cast(DType::F32).transpose());
        let got16 = few_rows_linear_t(&x, &w16).expect("bf16 applies");
        assert!((want16.clone() - got16).abs().max().into_scalar::<f32>() < 1e-4);
        let wt16 = w16.clone().cast(DType::F32).transpose().cast(DType::BF16);
        let got = few_rows_linear(&x, &wt16).expect("bf16 applies");
        assert!((want16 - got).abs().max().into_scalar::<f32>() < 1e-4);
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
