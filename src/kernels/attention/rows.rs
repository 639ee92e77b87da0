//! The element-wise row steps of the attention kernel (scale + mask + max, exp + sum, dS), with
//! an AVX2 + FMA path chosen at run time: the project's own code builds at opt-level 1, where
//! LLVM does not vectorise loops, and a scalar `expf` per score cost more than the products.
//!
//! `bias` rows hold 0 for a visible key and −∞ for padding; `seen` cuts a row at the causal limit.
//! exp follows Cephes' `expf` (range reduction by ln 2 in two parts, degree-6 polynomial,
//! ≈ 1 ulp) and returns exactly 0 below −87.3 (so −∞ gives 0, as `f32::exp`).

/// Scores of one row in place: `x·scale + bias` for `c < seen`, −∞ after; returns the row max.
pub fn scale_mask_max(row: &mut [f32], scale: f32, bias: &[f32], seen: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { x86::scale_mask_max(row, scale, bias, seen) };
    }
    let mut max = f32::NEG_INFINITY;
    for (c, x) in row.iter_mut().enumerate() {
        *x = if c < seen {
            *x * scale + bias[c]
        } else {
            f32::NEG_INFINITY
        };
        max = max.max(*x);
    }
    max
}

/// `x = exp(x − shift)` in place; returns the row sum.
pub fn exp_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as above.
        return unsafe { x86::exp_sum(row, shift) };
    }
    row.iter_mut()
        .map(|x| {
            *x = (*x - shift).exp();
            *x
        })
        .sum()
}

/// Probabilities of one row from its log-sum-exp: `exp(x·scale + bias − lse)` for `c < seen`,
/// 0 after; false when the row sees no key here.
pub fn probabilities(row: &mut [f32], scale: f32, bias: &[f32], seen: usize, lse: f32) -> bool {
    let max = scale_mask_max(row, scale, bias, seen);
    if max == f32::NEG_INFINITY || !lse.is_finite() {
        row.fill(0.0);
        return false;
    }
    exp_sum(row, lse);
    true
}

/// dS = P ∘ (dP − D) in place of `p`.
pub fn softmax_grad(p: &mut [f32], dp: &[f32], d: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as above.
        return unsafe { x86::softmax_grad(p, dp, d) };
    }
    p.iter_mut().zip(dp).for_each(|(x, y)| *x *= y - d);
}

/// `x *= a` in place.
pub fn scale(x: &mut [f32], a: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: as above.
        return unsafe { x86::scale(x, a) };
    }
    x.iter_mut().for_each(|x| *x *= a);
}

/// Whether the AVX2 + FMA path runs (std caches the CPUID answer).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const W: usize = 8;

    /// Cephes `expf` on 8 lanes; 0 below −87.3 (and for NaN).
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.336_55);
        let valid = _mm256_cmp_ps::<_CMP_GE_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(pow2)), valid)
    }

    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Runs `f` over `x` in lanes of 8; the tail goes through a padded copy (`pad` in the unused
    /// lanes), so every element takes the same arithmetic.
    #[target_feature(enable = "avx2,fma")]
    fn lanes(x: &mut [f32], pad: f32, mut f: impl FnMut(usize, __m256) -> __m256) {
        let full = x.len() / W * W;
        for c in (0..full).step_by(W) {
            // SAFETY: `c + 8 <= full <= x.len()`.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(c));
                _mm256_storeu_ps(x.as_mut_ptr().add(c), f(c, v));
            }
        }
        if full < x.len() {
            let mut tail = [pad; W];
            tail[..x.len() - full].copy_from_slice(&x[full..]);
            // SAFETY: `tail` holds 8 floats.
            unsafe {
                let v = f(full, _mm256_loadu_ps(tail.as_ptr()));
                _mm256_storeu_ps(tail.as_mut_ptr(), v);
            }
            let n = x.len() - full;
            x[full..].copy_from_slice(&tail[..n]);
        }
    }

    /// Lanes `c..c + 8` of `bias` (−∞ past its end).
    #[target_feature(enable = "avx2,fma")]
    fn bias8(bias: &[f32], c: usize) -> __m256 {
        if c + W <= bias.len() {
            // SAFETY: in bounds (checked).
            unsafe { _mm256_loadu_ps(bias.as_ptr().add(c)) }
        } else {
            let mut b = [f32::NEG_INFINITY; W];
            let n = bias.len().saturating_sub(c);
            b[..n].copy_from_slice(&bias[c..c + n]);
            // SAFETY: `b` holds 8 floats.
            unsafe { _mm256_loadu_ps(b.as_ptr()) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn scale_mask_max(row: &mut [f32], scale: f32, bias: &[f32], seen: usize) -> f32 {
        let (s, ninf) = (_mm256_set1_ps(scale), _mm256_set1_ps(f32::NEG_INFINITY));
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut max = ninf;
        lanes(row, f32::NEG_INFINITY, |c, v| {
            // Lanes at or after `seen` (causal limit) are hidden.
            let idx = _mm256_add_epi32(lane, _mm256_set1_epi32(c as i32));
            let hidden = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(seen as i32 - 1));
            let x = _mm256_fmadd_ps(v, s, bias8(bias, c));
            let x = _mm256_blendv_ps(x, ninf, _mm256_castsi256_ps(hidden));
            max = _mm256_max_ps(max, x);
            x
        });
        hmax(max)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn exp_sum(row: &mut [f32], shift: f32) -> f32 {
        let sh = _mm256_set1_ps(shift);
        let mut sum = _mm256_setzero_ps();
        lanes(row, f32::NEG_INFINITY, |_, v| {
            let e = exp8(_mm256_sub_ps(v, sh));
            sum = _mm256_add_ps(sum, e);
            e
        });
        hsum(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn softmax_grad(p: &mut [f32], dp: &[f32], d: f32) {
        let dv = _mm256_set1_ps(d);
        lanes(p, 0.0, |c, v| {
            let y = bias8(dp, c);
            // Past the end of `dp` the lanes of `p` are padding 0: 0 · (−∞ − d) would be NaN.
            let y = _mm256_max_ps(y, _mm256_set1_ps(f32::MIN));
            _mm256_mul_ps(v, _mm256_sub_ps(y, dv))
        });
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn scale(x: &mut [f32], a: f32) {
        let av = _mm256_set1_ps(a);
        lanes(x, 0.0, |_, v| _mm256_mul_ps(v, av));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_exp_matches_std_exp_and_gives_zero_for_hidden_keys() {
        // 67 lanes: full AVX2 lanes and a tail; −∞ (hidden) and large negative scores.
        let mut row: Vec<f32> = (0..67).map(|i| -0.37 * i as f32).collect();
        row[3] = f32::NEG_INFINITY;
        row[66] = -100.0;
        let expected: Vec<f32> = row.iter().map(|x| (x - 0.5).exp()).collect();
        let sum = exp_sum(&mut row, 0.5);
        // Below −87.3 the result is flushed to 0 (std gives subnormals there).
        for (c, (got, want)) in row.iter().zip(&expected).enumerate().take(66) {
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "lane {c}: {got} vs {want}"
            );
        }
        assert_eq!((row[3], row[66]), (0.0, 0.0));
        let want_sum: f32 = expected.iter().sum();
        assert!((sum - want_sum).abs() <= 1e-6 * want_sum);
    }

    #[test]
    fn scores_past_the_causal_limit_or_on_padding_are_hidden() {
        let mut row = vec![1.0f32; 11];
        let mut bias = vec![0.0f32; 11];
        bias[2] = f32::NEG_INFINITY;
        let max = scale_mask_max(&mut row, 0.5, &bias, 9);
        assert_eq!(max, 0.5);
        for (c, x) in row.iter().enumerate() {
            let hidden = c == 2 || c >= 9;
            assert_eq!(*x, if hidden { f32::NEG_INFINITY } else { 0.5 }, "key {c}");
        }
        let mut p = vec![2.0f32; 11];
        softmax_grad(&mut p, &[1.5; 11], 0.5);
        assert_eq!(p, vec![2.0; 11]);
    }
}
