//! The forward host kernel of the fused attention (FlashAttention-2's Algorithm 1: online softmax
//! over key blocks, log-sum-exp saved per query row) and what the backward (`backward.rs`) shares
//! with it: strided f32 views, the mask's visibility rules, blocked products through `gemm`.
//! See the parent module for the algorithm and its sources.

use rayon::prelude::*;

use super::rows;
use super::AttnMask;

/// Query rows per block (forward task and backward inner loop).
pub const BQ: usize = 64;
/// Keys per block: one `[BQ, BK]` score tile (16 KiB) stays in L1 with the Q/K rows it came from.
pub const BK: usize = 64;

/// A read-only strided 4-D f32 view: element `(a, b, c, e)` at `offset + a·s0 + b·s1 + c·s2 + e`
/// (innermost stride 1; broadcast dims have stride 0, as flex's `expand` gives).
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub strides: [isize; 3],
    pub dims: [usize; 4],
}

impl View<'_> {
    /// Pointer to row `(a, b, c, 0..d)`.
    pub(super) fn row(&self, a: usize, b: usize, c: usize) -> *const f32 {
        debug_assert!(a < self.dims[0] && b < self.dims[1] && c < self.dims[2]);
        let [s0, s1, s2] = self.strides;
        let at = self.offset as isize + a as isize * s0 + b as isize * s1 + c as isize * s2;
        debug_assert!(at >= 0 && (at as usize) + self.dims[3] <= self.data.len());
        // SAFETY: the layout came from a valid flex tensor over `data`, so every in-range index
        // (checked above in debug builds) addresses an element of `data`.
        unsafe { self.data.as_ptr().offset(at) }
    }

    pub(super) fn row_slice(&self, a: usize, b: usize, c: usize) -> &[f32] {
        // SAFETY: see `row`; the row's `d` elements are contiguous (innermost stride 1).
        unsafe { std::slice::from_raw_parts(self.row(a, b, c), self.dims[3]) }
    }

    /// Stride between consecutive rows of dim 2 (sequence).
    pub(super) fn row_stride(&self) -> isize {
        self.strides[2]
    }
}

/// The problem's sizes: q `[b, h, s, d]`, k/v `[b, kvh, t, d]`.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub s: usize,
    pub t: usize,
    pub d: usize,
}

impl Dims {
    /// From q `[b, h, s, d]` and k `[b, kvh, t, d]`.
    pub(super) fn of(q: &View, k: &View) -> Self {
        Self {
            b: q.dims[0],
            h: q.dims[1],
            kvh: k.dims[1],
            s: q.dims[2],
            t: k.dims[2],
            d: q.dims[3],
        }
    }

    /// The KV head serving query head `hq` (GQA/MQA: `h / kvh` consecutive query heads per group,
    /// as transformers' `repeat_kv`).
    pub(super) fn kv_head(&self, hq: usize) -> usize {
        hq / (self.h / self.kvh)
    }
}

/// What the mask says about one (batch row, query, key block).
pub(super) struct Visibility<'a> {
    key_valid: Option<&'a [bool]>,
    pub(super) causal_offset: Option<usize>,
    t: usize,
}

impl<'a> Visibility<'a> {
    pub(super) fn new(mask: &'a AttnMask, batch: usize, t: usize) -> Self {
        Self {
            key_valid: mask
                .key_valid
                .as_ref()
                .map(|v| &v[batch * t..(batch + 1) * t]),
            causal_offset: mask.causal_offset,
            t,
        }
    }

    /// One past the last key query `i` may see (causal), before padding.
    pub(super) fn limit(&self, i: usize) -> usize {
        match self.causal_offset {
            Some(off) => (i + off + 1).min(self.t),
            None => self.t,
        }
    }

    /// Whether any key in `j0..j1` is real (padding skips whole blocks of a left-padded row).
    pub(super) fn any_valid(&self, j0: usize, j1: usize) -> bool {
        self.key_valid.is_none_or(|v| v[j0..j1].iter().any(|&x| x))
    }

    /// `bias[c]` = 0 for a real key `j0 + c`, −∞ for padding.
    pub(super) fn bias(&self, j0: usize, bias: &mut [f32]) {
        for (c, b) in bias.iter_mut().enumerate() {
            let real = self.key_valid.is_none_or(|v| v[j0 + c]);
            *b = if real { 0.0 } else { f32::NEG_INFINITY };
        }
    }
}

/// `dst[m, n] (row stride dst_rs) = alpha·dst + beta · lhs[m, k] · rhs[k, n]`, strides as
/// (column, row) pairs like `gemm::gemm`; one thread (the callers are already parallel).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs.0,
        lhs.1,
        lhs.2,
        rhs.0,
        rhs.1,
        rhs.2,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// A raw output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes only the rows of its own (batch, head, query block), so no two
// threads touch the same element; the buffer outlives the parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// A method, not a field access, so closures capture the `Sync` wrapper, not the pointer.
    fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer the pointer came from.
        unsafe { self.0.add(i) }
    }
}

/// Per-thread scratch of the forward.
struct FwdScratch {
    scores: Vec<f32>, // [BQ, BK]
    bias: Vec<f32>,   // [BK]
    acc: Vec<f32>,    // [BQ, d]
    max: Vec<f32>,    // [BQ]
    sum: Vec<f32>,    // [BQ]
}

/// Forward: returns the output laid out `[b, s, h, d]` (the caller views it as `[b, h, s, d]`)
/// and the log-sum-exp of every query row `[b, h, s]` (`+inf` for a row that sees no key:
/// its output is 0, as burn's attention gives for a fully masked row).
pub fn forward(q: View, k: View, v: View, mask: &AttnMask, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let dims = Dims::of(&q, &k);
    let Dims { b, h, s, d, .. } = dims;
    let mut out = vec![0f32; b * s * h * d];
    let mut lse = vec![f32::INFINITY; b * h * s];
    let (out_ptr, lse_ptr) = (Out(out.as_mut_ptr()), Out(lse.as_mut_ptr()));
    let nqb = s.div_ceil(BQ);
    (0..b * h * nqb).into_par_iter().for_each_init(
        || FwdScratch {
            scores: vec![0.0; BQ * BK],
            bias: vec![0.0; BK],
            acc: vec![0.0; BQ * d],
            max: vec![0.0; BQ],
            sum: vec![0.0; BQ],
        },
        |scratch, task| {
            let (bh, qb) = (task / nqb, task % nqb);
            let (bi, hq) = (bh / h, bh % h);
            let i0 = qb * BQ;
            let m = BQ.min(s - i0);
            forward_block(&q, &k, &v, mask, scale, dims, (bi, hq, i0, m), scratch);
            for r in 0..m {
                let i = i0 + r;
                // SAFETY: rows (bi, i, hq) of `out` and (bi, hq, i) of `lse` belong to this task
                // alone (see `Out`), and lie inside the buffers allocated above.
                unsafe {
                    let dst = out_ptr.at(((bi * s + i) * h + hq) * d);
                    std::ptr::copy_nonoverlapping(scratch.acc[r * d..].as_ptr(), dst, d);
                    *lse_ptr.at(bh * s + i) = scratch.max[r];
                }
            }
        },
    );
    (out, lse)
}

/// One query block `i0..i0+m` of head `hq` in batch row `bi`: `scratch.acc` gets the output rows,
/// `scratch.max` their log-sum-exp.
#[allow(clippy::too_many_arguments)]
fn forward_block(
    q: &View,
    k: &View,
    v: &View,
    mask: &AttnMask,
    scale: f32,
    dims: Dims,
    (bi, hq, i0, m): (usize, usize, usize, usize),
    scratch: &mut FwdScratch,
) {
    let Dims { t, d, .. } = dims;
    let g = dims.kv_head(hq);
    let vis = Visibility::new(mask, bi, t);
    let FwdScratch {
        scores,
        bias,
        acc,
        max,
        sum,
    } = scratch;
    acc[..m * d].fill(0.0);
    max[..m].fill(f32::NEG_INFINITY);
    sum[..m].fill(0.0);
    // Keys past the last row's causal limit are hidden from the whole block: stop there.
    let end = vis.limit(i0 + m - 1);
    for j0 in (0..end).step_by(BK) {
        let n = BK.min(end - j0);
        if !vis.any_valid(j0, j0 + n) {
            continue;
        }
        // S[m, n] = Q[i0.., :] · K[j0.., :]ᵀ
        // SAFETY: row pointers address `m`/`n` rows of `d` elements inside the views; the
        // destination is the [BQ, BK] scratch.
        unsafe {
            matmul(
                [m, n, d],
                scores.as_mut_ptr(),
                BK as isize,
                false,
                (q.row(bi, hq, i0), 1, q.row_stride()),
                (k.row(bi, g, j0), k.row_stride(), 1),
                1.0,
            );
        }
        let bias = &mut bias[..n];
        vis.bias(j0, bias);
        for r in 0..m {
            let row = &mut scores[r * BK..r * BK + n];
            let seen = vis.limit(i0 + r).saturating_sub(j0).min(n);
            let block_max = rows::scale_mask_max(row, scale, bias, seen);
            if block_max == f32::NEG_INFINITY {
                // Nothing visible in this block: P = 0, the running state is unchanged.
                row.fill(0.0);
                continue;
            }
            // Online softmax (FA2 Algorithm 1): rescale the running sum and output by
            // exp(m_old − m_new) and add this block's exp(S − m_new).
            let new_max = max[r].max(block_max);
            let block_sum = rows::exp_sum(row, new_max);
            if max[r] != new_max {
                let correction = (max[r] - new_max).exp();
                sum[r] *= correction;
                rows::scale(&mut acc[r * d..(r + 1) * d], correction);
            }
            sum[r] += block_sum;
            max[r] = new_max;
        }
        // O[m, d] += P[m, n] · V[j0.., :]
        // SAFETY: as above; `acc` is [BQ, d].
        unsafe {
            matmul(
                [m, d, n],
                acc.as_mut_ptr(),
                d as isize,
                true,
                (scores.as_ptr(), 1, BK as isize),
                (v.row(bi, g, j0), 1, v.row_stride()),
                1.0,
            );
        }
    }
    for r in 0..m {
        if sum[r] > 0.0 {
            rows::scale(&mut acc[r * d..(r + 1) * d], 1.0 / sum[r]);
            max[r] += sum[r].ln();
        } else {
            // A row that sees no key: output 0 (acc is still 0) and no gradient.
            max[r] = f32::INFINITY;
        }
    }
}
