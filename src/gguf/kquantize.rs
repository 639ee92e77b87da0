//! The quantizers `--type q4_k_m` needs: Q4_K and Q6_K (256-value super-blocks), ported from
//! llama.cpp's reference `quantize_row_q4_K_ref` / `quantize_row_q6_K_ref` and their helpers
//! `make_qkx2_quants`, `make_qx_quants` and `nearest_int` (ggml/src/ggml-quants.c), which is what
//! `llama-quantize` runs without an importance matrix; and Q5_0, the fallback llama.cpp uses for a
//! Q4_K tensor whose rows are not a multiple of 256 (`tensor_type_fallback` in
//! src/llama-quant.cpp), ported from gguf-py 0.19's `Q5_0.quantize_blocks` (bit-exact with it).
//!
//! Q5_K (`quantize_row_q5_K_ref`: Q4_K's 6-bit scales and mins with 5-bit quants, searched with
//! `make_qkx2_quants(nmax 31, rmin -0.5, rdelta 0.1, nstep 15)`) is ported too: llama.cpp's mixes
//! use it (Q5_K_M, Q3_K_L, ...), though its Q4_K_M no longer does (see `plan::choose_type`).
//!
//! Each C expression is evaluated in the same order, one rounded f32 operation at a time (Rust
//! never contracts into a fused multiply-add). The block layouts are those
//! [`super::kquants`] and [`super::dequant`] decode.

use half::f16;

use super::kquants::{Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, QK_K};

/// ggml-quants.c `GROUP_MAX_EPS`.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml-quants.c `nearest_int`: round to nearest, ties to even, through the float's mantissa
/// (valid for |x| <= 4194303, as its assert says).
fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12582912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

fn f16_bits(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// The trial-scale options `make_qkx2_quants` is called with: `rmin, rdelta, nstep` (squared
/// error, `use_mad = false`, in both callers).
#[derive(Clone, Copy)]
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
}

/// `quantize_row_q4_K_ref`: `make_qkx2_quants(32, 15, ..., -1.f, 0.1f, 20, false)`.
const Q4_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
};

/// `quantize_row_q5_K_ref`: `make_qkx2_quants(32, 31, ..., -0.5f, 0.1f, 15, false)`.
const Q5_K_SEARCH: Qkx2 = Qkx2 {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
};

/// ggml-quants.c `make_qkx2_quants`: the (scale, min) of `y = scale * L - min` minimizing the
/// weighted squared error over `nstep + 1` trial scales. Returns (scale, -min) and fills `l`.
fn make_qkx2_quants(o: Qkx2, x: &[f32], weights: &[f32], l: &mut [u8]) -> (f32, f32) {
    let (nmax, n) = (o.nmax, x.len());
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=o.nstep {
        // C: `rmin + rdelta*is + nmax`, left to right, the ints widened to float.
        iscale = (o.rmin + o.rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let (w, lf) = (weights[i], q as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The part Q4_K and Q5_K share (`quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` up to the
/// packing of the quants): per 32-value sub-block a (scale, min) from `make_qkx2_quants`, both
/// quantized to 6 bits against the f16 super-block `d` / `dmin`, then every value re-quantized
/// to `0..=nmax` against the rounded scales. Returns `d`, `dmin` (f16 bytes), the 12 packed
/// scale bytes and the 256 quants.
fn k_scales_mins(o: Qkx2, x: &[f32]) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let (scale, min) = make_qkx2_quants(o, xs, &weights, &mut l[32 * j..32 * j + 32]);
        (scales[j], mins[j]) = (scale, min);
        max_scale = max_scale.max_c(scale);
        max_min = max_min.max_c(min);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // C: `uint8_t ls = nearest_int(...)`, then MIN(63, ls).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let (d_bits, dmin_bits) = (f16_bits(max_scale / 63.0), f16_bits(max_min / 63.0));
    let (d16, dmin16) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let d = d16 * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin16 * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, o.nmax) as u8;
        }
    }
    (d_bits, dmin_bits, packed, l)
}

/// Q4_K blocks `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]` (`quantize_row_q4_K_ref`).
/// `values.len()` must be a multiple of 256.
pub fn quantize_q4_k(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK_K * Q4_K_BYTES);
    for x in values.chunks_exact(QK_K) {
        let (d, dmin, packed, l) = k_scales_mins(Q4_K_SEARCH, x);
        out.extend(d);
        out.extend(dmin);
        out.extend(packed);
        for j in (0..QK_K).step_by(64) {
            out.extend((0..32).map(|i| l[j + i] | (l[j + i + 32] << 4)));
        }
    }
    out
}

/// Q5_K blocks `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`
/// (`quantize_row_q5_K_ref`): Q4_K's scales with 5-bit quants. In each 64-value chunk `c` the
/// low nibbles pack as Q4_K (value `i` low, `i + 32` high), and their fifth bits set bits `2c`
/// and `2c + 1` of `qh[i]`. `values.len()` must be a multiple of 256.
pub fn quantize_q5_k(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK_K * Q5_K_BYTES);
    for x in values.chunks_exact(QK_K) {
        let (d, dmin, packed, l) = k_scales_mins(Q5_K_SEARCH, x);
        let (mut qh, mut ql) = ([0u8; QK_K / 8], [0u8; QK_K / 2]);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let (mut l1, mut l2) = (l[n + j], l[n + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
            (m1, m2) = (m1 << 2, m2 << 2);
        }
        out.extend(d);
        out.extend(dmin);
        out.extend(packed);
        out.extend(qh);
        out.extend(ql);
    }
    out
}

/// `a > b ? a : b` written as the C loops do (`if (scale > max_scale) max_scale = scale`).
trait MaxC {
    fn max_c(self, other: f32) -> f32;
}
impl MaxC for f32 {
    fn max_c(self, other: f32) -> f32 {
        if other > self {
            other
        } else {
            self
        }
    }
}

/// ggml-quants.c `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// ggml-quants.c `make_qx_quants` with `rmse_type = 1` and no importance weights (as
/// `quantize_row_q6_K_ref` calls it): a symmetric scale tried at 19 values, weights `x²`.
/// Fills `l` with `q + nmax` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l: &mut [i8]| {
        for (li, &v) in l.iter_mut().zip(x) {
            *li = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as i8;
        }
    };
    let iscale = -nmax_f / max;
    fill(iscale, l);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&i| i != 0) {
        let iscale = -(nmax_f + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K blocks `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`
/// (`quantize_row_q6_K_ref`). `values.len()` must be a multiple of 256.
pub fn quantize_q6_k(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK_K * Q6_K_BYTES);
    for x in values.chunks_exact(QK_K) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let scale =
                make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            out.extend([0u8; Q6_K_BYTES]);
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d16 = f16_round(1.0 / iscale);
        let sc: [i8; 16] =
            std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
        for j in 0..16 {
            let d = d16 * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 0..16 {
                l[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for (half, j) in (0..QK_K).step_by(128).enumerate() {
            let u = |k: usize| l[k] as u8;
            for i in 0..32 {
                let (a, b, c, e) = (u(j + i), u(j + i + 32), u(j + i + 64), u(j + i + 96));
                ql[64 * half + i] = (a & 0x0F) | ((c & 0x0F) << 4);
                ql[64 * half + i + 32] = (b & 0x0F) | ((e & 0x0F) << 4);
                qh[32 * half + i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
        out.extend(ql);
        out.extend(qh);
        out.extend(sc.map(|s| s as u8));
        out.extend(f16_bits(1.0 / iscale));
    }
    out
}

/// Q5_0 blocks `d: f16, qh: [u8; 4], qs: [u8; 16]` (gguf-py `Q5_0.quantize_blocks`):
/// `d = x_max / -16`, `q = min(31, trunc(x / d + 16.5))`; the low nibbles pack as Q4_0, the fifth
/// bits of the 32 values form the little-endian `qh`. `values.len()` must be a multiple of 32.
pub fn quantize_q5_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 22);
    for block in values.chunks_exact(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in block {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        let d = max / -16.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let q: [u8; 32] = std::array::from_fn(|i| ((block[i] * id + 16.5).trunc() as u8).min(31));
        let qh = (0..32).fold(0u32, |h, i| h | (u32::from(q[i] >> 4) << i));
        out.extend(f16_bits(d));
        out.extend(qh.to_le_bytes());
        out.extend((0..16).map(|j| (q[j] & 0x0F) | (q[j + 16] << 4)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::{dequantize, GgmlType};

    fn wave(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn rms_error(ty: GgmlType, x: &[f32], bytes: &[u8]) -> f32 {
        let mut y = Vec::new();
        dequantize(ty, bytes, &mut y);
        assert_eq!(y.len(), x.len());
        let e: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        let s: f32 = x.iter().map(|a| a * a).sum();
        (e / s).sqrt()
    }

    #[test]
    fn nearest_int_rounds_ties_to_even_like_ggml() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6].map(nearest_int),
            [0, 2, 2, 0, -2, 2, -3]
        );
    }

    #[test]
    fn q4_k_round_trips_through_our_dequantizer_with_a_small_relative_error() {
        let x = wave(1024, 7);
        let b = quantize_q4_k(&x);
        assert_eq!(b.len(), 4 * Q4_K_BYTES);
        let e = rms_error(GgmlType::Q4K, &x, &b);
        assert!(e < 0.12, "relative rms error {e}");
    }

    #[test]
    fn q5_k_round_trips_through_our_dequantizer_with_half_the_error_of_q4_k() {
        let x = wave(1024, 7);
        let b = quantize_q5_k(&x);
        assert_eq!(b.len(), 4 * Q5_K_BYTES);
        let e5 = rms_error(GgmlType::Q5K, &x, &b);
        let e4 = rms_error(GgmlType::Q4K, &x, &quantize_q4_k(&x));
        assert!(e5 < 0.6 * e4, "relative rms error {e5} (Q4_K: {e4})");
    }

    #[test]
    fn q6_k_round_trips_through_our_dequantizer_with_a_small_relative_error() {
        let x = wave(1024, 9);
        let b = quantize_q6_k(&x);
        assert_eq!(b.len(), 4 * Q6_K_BYTES);
        let e = rms_error(GgmlType::Q6K, &x, &b);
        assert!(e < 0.03, "relative rms error {e}");
    }

    #[test]
    fn q5_0_round_trips_through_our_dequantizer_within_one_step() {
        let x = wave(64, 3);
        let b = quantize_q5_0(&x);
        let mut y = Vec::new();
        dequantize(GgmlType::Q5_0, &b, &mut y);
        for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
            let step = bx.iter().fold(0f32, |m, v| m.max(v.abs())) / 16.0;
            for (a, b) in bx.iter().zip(by) {
                assert!((a - b).abs() <= step * 1.01, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn zero_blocks_quantize_to_zero_scales() {
        let z = vec![0f32; 256];
        let mut y = Vec::new();
        dequantize(GgmlType::Q4K, &quantize_q4_k(&z), &mut y);
        dequantize(GgmlType::Q6K, &quantize_q6_k(&z), &mut y);
        dequantize(GgmlType::Q5K, &quantize_q5_k(&z), &mut y);
        assert_eq!(y.len(), 3 * 256);
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
