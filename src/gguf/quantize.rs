//! ggml's legacy block quantizers, bit-exact with gguf-py 0.19's `quants.py` (`Q8_0` and `Q4_0`
//! `quantize_blocks`, themselves "bit-exact with the reference implementation in ggml-quants.c"):
//! every step is one rounded f32 operation in the same order (Rust never fuses a multiply-add), the
//! scale rounded to f16 only when stored. `values.len()` must be a whole number of 32-value blocks.

use half::f16;

/// ggml's `QK8_0` / `QK4_0`.
const QK: usize = 32;

/// Round half away from zero, as gguf-py's `np_roundf` (`floor(a) + floor(2·(a − floor(a)))`);
/// also the SIMD-lane quantizer's (`quant::q8_0`), inlined there.
#[inline(always)]
pub(crate) fn roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    if n < 0.0 {
        -b
    } else if n > 0.0 {
        b
    } else {
        0.0 * b
    }
}

/// Q8_0: per 32 values `d = max|x| / 127` (f32), `q = roundf(x · (1/d))` as i8, stored as
/// `d: f16, qs: [i8; 32]` (34 bytes).
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len() % QK == 0, "Q8_0 takes whole 32-value blocks");
    let mut out = Vec::with_capacity(values.len() / QK * (2 + QK));
    for block in values.chunks_exact(QK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| roundf(v * id) as i8 as u8));
    }
    out
}

/// Q4_0: per 32 values the signed value of largest magnitude `max` (the first such), `d = max / -8`,
/// `q = min(trunc(x · (1/d) + 8.5), 15)` as u8; element j in the low nibble of byte j, element
/// j + 16 in its high nibble; stored as `d: f16, qs: [u8; 16]` (18 bytes).
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len() % QK == 0, "Q4_0 takes whole 32-value blocks");
    let mut out = Vec::with_capacity(values.len() / QK * (2 + QK / 2));
    for block in values.chunks_exact(QK) {
        // numpy's argmax: the first index of the largest |x|.
        let mut max = 0.0f32;
        let mut amax = -1.0f32;
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        // numpy's float -> uint8 cast of a value in [0, 255] truncates; `.clip(0, 15)` after.
        let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend((0..QK / 2).map(|j| q(block[j]) | (q(block[j + QK / 2]) << 4)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::{dequantize, GgmlType};

    #[test]
    fn roundf_rounds_halves_away_from_zero() {
        assert_eq!(roundf(2.5), 3.0);
        assert_eq!(roundf(-2.5), -3.0);
        assert_eq!(roundf(1.49), 1.0);
    }

    #[test]
    fn a_q8_0_round_trip_is_within_half_a_step() {
        let values: Vec<f32> = (0..64).map(|i| ((i * 37) % 29) as f32 - 14.0).collect();
        let mut back = Vec::new();
        dequantize(GgmlType::Q8_0, &quantize_q8_0(&values), &mut back);
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= 14.0 / 127.0, "{a} vs {b}");
        }
    }

    #[test]
    fn an_all_zero_block_quantizes_to_zero_scale() {
        let bytes = quantize_q4_0(&[0.0; 32]);
        // d = 0 / -8 = -0.0, as numpy computes it.
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 0.0);
        assert!(bytes[2..].iter().all(|&b| b == 0x88));
    }
}
