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
//! output head): each output is a dot product of a row of `W` with `x`. A `[K, N]` weight that is
//! the transposed view of a contiguous `[N, K]` one (the bf16 decoding copies, which
//! `CausalLm::cast_decode_weights` stores that way) takes the same dot products: each task then
//! streams whole contiguous rows of the weight, where the column blocks read `K` separate
//! segments of a few cache lines; measured on the SmolLM2 shapes inside one process, the dot
//! products moved 1.6–1.9× the bytes per CPU second of the column blocks.
//!
//! Inference only (no autodiff): training and prefill keep burn's linear.

use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::flex::{tensor, F32};

/// Rows up to which the column-split kernel beats gemm (one decoding step per sequence).
pub const MAX_ROWS: usize = 8;

/// Rows up to which the dot products take a bf16 weight (a generation prompt of up to 32 tokens,
/// as `bench_forward`'s 16): the alternative widens every weight to an f32 copy for gemm, 6 bytes
/// of memory traffic per weight on top of gemm's own reads, where the dots read its 2 bytes once
/// and widen four rows at a time into an L1 buffer shared by all input rows. Beyond
/// `MAX_ROWS`, a bf16 weight in the `[K, N]` layout still takes that widened product.
pub const MAX_DOT_ROWS: usize = 32;

/// Columns (or weight rows) per task at most: a multiple of the SIMD width.
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

/// `y = x · W`, W [K, N] of f32 or bf16: column blocks, or the dot products when W is the
/// transposed view of a contiguous [N, K] weight.
fn few_rows_flex(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let x = F32::new(x);
    if let Some((off, n, _)) = row_major_storage(&weight, true).filter(|_| !weight.is_contiguous())
    {
        return dots_flex(&x, &weight, off, n);
    }
    if x.dims()[0] > MAX_ROWS {
        // A bf16 [K, N] weight with more rows than the column blocks suit (see `MAX_DOT_ROWS`).
        return Flex::float_matmul(x.into_inner(), super::narrow_linear::widen(weight));
    }
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

/// `[m, n]` from column blocks (of `task_width`), each filled by `kernel(x, j0, out)` on its own
/// task (`out` is the block's `m × width` results, row by row); written in place when m = 1.
fn column_blocks(
    x: &F32,
    n: usize,
    kernel: impl Fn(&[f32], usize, &mut [f32]) + Sync,
) -> FlexTensor {
    let m = x.dims()[0];
    let xs = x.as_slice();
    let width = task_width(n, 16);
    if m == 1 {
        let mut y = vec![0f32; n];
        y.par_chunks_mut(width)
            .enumerate()
            .for_each(|(b, out)| kernel(xs, b * width, out));
        return tensor(y, [1, n]);
    }
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(width))
        .into_par_iter()
        .map(|b| {
            let j0 = b * width;
            let mut out = vec![0f32; m * width.min(n - j0)];
            kernel(xs, j0, &mut out);
            (j0, out)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (j0, out) in blocks {
        let w = out.len() / m;
        for r in 0..m {
            y[r * n + j0..r * n + j0 + w].copy_from_slice(&out[r * w..(r + 1) * w]);
        }
    }
    tensor(y, [m, n])
}

/// `out[j · rows + r] = Σ_i x[r, i] · w[j0 + j, i]` for `j < out.len() / rows` (W as [N, K];
/// `out` holds the task's outputs weight row by weight row).
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
            out[j * rows + r] = lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The dot products with AVX-512F intrinsics: four weight rows at a time against one input
    //! row (four independent accumulators hide the FMA latency, and four sequential streams keep
    //! the prefetchers busy), 16 lanes per step, a bf16 weight widened in the register by a
    //! zero-extension and a 16-bit shift (a bf16 is the top half of an f32). One function per
    //! weight type, written by a macro: a generic helper taking or returning `__m512` outside a
    //! `target_feature` function passes it through the stack (measured: 1.5× slower).
    use std::arch::x86_64::*;

    use half::bf16;

    use super::Weight;

    /// 16 weights from `$p` widened to f32 lanes. Masked loads with every lane on: plain
    /// `loadu`s go through `ptr::read_unaligned`, whose debug-build precondition checks (our
    /// crate keeps debug assertions) ran on every load, through the stack.
    macro_rules! load16 {
        (f32, $p:expr) => {
            _mm512_maskz_loadu_ps(0xffff, $p)
        };
        (bf16, $p:expr) => {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(0xffff, $p as *const i16),
            )))
        };
    }

    macro_rules! dots {
        ($name:ident, $w:tt) => {
            /// As `super::dot_body`.
            ///
            /// # Safety
            /// The CPU must have AVX-512F, BW and VL.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            pub unsafe fn $name(x: &[f32], w: &[$w], k: usize, j0: usize, out: &mut [f32]) {
                let rows = x.len() / k;
                let width = out.len() / rows;
                assert!(
                    w.len() >= (j0 + width) * k,
                    "dots: weight rows out of range"
                );
                let full = k / 16 * 16;
                let mut j = 0;
                // SAFETY: every load reads inside rows j0..j0 + width of `w` (checked above) or
                // inside `x`; `i + 16 <= full <= k`.
                unsafe {
                    while j + 4 <= width {
                        let p0 = w.as_ptr().wrapping_add((j0 + j) * k);
                        let (p1, p2, p3) = (
                            p0.wrapping_add(k),
                            p0.wrapping_add(2 * k),
                            p0.wrapping_add(3 * k),
                        );
                        for r in 0..rows {
                            let xr = x.as_ptr().wrapping_add(r * k);
                            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                            let (mut a2, mut a3) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                            let mut i = 0;
                            while i < full {
                                let xv = load16!(f32, xr.wrapping_add(i));
                                a0 = _mm512_fmadd_ps(load16!($w, p0.wrapping_add(i)), xv, a0);
                                a1 = _mm512_fmadd_ps(load16!($w, p1.wrapping_add(i)), xv, a1);
                                a2 = _mm512_fmadd_ps(load16!($w, p2.wrapping_add(i)), xv, a2);
                                a3 = _mm512_fmadd_ps(load16!($w, p3.wrapping_add(i)), xv, a3);
                                i += 16;
                            }
                            let mut sums = [
                                _mm512_reduce_add_ps(a0),
                                _mm512_reduce_add_ps(a1),
                                _mm512_reduce_add_ps(a2),
                                _mm512_reduce_add_ps(a3),
                            ];
                            for ii in full..k {
                                let xi = *xr.wrapping_add(ii);
                                sums[0] += xi * (*p0.wrapping_add(ii)).f32();
                                sums[1] += xi * (*p1.wrapping_add(ii)).f32();
                                sums[2] += xi * (*p2.wrapping_add(ii)).f32();
                                sums[3] += xi * (*p3.wrapping_add(ii)).f32();
                            }
                            for (t, v) in sums.into_iter().enumerate() {
                                out[(j + t) * rows + r] = v;
                            }
                        }
                        j += 4;
                    }
                    while j < width {
                        let p0 = w.as_ptr().wrapping_add((j0 + j) * k);
                        for r in 0..rows {
                            let xr = x.as_ptr().wrapping_add(r * k);
                            let mut a0 = _mm512_setzero_ps();
                            let mut i = 0;
                            while i < full {
                                a0 = _mm512_fmadd_ps(
                                    load16!($w, p0.wrapping_add(i)),
                                    load16!(f32, xr.wrapping_add(i)),
                                    a0,
                                );
                                i += 16;
                            }
                            let mut sum = _mm512_reduce_add_ps(a0);
                            for ii in full..k {
                                sum += *xr.wrapping_add(ii) * (*p0.wrapping_add(ii)).f32();
                            }
                            out[j * rows + r] = sum;
                        }
                        j += 1;
                    }
                }
            }
        };
    }

    dots!(dots_f32, f32);
    dots!(dots_bf16_one, bf16);

    /// As `super::dot_body` for a bf16 weight. With several input rows, each group of four
    /// weight rows is widened once into an f32 buffer (4·K values, in L1 for the model sizes
    /// here) and every input row takes its dot products from there.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dots_bf16(x: &[f32], w: &[bf16], k: usize, j0: usize, out: &mut [f32]) {
        let rows = x.len() / k;
        if rows == 1 {
            // SAFETY: same features.
            return unsafe { dots_bf16_one(x, w, k, j0, out) };
        }
        let width = out.len() / rows;
        let mut wide = vec![0f32; 4 * k];
        let mut j = 0;
        while j < width {
            let n = 4.min(width - j);
            let src = &w[(j0 + j) * k..(j0 + j + n) * k];
            for (d, s) in wide.iter_mut().zip(src) {
                *d = s.f32();
            }
            // SAFETY: same features; `wide` holds the n rows.
            unsafe { dots_f32(x, &wide[..n * k], k, 0, &mut out[j * rows..(j + n) * rows]) };
            j += n;
        }
    }

    /// A weight type with its AVX-512 dot kernel.
    pub trait Dots: Weight {
        /// # Safety
        /// The CPU must have AVX-512F, BW and VL.
        unsafe fn dots(x: &[f32], w: &[Self], k: usize, j0: usize, out: &mut [f32]);
    }

    impl Dots for f32 {
        unsafe fn dots(x: &[f32], w: &[Self], k: usize, j0: usize, out: &mut [f32]) {
            // SAFETY: the caller checked AVX-512F/BW/VL.
            unsafe { dots_f32(x, w, k, j0, out) }
        }
    }

    impl Dots for bf16 {
        unsafe fn dots(x: &[f32], w: &[Self], k: usize, j0: usize, out: &mut [f32]) {
            // SAFETY: the caller checked AVX-512F/BW/VL.
            unsafe { dots_bf16(x, w, k, j0, out) }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<W: Weight>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    dot_body(x, w, k, j0, out)
}

#[cfg(target_arch = "x86_64")]
fn dot<W: avx512::Dots>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the CPU has AVX-512F/BW/VL; `dots` checks the row range.
        return unsafe { W::dots(x, w, k, j0, out) };
    }
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dot_avx2(x, w, k, j0, out) };
    }
    dot_body(x, w, k, j0, out)
}

#[cfg(not(target_arch = "x86_64"))]
fn dot<W: Weight>(x: &[f32], w: &[W], k: usize, j0: usize, out: &mut [f32]) {
    dot_body(x, w, k, j0, out)
}

/// The contiguous `[N, K]` storage behind `weight` when it is one: a contiguous `[N, K]` tensor
/// (`transposed = false`) or the `[K, N]` transposed view of one (`transposed = true`).
fn row_major_storage(weight: &FlexTensor, transposed: bool) -> Option<(usize, usize, usize)> {
    let layout = weight.layout();
    let dims = layout.shape();
    let (rows, cols) = match transposed {
        false => (dims[0], dims[1]),
        true => (dims[1], dims[0]),
    };
    let strides = layout.strides();
    let (row_stride, col_stride) = match transposed {
        false => (strides[0], strides[1]),
        true => (strides[1], strides[0]),
    };
    let dense = (col_stride == 1 || cols == 1) && (row_stride == cols as isize || rows == 1);
    dense.then_some((layout.start_offset(), rows, cols))
}

/// `y = x · Wᵀ` for the `[N, K]` rows at `off` in `weight`'s storage, f32 or bf16.
fn dots_flex(x: &F32, weight: &FlexTensor, off: usize, n: usize) -> FlexTensor {
    let k = x.dims()[1];
    match weight.dtype() {
        DType::BF16 => few_rows_t(x, &weight.storage::<bf16>()[off..][..n * k], n),
        _ => few_rows_t(x, &weight.storage::<f32>()[off..][..n * k], n),
    }
}

/// `y = x · Wᵀ`, W [N, K] of f32 or bf16.
fn few_rows_t_flex(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
    let x = F32::new(x);
    let weight = match row_major_storage(&weight, false) {
        Some(_) => weight,
        None => weight.to_contiguous(),
    };
    let (off, n, _) = row_major_storage(&weight, false).expect("a contiguous weight");
    dots_flex(&x, &weight, off, n)
}

/// Rows of `W` per task: at least four tasks per thread (so work stealing can even them out on
/// small weights: 576 outputs in blocks of 128 gave one thread 3 of 5), a multiple of `align`.
fn task_width(n: usize, align: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = n.div_ceil(BLOCK).max(4 * threads);
    n.div_ceil(tasks).next_multiple_of(align).max(align)
}

#[cfg(target_arch = "x86_64")]
fn few_rows_t<W: avx512::Dots>(x: &F32, ws: &[W], n: usize) -> FlexTensor {
    rows_of_w(x, n, |xs, j0, out| dot(xs, ws, x.dims()[1], j0, out))
}

#[cfg(not(target_arch = "x86_64"))]
fn few_rows_t<W: Weight>(x: &F32, ws: &[W], n: usize) -> FlexTensor {
    rows_of_w(x, n, |xs, j0, out| dot(xs, ws, x.dims()[1], j0, out))
}

/// `[m, n]` from tasks over rows of W, each filling `kernel(x, j0, out)` with its outputs weight
/// row by weight row (`out[j · m + r]`), written in place; transposed back at the end when m > 1.
fn rows_of_w(x: &F32, n: usize, kernel: impl Fn(&[f32], usize, &mut [f32]) + Sync) -> FlexTensor {
    let m = x.dims()[0];
    let xs = x.as_slice();
    let width = task_width(n, 4);
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(width * m)
        .enumerate()
        .for_each(|(b, out)| kernel(xs, b * width, out));
    if m == 1 {
        return tensor(yt, [1, n]);
    }
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            y[r * n + j] = v;
        }
    }
    tensor(y, [m, n])
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
/// bf16 weight, at most `MAX_ROWS` rows (`MAX_DOT_ROWS` for a bf16 weight).
fn applies<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<usize> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let weight_ok = matches!(weight.dtype(), DType::F32 | DType::BF16);
    let max_rows = match weight.dtype() {
        DType::BF16 => MAX_DOT_ROWS,
        _ => MAX_ROWS,
    };
    let ok = rows > 0
        && rows <= max_rows
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
    fn a_transposed_view_of_a_row_major_weight_takes_the_dot_products_and_equals_matmul() {
        let device = Device::flex();
        for (m, k, n) in [(1, 576, 1536), (3, 37, 301), (8, 64, 129), (1, 16, 3)] {
            let x = Tensor::<3>::random([1, m, k], Distribution::Uniform(-1.0, 1.0), &device);
            // [n, k] contiguous, used as its [k, n] view: how `cast_decode_weights` stores them.
            let rows = Tensor::<2>::random([n, k], Distribution::Uniform(-1.0, 1.0), &device);
            for dtype in [DType::F32, DType::BF16] {
                let w = rows.clone().cast(dtype).transpose();
                let widened = w.clone().cast(DType::F32);
                let want = x.clone().matmul(widened.unsqueeze::<3>());
                let got = few_rows_linear(&x, &w).expect("fused path applies");
                let diff = (want - got).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-4, "{dtype:?} ({m}, {k}, {n}): {diff}");
            }
        }
    }

    #[test]
    fn a_prompt_of_up_to_32_rows_against_a_bf16_weight_equals_the_widened_product() {
        let device = Device::flex();
        for (m, k, n) in [(16, 576, 130), (32, 37, 9), (9, 64, 64)] {
            let x = Tensor::<2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &device);
            let rows = Tensor::<2>::random([n, k], Distribution::Uniform(-1.0, 1.0), &device)
                .cast(DType::BF16);
            let want = x.clone().matmul(rows.clone().cast(DType::F32).transpose());
            // The [out, in] storage seen as [in, out] (dots) and a contiguous [in, out] copy.
            let contiguous = rows.clone().cast(DType::F32).transpose();
            let contiguous =
                Tensor::<2>::from_data(contiguous.into_data(), &device).cast(DType::BF16);
            for w in [rows.transpose(), contiguous] {
                let got = few_rows_linear(&x, &w).expect("a bf16 weight takes up to 32 rows");
                let diff = (want.clone() - got).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-4, "({m}, {k}, {n}): {diff}");
            }
        }
        let x = Tensor::<2>::zeros([MAX_DOT_ROWS + 1, 4], &device);
        let w = Tensor::<2>::zeros([4, 4], &device).cast(DType::BF16);
        assert!(few_rows_linear(&x, &w).is_none());
    }

    #[test]
    fn every_output_column_is_written_whatever_the_split() {
        let device = Device::flex();
        // Widths around the task sizes: a last task of 1..3 rows, fewer rows than tasks.
        for n in [1, 5, 63, 577, 1031] {
            let x = Tensor::<2>::ones([1, 16], &device);
            let rows = Tensor::<2>::ones([n, 16], &device);
            let got = few_rows_linear(&x, &rows.clone().transpose()).expect("applies");
            let blocks =
                few_rows_linear(&x, &Tensor::<2>::ones([16, n], &device)).expect("applies");
            for y in [got, blocks] {
                let values = crate::models::tensor_util::to_vec(y);
                assert!(values.iter().all(|&v| v == 16.0), "n = {n}");
            }
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
