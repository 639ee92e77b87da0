//! The merge math, over plain f32 slices in PyTorch layout (`W: [out, in]`, row-major).
//!
//! Every fold takes `weight` (the tensor so far, already widened to f32) and a `strength` that
//! weights the change it makes: the result is `W + strength·(fold(W) − W)`, so `strength = 1`
//! is PEFT's `merge_and_unload` and `peft merge --scale 0.5` folds in half of each change.
//!
//! Sources: PEFT lora/layer.py `get_delta_weight` (`ΔW = s·B·A`), lora/dora.py (DoRA merge),
//! adalora/layer.py `get_delta_weight` (`ΔW = B·(A⊙E)·s/(ranknum+1e-5)`), ia3/layer.py `merge`.

use std::thread;

/// A LoRA-family update `ΔW = s·B·A`.
/// a: [r, in], b: [out, r], `s` includes the strength.
pub struct LowRank<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub r: usize,
    pub s: f32,
}

/// Rows handled per worker; below this, threads cost more than they save.
const MIN_ROWS_PER_THREAD: usize = 64;

/// Runs `f(first_row, rows)` over `weight` split into row blocks, on up to all cores.
fn par_rows(weight: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = if cols == 0 { 0 } else { weight.len() / cols };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.min(rows / MIN_ROWS_PER_THREAD).max(1);
    if workers == 1 {
        f(0, weight);
        return;
    }
    let per = rows.div_ceil(workers);
    thread::scope(|scope| {
        for (i, block) in weight.chunks_mut(per * cols).enumerate() {
            let f = &f;
            scope.spawn(move || f(i * per, block));
        }
    });
}

/// `row += s·Σ_k B[o,k]·A[k,:]` for one output row `o`.
/// row: [in], a: [r, in], b_row: [r].
fn add_low_rank_row(row: &mut [f32], lr: &LowRank, b_row: &[f32]) {
    let cols = row.len();
    for (k, &bk) in b_row.iter().enumerate() {
        let c = lr.s * bk;
        if c == 0.0 {
            continue;
        }
        let a_row = &lr.a[k * cols..(k + 1) * cols];
        for (w, &x) in row.iter_mut().zip(a_row) {
            *w += c * x;
        }
    }
}

/// LoRA / rsLoRA / AdaLoRA (after folding E into A): `W += s·B·A`.
/// weight: [out, in], a: [r, in], b: [out, r].
pub fn add_low_rank(weight: &mut [f32], cols: usize, lr: &LowRank) {
    par_rows(weight, cols, |first, block| {
        for (i, row) in block.chunks_exact_mut(cols).enumerate() {
            let o = first + i;
            add_low_rank_row(row, lr, &lr.b[o * lr.r..(o + 1) * lr.r]);
        }
    });
}

/// DoRA (PEFT lora/dora.py; paper arXiv 2402.09353 §4): `V = W + s·B·A`,
/// `W' = (m / ‖V‖_row)·V`, then weighted by `strength`: `W + strength·(W' − W)`.
/// weight: [out, in], magnitude: [out]. The low-rank scale `lr.s` must NOT include the strength.
pub fn dora(weight: &mut [f32], cols: usize, lr: &LowRank, magnitude: &[f32], strength: f32) {
    par_rows(weight, cols, |first, block| {
        let mut v = vec![0.0f32; cols];
        for (i, row) in block.chunks_exact_mut(cols).enumerate() {
            let o = first + i;
            v.copy_from_slice(row);
            add_low_rank_row(&mut v, lr, &lr.b[o * lr.r..(o + 1) * lr.r]);
            let norm = v
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt() as f32;
            let g = magnitude[o] / norm;
            for (w, x) in row.iter_mut().zip(&v) {
                *w += strength * (g * x - *w);
            }
        }
    });
}

/// AdaLoRA's SVD form folds `E` into `A`: `A' = A ⊙ E` (E: [r, 1] scales row k of A).
/// a: [r, in], e: [r] -> [r, in].
pub fn fold_singular_values(a: &[f32], e: &[f32], cols: usize) -> Vec<f32> {
    a.chunks_exact(cols)
        .zip(e)
        .flat_map(|(row, &ek)| row.iter().map(move |x| x * ek))
        .collect()
}

/// LoRA on an embedding (PEFT lora/layer.py `Embedding.get_delta_weight`):
/// `ΔW = (B_e·A_e)ᵀ·s`, with A_e: [r, num_embeddings], B_e: [dim, r], W: [num_embeddings, dim].
pub fn add_embedding_low_rank(weight: &mut [f32], dim: usize, lr: &LowRank) {
    par_rows(weight, dim, |first, block| {
        let num = lr.a.len() / lr.r.max(1);
        for (i, row) in block.chunks_exact_mut(dim).enumerate() {
            let t = first + i;
            for (d, w) in row.iter_mut().enumerate() {
                let dot: f32 = (0..lr.r)
                    .map(|k| lr.b[d * lr.r + k] * lr.a[k * num + t])
                    .sum();
                *w += lr.s * dot;
            }
        }
    });
}

/// IA3 (PEFT ia3/layer.py `merge`): a non-feed-forward module scales its output rows,
/// `W[o,:] *= l[o]` (l: [out, 1]); a feed-forward one scales its input columns,
/// `W[:,j] *= l[j]` (l: [1, in]). The factor is weighted: `1 + strength·(l − 1)`.
pub fn ia3(weight: &mut [f32], cols: usize, l: &[f32], feedforward: bool, strength: f32) {
    let factor = |x: f32| 1.0 + strength * (x - 1.0);
    for (o, row) in weight.chunks_exact_mut(cols).enumerate() {
        if feedforward {
            for (w, &x) in row.iter_mut().zip(l) {
                *w *= factor(x);
            }
        } else {
            let f = factor(l[o]);
            row.iter_mut().for_each(|w| *w *= f);
        }
    }
}

/// IA3 on a non-feed-forward module's bias: `b[o] *= l[o]` (weighted as in [`ia3`]).
pub fn ia3_bias(bias: &mut [f32], l: &[f32], strength: f32) {
    for (b, &x) in bias.iter_mut().zip(l) {
        *b *= 1.0 + strength * (x - 1.0);
    }
}

/// LoRA's scale `s`: `alpha/r`, or `alpha/√r` with rsLoRA (PEFT lora/layer.py `update_layer`).
pub fn lora_scale(alpha: f64, r: usize, rslora: bool) -> f32 {
    let r = r as f64;
    (if rslora { alpha / r.sqrt() } else { alpha / r }) as f32
}

/// AdaLoRA's scale `lora_alpha / (ranknum + 1e-5)`, where `ranknum` is the layer's initial rank
/// `init_r` and stays so after pruning (adalora/layer.py `update_layer`, model.py
/// `resize_modules_by_rank_pattern` copies the old `ranknum` back). `lora_alpha <= 0` means `r`.
pub fn adalora_scale(alpha: f64, init_r: usize) -> f32 {
    let scaling = if alpha > 0.0 {
        alpha as f32
    } else {
        init_r as f32
    };
    scaling / (init_r as f32 + 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive `W + s·B·A` for comparison. weight: [out, in].
    fn reference(
        w: &[f32],
        a: &[f32],
        b: &[f32],
        out: usize,
        inp: usize,
        r: usize,
        s: f32,
    ) -> Vec<f32> {
        let mut res = w.to_vec();
        for o in 0..out {
            for j in 0..inp {
                let d: f32 = (0..r).map(|k| b[o * r + k] * a[k * inp + j]).sum();
                res[o * inp + j] += s * d;
            }
        }
        res
    }

    fn ramp(n: usize, k: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * k).sin() * 0.5) + 0.01)
            .collect()
    }

    #[test]
    fn low_rank_update_matches_the_naive_product_with_nonzero_b_and_alpha_not_r() {
        let (out, inp, r) = (300, 7, 3);
        let (w, a, b) = (ramp(out * inp, 0.3), ramp(r * inp, 0.7), ramp(out * r, 1.1));
        let s = lora_scale(8.0, r, false);
        let mut got = w.clone();
        add_low_rank(&mut got, inp, &LowRank { a: &a, b: &b, r, s });
        let want = reference(&w, &a, &b, out, inp, r, s);
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-5));
        assert!(
            got.iter().zip(&w).any(|(x, y)| (x - y).abs() > 1e-3),
            "delta must not be zero"
        );
    }

    #[test]
    fn dora_rows_have_the_magnitude_as_norm() {
        let (out, inp, r) = (4, 5, 2);
        let (a, b) = (ramp(r * inp, 0.7), ramp(out * r, 1.1));
        let mut w = ramp(out * inp, 0.3);
        let m = [1.0, 2.0, 0.5, 3.0];
        dora(
            &mut w,
            inp,
            &LowRank {
                a: &a,
                b: &b,
                r,
                s: 2.0,
            },
            &m,
            1.0,
        );
        for (row, want) in w.chunks(inp).zip(m) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - want).abs() < 1e-5);
        }
    }

    #[test]
    fn ia3_scales_rows_or_columns() {
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        ia3(&mut w, 2, &[2.0, 3.0], false, 1.0);
        assert_eq!(w, [2.0, 4.0, 9.0, 12.0]);
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        ia3(&mut w, 2, &[2.0, 3.0], true, 0.5);
        assert_eq!(w, [1.5, 4.0, 4.5, 8.0]);
    }

    #[test]
    fn embedding_delta_is_the_transposed_product() {
        // A_e: [1, 2] (num_embeddings 2), B_e: [3, 1] (dim 3) -> ΔW[t, d] = B[d]·A[t].
        let mut w = vec![0.0; 6];
        add_embedding_low_rank(
            &mut w,
            3,
            &LowRank {
                a: &[1.0, 2.0],
                b: &[1.0, 10.0, 100.0],
                r: 1,
                s: 1.0,
            },
        );
        assert_eq!(w, [1.0, 10.0, 100.0, 2.0, 20.0, 200.0]);
    }

    #[test]
    fn rslora_divides_by_the_square_root_of_r() {
        assert_eq!(lora_scale(16.0, 4, true), 8.0);
        assert_eq!(lora_scale(16.0, 4, false), 4.0);
    }
}
