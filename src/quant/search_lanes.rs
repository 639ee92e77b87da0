//! The scale search of [`super::search`] for 16 blocks at once, one block per f32 lane, giving
//! the same bytes as the scalar reference (`search::quantize_block`), bit for bit.
//!
//! Why it is the same: every block still sums its 32 terms in order `j = 0..32` (the lanes are
//! blocks, never values of one block, so no reduction is reordered; Rust never contracts `a·b + c`
//! into an FMA), and the only changed operation is the rounding. The reference's
//! `round_ties_even(t).clamp(-8, 7)` is, on baseline x86-64 (SSE2, no `roundss`), a libm call per
//! value; here it is ggml's `nearest_int` trick (ggml-quants.c): for |t| < 2²², `t + 1.5·2²³`
//! lands where the f32 spacing is 1, so the hardware's round-half-to-even picks the integer, and
//! subtracting the constant again is exact. Clamping to [−8, 7] *before* rounding gives the same
//! level (rounding is monotone and keeps −8 and 7) and keeps |t| small. A level of −0.0 becomes
//! +0.0, which changes no sum (`x ± 0 = x`, and a sum that starts at +0 stays +0).
//!
//! What the trick cannot reproduce is NaN (0 · ∞ when a block's largest magnitude is so small that
//! `8.9 / max` overflows, or non-finite inputs), and the score `(Σ x·l)²` overflowing. A block with
//! a non-finite value, or whose largest magnitude is outside [`MIN_MAX`, `MAX_MAX`], therefore goes
//! to the scalar reference; in that range every intermediate is finite (|x·iscale| ≤ 8.9,
//! |Σ x·l| ≤ 256·max, its square < 7e34) and no NaN can arise. Weights live far inside it.
//!
//! Dispatched at run time (`is_x86_feature_detected!`, as `kernels::softmax`): AVX-512F, then
//! AVX2, then the same code for baseline SSE2; never `target-cpu=native`.

use half::f16;

use super::search::{quantize_block, BLOCK_BYTES, QK};

/// Blocks searched together: one AVX-512 register of f32 (two AVX2 ones).
const LANES: usize = 16;
/// A block whose largest |x| is below this goes to the scalar reference (`8.9 / max` must be
/// finite).
const MIN_MAX: f32 = 1e-30;
/// A block whose largest |x| is above this goes to the scalar reference (`(256·max)²` must be
/// finite).
const MAX_MAX: f32 = 1e15;
/// Candidate scales searched together (20 = 19 and a repeat, in groups of 4).
const GROUP: usize = 4;
/// 1.5 · 2²³: ggml's `nearest_int` constant.
const MAGIC: f32 = 12_582_912.0;

/// `round_ties_even(t).clamp(-8, 7)` for a non-NaN `t` (see the module docs).
#[inline(always)]
fn level(t: f32) -> f32 {
    let t = if t < -8.0 { -8.0 } else { t };
    let t = if t > 7.0 { 7.0 } else { t };
    (t + MAGIC) - MAGIC
}

simd_dispatch!(
    /// Q4_0 blocks of `src` (whole 32-value blocks) into `dst` (18 bytes each), as the scalar
    /// reference writes them.
    pub fn quantize_run(src: &[f32], dst: &mut [u8]) => run_body
);

#[inline(always)]
fn run_body(src: &[f32], dst: &mut [u8]) {
    for (xs, ds) in src
        .chunks(LANES * QK)
        .zip(dst.chunks_mut(LANES * BLOCK_BYTES))
    {
        // Transposed: t[j][b] is value j of block b; lanes past the last block stay zero (their
        // results are discarded).
        let mut t = [[0.0f32; LANES]; QK];
        for (b, x) in xs.chunks_exact(QK).enumerate() {
            for (j, &v) in x.iter().enumerate() {
                t[j][b] = v;
            }
        }
        let (max, scale) = search_lanes(&t);
        let (d, q) = levels_lanes(&t, &scale);
        for (b, (x, out)) in xs
            .chunks_exact(QK)
            .zip(ds.chunks_exact_mut(BLOCK_BYTES))
            .enumerate()
        {
            let x: &[f32; QK] = x.try_into().expect("32 values");
            let fast =
                (MIN_MAX..=MAX_MAX).contains(&max[b].abs()) && x.iter().all(|v| v.is_finite());
            if fast {
                // The reference's layout: element j in the low nibble of byte j, j + 16 high.
                out[..2].copy_from_slice(&d[b].to_le_bytes());
                for j in 0..QK / 2 {
                    out[2 + j] = q[j][b] | (q[j + QK / 2][b] << 4);
                }
            } else {
                quantize_block(x, out);
            }
        }
    }
}

/// Per lane: the signed value of largest magnitude (the first such) and the searched scale, as
/// `search::search_scale` computes them (meaningful for lanes in the fast range only).
#[inline(always)]
fn search_lanes(t: &[[f32; LANES]; QK]) -> ([f32; LANES], [f32; LANES]) {
    let mut max = [0.0f32; LANES];
    for row in t {
        for b in 0..LANES {
            if row[b].abs() > max[b].abs() {
                max[b] = row[b];
            }
        }
    }
    // The 19 candidates `-(8.0 + 0.1 * k as f32)`, k = −9…9, operation for operation as the
    // reference, searched `GROUP` at a time so that `GROUP` independent sums hide the add
    // latency; a 20th, k = 9 again, pads the last group (an equal score never replaces the best).
    let cands: [f32; 20] = std::array::from_fn(|i| -(8.0 + 0.1 * (i.min(18) as i32 - 9) as f32));
    let mut best_d = [0.0f32; LANES];
    let mut best_score = [f32::NEG_INFINITY; LANES];
    for group in cands.chunks_exact(GROUP) {
        let mut iscale = [[0.0f32; LANES]; GROUP];
        for (is, &c) in iscale.iter_mut().zip(group) {
            for b in 0..LANES {
                is[b] = c / max[b];
            }
        }
        let (mut sumlx, mut suml2) = ([[0.0f32; LANES]; GROUP], [[0.0f32; LANES]; GROUP]);
        for row in t {
            for g in 0..GROUP {
                for b in 0..LANES {
                    let l = level(row[b] * iscale[g][b]);
                    sumlx[g][b] += row[b] * l;
                    suml2[g][b] += l * l;
                }
            }
        }
        // In candidate order, as the reference compares them.
        for g in 0..GROUP {
            for b in 0..LANES {
                let (lx, l2) = (sumlx[g][b], suml2[g][b]);
                let (d, score) = (lx / l2, lx * lx / l2);
                if l2 > 0.0 && score > best_score[b] {
                    best_score[b] = score;
                    best_d[b] = d;
                }
            }
        }
    }
    (max, best_d)
}

/// Per lane, the reference block writer's f16 scale and stored levels `q = l + 8` of
/// `x / f16(scale)`, with the fast rounding (meaningful for lanes in the fast range only).
#[inline(always)]
fn levels_lanes(t: &[[f32; LANES]; QK], scale: &[f32; LANES]) -> ([f16; LANES], [[u8; LANES]; QK]) {
    let d: [f16; LANES] = std::array::from_fn(|b| f16::from_f32(scale[b]));
    // An f16 scale of ±0 gives `inv` 0 and one of ±∞ gives ±0, so every level is 0, as in the
    // reference.
    let inv: [f32; LANES] = std::array::from_fn(|b| {
        let d = d[b].to_f32();
        if d == 0.0 {
            0.0
        } else {
            1.0 / d
        }
    });
    let mut q = [[0u8; LANES]; QK];
    for (qj, row) in q.iter_mut().zip(t) {
        for b in 0..LANES {
            qj[b] = (level(row[b] * inv[b]) + 8.0) as u8;
        }
    }
    (d, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::search::quantize_q4_0_search_reference;
    use crate::quant::test_values::{hard_blocks, Rng};

    /// Every variant this CPU can run, each against the scalar reference.
    fn assert_all_variants_match(values: &[f32]) {
        let want = quantize_q4_0_search_reference(values);
        let mut got = vec![0u8; want.len()];
        run_body(values, &mut got);
        assert!(got == want, "portable lanes differ from the reference");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                got.fill(0);
                // SAFETY: the CPU has AVX2.
                unsafe { run_avx2(values, &mut got) };
                assert!(got == want, "AVX2 lanes differ from the reference");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                got.fill(0);
                // SAFETY: the CPU has AVX-512F.
                unsafe { run_avx512(values, &mut got) };
                assert!(got == want, "AVX-512 lanes differ from the reference");
            }
        }
        assert!(super::super::search::quantize_q4_0_search(values) == want);
    }

    #[test]
    fn lanes_give_the_reference_bytes_on_zeros_ties_and_extremes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // 20 000 blocks, not a multiple of 16 or of a task, so the tails are exercised too.
        let values = hard_blocks(&mut rng, 20_003, &[MIN_MAX, MAX_MAX]);
        assert_all_variants_match(&values);
    }

    #[test]
    fn lanes_give_the_reference_bytes_on_a_1536_by_576_weight() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let values: Vec<f32> = (0..1536 * 576)
            .map(|i| rng.gauss() * if i % 97 == 0 { 0.12 } else { 0.02 })
            .collect();
        assert_all_variants_match(&values);
    }

    #[test]
    fn the_fast_rounding_is_round_half_to_even_clamped() {
        let mut t = -20.0f32;
        while t <= 20.0 {
            assert_eq!(level(t), t.round_ties_even().clamp(-8.0, 7.0), "{t}");
            t += 0.125;
        }
        for t in [
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            4.5,
            -7.5,
            0.5,
            -0.5,
        ] {
            assert_eq!(level(t), t.round_ties_even().clamp(-8.0, 7.0), "{t}");
        }
    }
}
