//! Vectorised row math for the kernels, compiled three times (AVX-512, AVX2+FMA, baseline) and
//! chosen at run time, so one binary runs fast on both CPU kinds and never faults (no
//! `target-cpu=native`). The bodies are plain loops over 16-lane blocks that the compiler turns
//! into SIMD inside each `#[target_feature]` wrapper.

/// Lanes per block: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// `e^x` for f32 as Cephes' `expf` (range reduction by ln 2 in two parts, degree-6 polynomial,
/// exponent by bit shift): within 2 ulp of `f32::exp` on [−87.3, 88.3]; inputs are clamped
/// there, so `x` far below gives ~1e-38 instead of 0 (harmless in a softmax sum).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = row.chunks_exact(LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (m, &x) in lanes.iter_mut().zip(block) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = tail.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for m in lanes {
        max = max.max(m);
    }
    max
}

/// row ← exp(row − shift); returns the sum (16 partial sums, then added: also more accurate
/// than one running sum over 49k values).
#[inline(always)]
fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut blocks = row.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for (s, x) in lanes.iter_mut().zip(block.iter_mut()) {
            *x = exp(*x - shift);
            *s += *x;
        }
    }
    let mut sum = 0f32;
    for x in blocks.into_remainder() {
        *x = exp(*x - shift);
        sum += *x;
    }
    sum + lanes.iter().sum::<f32>()
}

#[inline(always)]
fn scale(row: &mut [f32], factor: f32) {
    for x in row {
        *x *= factor;
    }
}

/// Cross-entropy of one logits row against `target`: returns `−log softmax(row)[target]`; with
/// `grad`, leaves `softmax(row) − onehot(target)` (d loss / d logits) in `row`.
#[inline(always)]
fn softmax_xent_body(row: &mut [f32], target: usize, grad: bool) -> f32 {
    let max = row_max(row);
    let picked = row[target] - max;
    let sum = exp_shifted_sum(row, max);
    if grad {
        scale(row, 1.0 / sum);
        row[target] -= 1.0;
    }
    sum.ln() - picked
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_xent_avx512(row: &mut [f32], target: usize, grad: bool) -> f32 {
    softmax_xent_body(row, target, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_xent_avx2(row: &mut [f32], target: usize, grad: bool) -> f32 {
    softmax_xent_body(row, target, grad)
}

/// See `softmax_xent_body`; `target < row.len()`.
pub fn softmax_xent_row(row: &mut [f32], target: usize, grad: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { softmax_xent_avx512(row, target, grad) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { softmax_xent_avx2(row, target, grad) };
        }
    }
    softmax_xent_body(row, target, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_standard_library_over_the_softmax_range() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 20.0) / 200_000.0;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2.5 * f32::EPSILON, "relative error {worst}");
    }

    #[test]
    fn row_cross_entropy_and_its_gradient_match_a_plain_computation() {
        let row: Vec<f32> = (0..1001)
            .map(|i| ((i * 37) % 101) as f32 * 0.13 - 6.0)
            .collect();
        let target = 517;
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let want = sum.ln() - (row[target] - max) as f64;
        let mut got_row = row.clone();
        let got = softmax_xent_row(&mut got_row, target, true);
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        for (i, (&g, &x)) in got_row.iter().zip(&row).enumerate() {
            let p = ((x - max) as f64).exp() / sum - if i == target { 1.0 } else { 0.0 };
            assert!((g as f64 - p).abs() < 1e-6, "gradient {i}: {g} vs {p}");
        }
    }
}
