//! The backward host kernel of the fused attention (FlashAttention-2's Algorithm 2): P
//! recomputed from the saved log-sum-exp, D = rowsum(dO ∘ O), dq/dk/dv through `gemm`, rayon over
//! (batch, head). See the parent module for the algorithm and its sources.

use rayon::prelude::*;

use super::flash::{matmul, Dims, View, Visibility, BK, BQ};
use super::rows;
use super::AttnMask;
/// Which input gradients the backward computes (only those of tracked inputs).
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub q: bool,
    pub k: bool,
    pub v: bool,
}

/// The backward's inputs: the forward's inputs, output `o` (`[b, h, s, d]` view), its saved LSE
/// `[b, h, s]` and the incoming gradient `d_o` (`[b, h, s, d]` view).
pub struct Saved<'a> {
    pub q: View<'a>,
    pub k: View<'a>,
    pub v: View<'a>,
    pub o: View<'a>,
    pub lse: &'a [f32],
    pub d_o: View<'a>,
}

/// Gradients: dq `[b, h, s, d]`, dk and dv `[b, kvh, t, d]` (summed over each group's query
/// heads); empty where not wanted.
pub struct Grads {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Per-thread scratch of the backward.
struct BwdScratch {
    p: Vec<f32>,    // [BQ, BK]: P, then dS
    bias: Vec<f32>, // [BK]
    dp: Vec<f32>,   // [BQ, BK]
    rowd: Vec<f32>, // [s]: D = rowsum(dO ∘ O)
}

/// Splits `buf` into `n` chunks of `len`, or `n` absent chunks when the gradient is not wanted.
fn chunks(buf: &mut [f32], n: usize, len: usize) -> Vec<Option<&mut [f32]>> {
    if buf.is_empty() {
        (0..n).map(|_| None).collect()
    } else {
        buf.chunks_mut(len).map(Some).collect()
    }
}

/// Backward (FA2 Algorithm 2), one task per (batch row, query head): key blocks outer, query
/// blocks inner; the task owns its head's dq rows and accumulates its own dk/dv partial, then the
/// partials of each group's query heads are summed.
pub fn backward(saved: &Saved, mask: &AttnMask, scale: f32, wanted: Wanted) -> Grads {
    let dims = Dims::of(&saved.q, &saved.k);
    let Dims { b, h, kvh, s, t, d } = dims;
    let alloc = |want: bool, len: usize| if want { vec![0f32; len] } else { Vec::new() };
    let mut dq = alloc(wanted.q, b * h * s * d);
    // Per query head: [b, h, t, d], reduced over the groups below.
    let mut dk_heads = alloc(wanted.k, b * h * t * d);
    let mut dv_heads = alloc(wanted.v, b * h * t * d);
    let tasks: Vec<_> = chunks(&mut dq, b * h, s * d)
        .into_iter()
        .zip(chunks(&mut dk_heads, b * h, t * d))
        .zip(chunks(&mut dv_heads, b * h, t * d))
        .enumerate()
        .collect();
    tasks.into_par_iter().for_each_init(
        || BwdScratch {
            p: vec![0.0; BQ * BK],
            bias: vec![0.0; BK],
            dp: vec![0.0; BQ * BK],
            rowd: vec![0.0; s],
        },
        |scratch, (bh, ((dq, dk), dv))| {
            backward_head(saved, mask, scale, dims, bh, [dq, dk, dv], scratch);
        },
    );
    let groups = h / kvh;
    let reduce = |heads: Vec<f32>| -> Vec<f32> {
        if heads.is_empty() || groups == 1 {
            return heads;
        }
        let mut out = vec![0f32; b * kvh * t * d];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bg, dst)| {
            let (bi, g) = (bg / kvh, bg % kvh);
            for hq in g * groups..(g + 1) * groups {
                let src = &heads[(bi * h + hq) * t * d..][..t * d];
                dst.iter_mut().zip(src).for_each(|(a, x)| *a += x);
            }
        });
        out
    };
    Grads {
        q: dq,
        k: reduce(dk_heads),
        v: reduce(dv_heads),
    }
}

/// The backward of one (batch row `bh / h`, query head `bh % h`).
#[allow(clippy::too_many_arguments)]
fn backward_head(
    saved: &Saved,
    mask: &AttnMask,
    scale: f32,
    dims: Dims,
    bh: usize,
    [dq, dk, dv]: [Option<&mut [f32]>; 3],
    scratch: &mut BwdScratch,
) {
    let Dims { h, s, t, d, .. } = dims;
    let (bi, hq) = (bh / h, bh % h);
    let g = dims.kv_head(hq);
    let Saved {
        q,
        k,
        v,
        o,
        lse,
        d_o,
    } = saved;
    let lse = &lse[bh * s..(bh + 1) * s];
    let vis = Visibility::new(mask, bi, t);
    let BwdScratch { p, bias, dp, rowd } = scratch;
    let need_ds = dq.is_some() || dk.is_some();
    // D_i = rowsum(dO_i ∘ O_i) = Σ_j P_ij dP_ij (FA2 eq. for the softmax backward).
    for (i, di) in rowd.iter_mut().enumerate() {
        let (a, x) = (d_o.row_slice(bi, hq, i), o.row_slice(bi, hq, i));
        *di = a.iter().zip(x).map(|(a, x)| a * x).sum();
    }
    let (dq, dk, dv) = (
        dq.map(|x| x.as_mut_ptr()),
        dk.map(|x| x.as_mut_ptr()),
        dv.map(|x| x.as_mut_ptr()),
    );
    for j0 in (0..t).step_by(BK) {
        let n = BK.min(t - j0);
        if !vis.any_valid(j0, j0 + n) {
            continue;
        }
        let bias = &mut bias[..n];
        vis.bias(j0, bias);
        // Causal: query i sees key j0 only when j0 ≤ i + offset.
        let first = vis.causal_offset.map_or(0, |off| j0.saturating_sub(off));
        for i0 in (first / BQ * BQ..s).step_by(BQ) {
            let m = BQ.min(s - i0);
            // SAFETY (all products below): row pointers address `m`/`n` rows of `d` elements
            // inside the views; destinations are the [BQ, BK] scratch tiles or this task's own
            // gradient chunks (dq: [s, d], dk/dv: [t, d]).
            unsafe {
                // S = Q_i K_jᵀ
                matmul(
                    [m, n, d],
                    p.as_mut_ptr(),
                    BK as isize,
                    false,
                    (q.row(bi, hq, i0), 1, q.row_stride()),
                    (k.row(bi, g, j0), k.row_stride(), 1),
                    1.0,
                );
            }
            // P = exp(scale·S − LSE), 0 where hidden.
            let mut any = false;
            for r in 0..m {
                let i = i0 + r;
                let row = &mut p[r * BK..r * BK + n];
                let seen = vis.limit(i).saturating_sub(j0).min(n);
                any |= rows::probabilities(row, scale, bias, seen, lse[i]);
            }
            if !any {
                continue;
            }
            unsafe {
                if let Some(dv) = dv {
                    // dV_j += P_ijᵀ dO_i
                    matmul(
                        [n, d, m],
                        dv.add(j0 * d),
                        d as isize,
                        true,
                        (p.as_ptr(), BK as isize, 1),
                        (d_o.row(bi, hq, i0), 1, d_o.row_stride()),
                        1.0,
                    );
                }
                if !need_ds {
                    continue;
                }
                // dP = dO_i V_jᵀ
                matmul(
                    [m, n, d],
                    dp.as_mut_ptr(),
                    BK as isize,
                    false,
                    (d_o.row(bi, hq, i0), 1, d_o.row_stride()),
                    (v.row(bi, g, j0), v.row_stride(), 1),
                    1.0,
                );
            }
            // dS = P ∘ (dP − D)
            for r in 0..m {
                let di = rowd[i0 + r];
                rows::softmax_grad(&mut p[r * BK..r * BK + n], &dp[r * BK..r * BK + n], di);
            }
            unsafe {
                if let Some(dq) = dq {
                    // dQ_i += scale · dS K_j
                    matmul(
                        [m, d, n],
                        dq.add(i0 * d),
                        d as isize,
                        true,
                        (p.as_ptr(), 1, BK as isize),
                        (k.row(bi, g, j0), 1, k.row_stride()),
                        scale,
                    );
                }
                if let Some(dk) = dk {
                    // dK_j += scale · dSᵀ Q_i
                    matmul(
                        [n, d, m],
                        dk.add(j0 * d),
                        d as isize,
                        true,
                        (p.as_ptr(), BK as isize, 1),
                        (q.row(bi, hq, i0), 1, q.row_stride()),
                        scale,
                    );
                }
            }
        }
    }
}
