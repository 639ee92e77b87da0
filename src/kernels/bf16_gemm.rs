//! A frozen bf16 linear computed in bf16 (`--compute-dtype bf16`): `y = x·W` with W bf16, x
//! f32 rounded to bf16 (round-to-nearest-even, as torch's `c10::BFloat16`), products accumulated
//! in f32 by AVX512-BF16's `vdpbf16ps` (`_mm512_dpbf16_ps`: per f32 lane,
//! `acc += a[2i]·b[2i] + a[2i+1]·b[2i+1]`, the bf16 products exact in f32). This is what PyTorch's
//! CPU bf16 autocast does through oneDNN; it trades x's rounding (8 significant bits) for twice
//! the multiply-adds per instruction of an f32 FMA.
//!
//! Shapes (burn orientation): x `[N, in]` (f32), W `[in, out]` (bf16, frozen: PyTorch's
//! `[out, in]` transposed at load) -> y `[N, out]` (f32).
//! - forward  `y = bf16(x) · W`            (gemm with B = W `[in, out]`)
//! - backward `dx = bf16(dy) · Wᵀ`         (gemm with B = Wᵀ `[out, in]`, a strided view)
//!   The weight is frozen: no dW.
//!
//! The gemm (`gemm_bf16`, `dst [m, n] (+)= bf16(a) [m, k] · b [k, n]`): A is rounded once per call
//! into rows of bf16 pairs (a pair `(a[i, 2p], a[i, 2p+1])` is one u32, broadcast to all 16
//! lanes); B is packed once per call into panels of `NR` = 64 columns, each `[k/2][NR][2]`, so
//! one 64-byte load gives 16 columns' pairs (the layout `vdpbf16ps` multiplies lane by lane).
//! Odd k and column tails are zero-padded in the packs. The micro-kernel keeps an `MR × NR`
//! = 6 × 64 tile in 24 zmm accumulators over all of k; rayon splits the output into tiles of
//! `MB` rows × one panel. Packing costs `k·n` element moves per call against `m·k·n`
//! multiply-adds (m = 1024 rows in a 4 × 256 batch), so W is kept in its plain bf16 tensor and
//! packed per call rather than stored twice.
//!
//! Runtime-detected (`is_x86_feature_detected!("avx512bf16")`), never `target-cpu=native`: on
//! any other CPU `gemm_bf16` computes the same composition in f32 (round A, widen B, gemm), and
//! the `Tensor`-level [`bf16_linear`] returns `None` so callers keep the widen path
//! (`kernels::narrow_linear`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::flex::{tensor, F32};

/// Rows per micro-kernel call.
const MR: usize = 6;
/// zmm vectors of 16 f32 per micro-kernel row.
const NV: usize = 4;
/// Columns per packed panel.
const NR: usize = 16 * NV;
/// Rows per parallel task (a multiple of MR): the task's B panel stays in L2 across them.
const MB: usize = MR * 16;

/// Whether this CPU has AVX512-BF16 (`vdpbf16ps`), detected at run time.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to bf16 (the top 16 bits of an f32), round-to-nearest-even; NaN stays a quiet
/// NaN. As torch's `c10::round_to_nearest_even` and `half::bf16::from_f32`.
#[inline(always)]
pub fn round_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let bias = ((bits >> 16) & 1) + 0x7fff;
    (bits.wrapping_add(bias) >> 16) as u16
}

#[inline(always)]
fn widen_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// A bf16 matrix `[rows, cols]` read through its strides (in elements), as bf16 bit patterns.
#[derive(Clone, Copy)]
pub struct Bf16View<'a> {
    pub data: &'a [u16],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Bf16View<'a> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [u16], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "bf16 view: too few values");
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> u16 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// B `[k, n]` packed: panel p holds columns `p·NR ..`, as `[k2][NR][2]` (k2 = ⌈k/2⌉), zero-padded.
/// Row-major B (the forward's W) interleaves two rows; column-major B (the backward's Wᵀ) already
/// holds each pair side by side and is transposed pair-wise.
fn pack_b(b: &Bf16View, packed: &mut Vec<u16>) {
    let (k, n) = (b.rows, b.cols);
    let k2 = k.div_ceil(2);
    let panel = k2 * NR * 2;
    packed.clear();
    packed.resize(n.div_ceil(NR) * panel, 0);
    packed
        .par_chunks_mut(panel)
        .enumerate()
        .for_each(|(p, out)| {
            let j0 = p * NR;
            let width = NR.min(n - j0);
            if b.cs == 1 {
                for (kp, dst) in out.chunks_exact_mut(NR * 2).enumerate() {
                    let r0 = &b.data[2 * kp * b.rs + j0..][..width];
                    let dst = &mut dst[..width * 2];
                    if 2 * kp + 1 < k {
                        let r1 = &b.data[(2 * kp + 1) * b.rs + j0..][..width];
                        for ((pair, &u), &v) in dst.chunks_exact_mut(2).zip(r0).zip(r1) {
                            pair[0] = u;
                            pair[1] = v;
                        }
                    } else {
                        for (pair, &u) in dst.chunks_exact_mut(2).zip(r0) {
                            pair[0] = u;
                        }
                    }
                }
            } else if b.rs == 1 {
                for j in 0..width {
                    let col = &b.data[(j0 + j) * b.cs..][..k];
                    for (kp, pair) in col.chunks(2).enumerate() {
                        let at = kp * NR * 2 + 2 * j;
                        out[at] = pair[0];
                        out[at + 1] = pair.get(1).copied().unwrap_or(0);
                    }
                }
            } else {
                for kp in 0..k2 {
                    let row = &mut out[kp * NR * 2..][..width * 2];
                    let (k0, k1) = (2 * kp, 2 * kp + 1);
                    for (j, pair) in row.chunks_exact_mut(2).enumerate() {
                        pair[0] = b.at(k0, j0 + j);
                        pair[1] = if k1 < k { b.at(k1, j0 + j) } else { 0 };
                    }
                }
            }
        });
}

/// A `[m, k]` (row-major) rounded to bf16, each row padded to `2·k2` values.
fn pack_a(a: &[f32], m: usize, k: usize, packed: &mut Vec<u16>) {
    let k2 = k.div_ceil(2);
    packed.clear();
    packed.resize(m * k2 * 2, 0);
    if k == 0 {
        return;
    }
    packed
        .par_chunks_mut(k2 * 2)
        .zip(a.par_chunks(k))
        .for_each(|(out, row)| {
            for (o, &v) in out.iter_mut().zip(row) {
                *o = round_bf16(v);
            }
        });
}

thread_local! {
    /// The packs of this thread's last product, kept for the next: with a fresh allocation per
    /// call (page faults included), packing measured 1.5–2.2 s of the kernel's 8.4–10.7 s in a
    /// SmolLM2 LoRA step under load (420 products per step).
    static PACKS: std::cell::RefCell<(Vec<u16>, Vec<u16>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// A raw pointer the tile tasks share; each writes a disjoint block of the output.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks write disjoint elements (distinct row × column blocks) and the buffer
// outlives them.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst [m, n] (row-major) = (accumulate ? dst : 0) + bf16(a) [m, k] · b [k, n]`, a row-major
/// contiguous, accumulated in f32. `vdpbf16ps` where the CPU has it, else the same composition in
/// f32 (whose sums differ only in order).
pub fn gemm_bf16(dst: &mut [f32], a: &[f32], m: usize, k: usize, b: &Bf16View, accumulate: bool) {
    let n = b.cols;
    assert!(
        dst.len() == m * n && a.len() == m * k && b.rows == k,
        "gemm_bf16: shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if !accumulate {
        dst.fill(0.0);
    }
    if k == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if supported() {
        let mut run = |pa: &mut Vec<u16>, pb: &mut Vec<u16>| {
            pack_a(a, m, k, pa);
            pack_b(b, pb);
            // SAFETY: the CPU has avx512bf16 (checked above); the packs have the sizes `tiles`
            // reads.
            unsafe { tiles(dst, pa, pb, m, n, k) };
        };
        // A thread that steals another product while this one waits on rayon finds the buffers
        // borrowed and packs into its own.
        PACKS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut packs) => {
                let (pa, pb) = &mut *packs;
                run(pa, pb)
            }
            Err(_) => run(&mut Vec::new(), &mut Vec::new()),
        });
        return;
    }
    reference_gemm(dst, a, m, k, b);
}

/// The composition: `dst += widen(bf16(a)) · widen(b)` in f32 through gemm.
fn reference_gemm(dst: &mut [f32], a: &[f32], m: usize, k: usize, b: &Bf16View) {
    let n = b.cols;
    let ar: Vec<f32> = a.iter().map(|&v| widen_bf16(round_bf16(v))).collect();
    let mut bw = vec![0f32; k * n];
    for (r, row) in bw.chunks_exact_mut(n).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = widen_bf16(b.at(r, c));
        }
    }
    // SAFETY: dst is m×n row-major, ar m×k, bw k×n, all contiguous and of those sizes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            ar.as_ptr(),
            1,
            k as isize,
            bw.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Every `MB × NR` output tile, in parallel (panel-major, so neighbouring tasks share a panel).
///
/// # Safety
/// The CPU must have avx512bf16; `pa` is `pack_a(a, m, k)` and `pb` is `pack_b(b)` for b `[k, n]`.
#[cfg(target_arch = "x86_64")]
unsafe fn tiles(dst: &mut [f32], pa: &[u16], pb: &[u16], m: usize, n: usize, k: usize) {
    let k2 = k.div_ceil(2);
    let (row_blocks, panels) = (m.div_ceil(MB), n.div_ceil(NR));
    let out = Out(dst.as_mut_ptr());
    (0..row_blocks * panels).into_par_iter().for_each(|t| {
        let (p, rb) = (t / row_blocks, t % row_blocks);
        let panel = &pb[p * k2 * NR * 2..][..k2 * NR * 2];
        let (j0, width) = (p * NR, NR.min(n - p * NR));
        let r_end = ((rb + 1) * MB).min(m);
        let mut c = [[0f32; NR]; MR];
        for r0 in (rb * MB..r_end).step_by(MR) {
            let rows = MR.min(r_end - r0);
            let a = pa[r0 * k2 * 2..].as_ptr() as *const u32;
            // SAFETY: rows ≤ MR rows of k2 pairs from r0 lie in pa; panel holds k2·NR pairs.
            unsafe {
                match rows {
                    6 => micro::<6>(a, k2, panel.as_ptr(), &mut c),
                    5 => micro::<5>(a, k2, panel.as_ptr(), &mut c),
                    4 => micro::<4>(a, k2, panel.as_ptr(), &mut c),
                    3 => micro::<3>(a, k2, panel.as_ptr(), &mut c),
                    2 => micro::<2>(a, k2, panel.as_ptr(), &mut c),
                    _ => micro::<1>(a, k2, panel.as_ptr(), &mut c),
                }
            }
            for (i, row) in c.iter().enumerate().take(rows) {
                // SAFETY: row r0+i < m, columns j0..j0+width < n: this task's block of dst.
                let d = unsafe { std::slice::from_raw_parts_mut(out.at((r0 + i) * n + j0), width) };
                for (d, &v) in d.iter_mut().zip(row) {
                    *d += v;
                }
            }
        }
    });
}

/// `c[r, ..] = Σ_p a[r, p] ·pairs· panel[p, ..]` for R ≤ MR rows of A (k2 u32 pairs each, row
/// stride k2) against one packed panel, in 24 (or fewer) zmm accumulators.
///
/// # Safety
/// avx512bf16 present; `a` addresses R rows of k2 u32; `panel` k2·NR·2 u16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f")]
unsafe fn micro<const R: usize>(
    a: *const u32,
    k2: usize,
    panel: *const u16,
    c: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    for p in 0..k2 {
        let bp = panel.add(p * NR * 2) as *const f32;
        let mut bv = [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); NV];
        for (v, b) in bv.iter_mut().enumerate() {
            *b = std::mem::transmute::<__m512, __m512bh>(_mm512_loadu_ps(bp.add(16 * v)));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let pair = *a.add(r * k2 + p);
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair as i32));
            for (acc_rv, b) in acc_r.iter_mut().zip(bv) {
                *acc_rv = _mm512_dpbf16_ps(*acc_rv, av, b);
            }
        }
    }
    for (acc_r, c_r) in acc.iter().zip(c.iter_mut()) {
        for (v, &vec) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(c_r.as_mut_ptr().add(16 * v), vec);
        }
    }
}

/// A bf16 flex tensor's bit patterns and `[rows, cols]` strides (copied to contiguous only for
/// a negative or broadcast stride).
pub(crate) struct Bf16Tensor {
    tensor: FlexTensor,
}

impl Bf16Tensor {
    pub(crate) fn new(tensor: FlexTensor) -> Self {
        assert_eq!(
            tensor.dtype(),
            DType::BF16,
            "bf16_linear takes a bf16 weight"
        );
        let plain = |t: &FlexTensor| t.layout().strides().iter().all(|&s| s > 0);
        let tensor = if plain(&tensor) {
            tensor
        } else {
            tensor.to_contiguous()
        };
        Self { tensor }
    }

    pub(crate) fn view(&self) -> Bf16View<'_> {
        let l = self.tensor.layout();
        let [rows, cols] = l.shape().dims::<2>();
        let values = &self.tensor.storage::<half::bf16>()[l.start_offset()..];
        // SAFETY: half::bf16 is `repr(transparent)` over u16.
        let data =
            unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u16, values.len()) };
        Bf16View {
            data,
            rows,
            cols,
            rs: l.strides()[0] as usize,
            cs: l.strides()[1] as usize,
        }
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait Bf16LinearOps: Backend {
    /// x [N, in] (f32), weight [in, out] (bf16, a constant) -> [N, out] (f32)
    fn bf16_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// y [N, out] = bf16(x) [N, in] · W [in, out].
fn forward(x: FlexTensor, weight: &Bf16Tensor) -> FlexTensor {
    let x = F32::new(x);
    let w = weight.view();
    let [n, inp] = [x.dims()[0], x.dims()[1]];
    assert_eq!(inp, w.rows, "bf16_linear: shapes");
    let mut y = vec![0f32; n * w.cols];
    gemm_bf16(&mut y, x.as_slice(), n, inp, &w, false);
    tensor(y, [n, w.cols])
}

/// dx [N, in] = bf16(dy) [N, out] · Wᵀ [out, in].
fn backward(dy: FlexTensor, weight: &Bf16Tensor) -> FlexTensor {
    let dy = F32::new(dy);
    let wt = weight.view().t();
    let [n, out] = [dy.dims()[0], dy.dims()[1]];
    assert_eq!(out, wt.rows, "bf16_linear: shapes");
    let mut dx = vec![0f32; n * wt.cols];
    gemm_bf16(&mut dx, dy.as_slice(), n, out, &wt, false);
    tensor(dx, [n, wt.cols])
}

impl Bf16LinearOps for Flex {
    fn bf16_linear(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        forward(x, &Bf16Tensor::new(weight))
    }
}

impl<C: CheckpointStrategy> Bf16LinearOps for Autodiff<Flex, C> {
    fn bf16_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Bf16LinearBackward;

        impl Backward<Flex, 1> for Bf16LinearBackward {
            /// The bf16 weight [in, out].
            type State = FlexTensor;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x] = ops.parents;
                let dy = grads.consume::<Flex>(&ops.node);
                if let Some(node) = node_x {
                    let dx = backward(dy, &Bf16Tensor::new(ops.state));
                    grads.register::<Flex>(node.id, dx);
                }
            }
        }

        // The weight is a constant: no graph edge, no gradient.
        let weight = weight.into_primitive();
        match Bf16LinearBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = forward(x.into_primitive(), &Bf16Tensor::new(weight.clone()));
                prep.finish(weight, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(x.into_primitive(), &Bf16Tensor::new(weight)))
            }
        }
    }
}

/// `bf16(x) · W` for x [.., in] (f32) and a frozen bf16 weight [in, out] on flex, on a CPU with
/// AVX512-BF16; `None` for any other case, which the caller computes on the widen path.
pub fn bf16_linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    let [inp, out] = weight.dims();
    let dims = x.dims();
    if weight.dtype() != DType::BF16
        || weight.is_require_grad()
        || !super::fused(x)
        || !super::is_flex(&weight.device())
        || !supported()
        || D < 2
        || dims[D - 1] != inp
    {
        return None;
    }
    let rows: usize = dims[..D - 1].iter().product();
    let x2 = x.clone().reshape([rows, inp]);
    let y = Tensor::<2>::from_dispatch(<Dispatch as Bf16LinearOps>::bf16_linear(
        x2.into_dispatch(),
        weight.clone().into_dispatch(),
    ));
    let mut out_dims = dims;
    out_dims[D - 1] = out;
    Some(y.reshape(out_dims))
}

/// `bf16(x) · widen(W)` through burn's ops: the composition the kernel computes (in another
/// summation order), and its reference in tests.
pub fn reference<const D: usize>(x: Tensor<D>, weight: &Tensor<2>) -> Tensor<D> {
    let x = x.cast(DType::BF16).cast(DType::F32);
    burn::tensor::module::linear(x, weight.clone().cast(DType::F32), None)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;

    fn bits(values: &[f32]) -> Vec<u16> {
        values.iter().map(|&v| round_bf16(v)).collect()
    }

    /// Host gemm against the composition in f64 with a bound on f32 reordering:
    /// |got − exact| ≤ 2k·2⁻²⁴·Σ|a||b| (each of the two sums rounds at most k times).
    fn check_gemm(m: usize, k: usize, n: usize, transposed: bool, accumulate: bool) {
        let mut seed = 0x9e3779b9u32 ^ (m * 7 + k * 13 + n) as u32;
        let mut rand = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let a: Vec<f32> = (0..m * k).map(|_| rand()).collect();
        let b_vals: Vec<f32> = (0..k * n).map(|_| rand()).collect();
        // Stored as [k, n] or, transposed, as [n, k] read through a transposed view.
        let stored = if transposed {
            let mut t = vec![0f32; k * n];
            for r in 0..k {
                for c in 0..n {
                    t[c * k + r] = b_vals[r * n + c];
                }
            }
            bits(&t)
        } else {
            bits(&b_vals)
        };
        let b = if transposed {
            Bf16View::row_major(&stored, n, k).t()
        } else {
            Bf16View::row_major(&stored, k, n)
        };
        let start: Vec<f32> = (0..m * n).map(|_| rand()).collect();
        let mut got = if accumulate {
            start.clone()
        } else {
            vec![f32::NAN; m * n]
        };
        gemm_bf16(&mut got, &a, m, k, &b, accumulate);
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let x = widen_bf16(round_bf16(a[i * k + p])) as f64;
                    let w = widen_bf16(b.at(p, j)) as f64;
                    exact += x * w;
                    mag += (x * w).abs();
                }
                if accumulate {
                    exact += start[i * n + j] as f64;
                    mag += (start[i * n + j] as f64).abs();
                }
                let bound = 2.0 * (k + 1) as f64 * 2f64.powi(-24) * mag + 1e-30;
                let diff = (got[i * n + j] as f64 - exact).abs();
                assert!(
                    diff <= bound,
                    "m{m} k{k} n{n} t{transposed} acc{accumulate} at ({i}, {j}): {diff} > {bound}"
                );
            }
        }
    }

    #[test]
    fn the_bf16_gemm_equals_the_rounded_composition_within_f32_reordering_on_odd_shapes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 7),
            (7, 64, 64),
            (13, 33, 65),
            (97, 130, 129),
            (6, 576, 192),
        ] {
            for transposed in [false, true] {
                check_gemm(m, k, n, transposed, false);
            }
            check_gemm(m, k, n, false, true);
        }
    }

    #[test]
    fn rounding_to_bf16_is_round_to_nearest_even_as_half() {
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            -f32::INFINITY,
        ];
        values.extend((0..1000).map(|i| (i as f32 * 0.7131).sin() * 10f32.powi(i % 7 - 3)));
        for v in values {
            assert_eq!(round_bf16(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        assert!(widen_bf16(round_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn a_bf16_linear_equals_the_rounded_composition_in_value_and_input_gradient() {
        if !supported() {
            eprintln!("skipped: this CPU has no avx512bf16 (bf16_linear returns None)");
            return;
        }
        let device = Device::flex().autodiff();
        let u = Distribution::Uniform(-1.0, 1.0);
        let w = Tensor::<2>::random([67, 131], u, &device).cast(DType::BF16);
        let x = Tensor::<3>::random([2, 19, 67], u, &device).require_grad();
        let probe = Tensor::<3>::random([2, 19, 131], u, &device);
        let want = reference(x.clone(), &w);
        let got = bf16_linear(&x, &w).expect("a bf16 weight on flex takes the op");
        let diff = (want.clone() - got.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-4, "value {diff}");
        // The reference's input gradient is probe·widen(W)ᵀ in f32; the op's rounds the
        // incoming gradient to bf16 first (as autocast's backward), so compare with that.
        let gg = (got * probe.clone()).sum().backward();
        let got_dx = x.grad(&gg).unwrap();
        let plain = Device::flex();
        let w_plain = Tensor::<2>::from_data(w.to_data(), &plain).cast(DType::BF16);
        let probe_plain = Tensor::<3>::from_data(probe.to_data(), &plain);
        let want_dx = reference(probe_plain, &w_plain.transpose());
        let diff = (got_dx - want_dx).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-4, "gradient {diff}");
    }

    /// The fused LoRA linear with bf16 compute (`lora_linear_in`, `ComputeDtype::Bf16`): its base
    /// product and the base part of dx are the bf16 gemm's, the low-rank path and dA, dB stay
    /// f32. Against that composition built from burn ops (x and dY rounded to bf16 for W only):
    /// values and every gradient within 1e-5 relative (the sums differ only in order).
    #[test]
    fn a_lora_linear_in_bf16_equals_its_composition_in_values_and_every_gradient() {
        use crate::kernels::lora_linear::lora_linear_in;
        use crate::models::linear::ComputeDtype;
        if !supported() {
            eprintln!("skipped: this CPU has no avx512bf16");
            return;
        }
        fn rel<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
            let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-30);
            (a - b).abs().max().into_scalar::<f32>() / scale
        }
        let device = Device::flex().autodiff();
        let plain = Device::flex();
        let u = |lo, hi| Distribution::Uniform(lo, hi);
        let (inp, out, r, s) = (45, 70, 4, 1.75);
        let w = Tensor::<2>::random([inp, out], u(-0.1, 0.1), &device).cast(DType::BF16);
        let bias = Tensor::<1>::random([out], u(-0.1, 0.1), &device);
        let x = Tensor::<3>::random([2, 13, inp], u(-1.0, 1.0), &device).require_grad();
        let a = Tensor::<2>::random([inp, r], u(-0.1, 0.1), &device).require_grad();
        let b = Tensor::<2>::random([r, out], u(-0.1, 0.1), &device).require_grad();
        let probe = Tensor::<3>::random([2, 13, out], u(-1.0, 1.0), &device);
        let y = lora_linear_in(
            x.clone(),
            None,
            w.clone(),
            Some(bias.clone()),
            a.clone(),
            b.clone(),
            s,
            ComputeDtype::Bf16,
        );
        let want = reference(x.clone(), &w)
            + bias.clone().unsqueeze::<3>()
            + x.clone()
                .matmul(a.clone().unsqueeze::<3>())
                .matmul(b.clone().unsqueeze::<3>())
                .mul_scalar(s);
        let dv = rel(y.clone(), want.clone());
        assert!(dv <= 1e-5, "value {dv}");
        let g = (y * probe.clone()).sum().backward();
        let gw = (want * probe.clone()).sum().backward();
        let da = rel(a.grad(&g).unwrap(), a.grad(&gw).unwrap());
        let db = rel(b.grad(&g).unwrap(), b.grad(&gw).unwrap());
        assert!(da <= 1e-5 && db <= 1e-5, "dA {da}, dB {db}");
        // dx = bf16(dY)·Wᵀ + s·(dY·Bᵀ)·Aᵀ, on the plain device.
        let on_plain = |t: Tensor<2>| Tensor::<2>::from_data(t.to_data(), &plain);
        let dy = Tensor::<3>::from_data(probe.to_data(), &plain);
        let w_plain = on_plain(w.clone()).cast(DType::BF16);
        let (a_plain, b_plain) = (on_plain(a.clone()), on_plain(b.clone()));
        let want_dx = reference(dy.clone(), &w_plain.transpose())
            + dy.matmul(b_plain.transpose().unsqueeze::<3>())
                .matmul(a_plain.transpose().unsqueeze::<3>())
                .mul_scalar(s);
        let dx = rel(x.grad(&g).unwrap(), want_dx);
        assert!(dx <= 1e-5, "dx {dx}");
    }
}
