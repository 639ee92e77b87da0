//! Q8_0 and Q4_0 quantization, bit-exact with gguf-py 0.19's `quants.quantize` (`Q8_0` and `Q4_0`
//! `quantize_blocks`), which reproduces llama.cpp's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`
//! (ggml-quants.c). Every step is one rounded f32 operation as numpy does it; the f16 scale is
//! rounded to nearest even. The blocks are the layouts [`super::dequant`] decodes.
//!
//! `values.len()` must be a multiple of 32 (ggml's `QK8_0`/`QK4_0`); the caller checks it (a
//! trailing partial block would be dropped).

use half::f16;

const QK: usize = 32;

/// Q8_0 blocks `d: f16, qs: [i8; 32]`: `d = max|x| / 127`, `q = round(x / d)` (half away from
/// zero, gguf-py `np_roundf`), with `1 / d` taken once as gguf-py does.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * (2 + QK));
    for block in values.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// Q4_0 blocks `d: f16, qs: [u8; 16]`: `d = x_max / -8`, where `x_max` is the value of largest
/// magnitude (the first one on ties, numpy `argmax`); `q = min(15, trunc(x / d + 8.5))`;
/// element j is the low nibble of `qs[j]`, element j + 16 its high nibble.
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK * (2 + QK / 2));
    for block in values.chunks_exact(QK) {
        let max = block
            .iter()
            .fold((0f32, 0f32), |(amax, max), &v| {
                if v.abs() > amax {
                    (v.abs(), v)
                } else {
                    (amax, max)
                }
            })
            .1;
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
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

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect()
    }

    fn roundtrip(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        dequantize(ty, bytes, &mut out);
        out
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        let x = ramp(64);
        let y = roundtrip(GgmlType::Q8_0, &quantize_q8_0(&x));
        for (block_x, block_y) in x.chunks(32).zip(y.chunks(32)) {
            let step = block_x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in block_x.iter().zip(block_y) {
                assert!((a - b).abs() <= step * 0.51 + 1e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q4_0_round_trips_within_one_step() {
        let x = ramp(64);
        let y = roundtrip(GgmlType::Q4_0, &quantize_q4_0(&x));
        for (block_x, block_y) in x.chunks(32).zip(y.chunks(32)) {
            let step = block_x.iter().fold(0f32, |m, v| m.max(v.abs())) / 8.0;
            for (a, b) in block_x.iter().zip(block_y) {
                assert!((a - b).abs() <= step * 1.01, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn an_all_zero_block_has_a_zero_scale() {
        assert_eq!(quantize_q8_0(&[0.0; 32]), vec![0u8; 34]);
        let q4 = quantize_q4_0(&[0.0; 32]);
        // 0 / -8 is -0.0, as in numpy: the f16 sign bit is set.
        assert_eq!(&q4[..2], &[0x00, 0x80]);
        assert!(q4[2..].iter().all(|&b| b == 0x88));
    }

    #[test]
    fn q4_0_takes_the_signed_value_of_largest_magnitude_as_minus_eight_steps() {
        let mut x = [0.0f32; 32];
        x[3] = -4.0;
        x[5] = 2.0;
        let b = quantize_q4_0(&x);
        assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), 0.5);
        // -4 / 0.5 + 8.5 = 0.5 -> 0; 2 / 0.5 + 8.5 = 12.5 -> 12; zeros -> 8.
        assert_eq!(b[2 + 3] & 0x0F, 0);
        assert_eq!(b[2 + 5] & 0x0F, 12);
        assert_eq!(b[2] & 0x0F, 8);
    }
}
