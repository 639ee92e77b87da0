//! The k-quant super-blocks (256 values each): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K, decoded
//! exactly as gguf-py 0.19's `quants.py` `dequantize_blocks` computes them (whose numpy broadcasts
//! are spelled out here as index arithmetic; the byte layouts are llama.cpp's `block_q*_K` in
//! ggml-common.h). As there, the f16 super-block scales are widened to f32, multiplied by the
//! sub-block scale first, then by the quant (and the minimum subtracted), each step one rounded
//! f32 operation: Rust never fuses them into a multiply-add, so the results are bit-identical.
//! Each function takes exactly one block (`GgmlType::block().1` bytes, checked by the caller).

use half::f16;

/// ggml's `QK_K`: values per super-block.
pub const QK_K: usize = 256;

/// Bytes per block, as `GGML_QUANT_SIZES` in gguf-py's constants.py.
pub const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 2 + 2;
pub const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
pub const Q4_K_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
pub const Q5_K_BYTES: usize = 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
pub const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
pub const Q8_K_BYTES: usize = 4 + QK_K + 2 * (QK_K / 16);

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q2_K: `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`. Sub-block k (16 values) has scale
/// `d * (scales[k] & 15)` and minimum `dmin * (scales[k] >> 4)`. Value e is 2 bits of
/// `qs[32 * (e / 128) + e % 32]`, at shift `2 * (e % 128 / 32)`; `y = scale * q - min`.
pub fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    out.extend((0..QK_K).map(|e| {
        let k = e / 16;
        let dl = d * (scales[k] & 0x0F) as f32;
        let ml = dmin * (scales[k] >> 4) as f32;
        let q = (qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
        dl * q as f32 - ml
    }));
}

/// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`. The 16 six-bit scales are
/// the low nibble of `scales[k % 8] >> 4 * (k / 8)` and two high bits from
/// `scales[8 + k % 4] >> 2 * (k / 4)`, minus 32. Value e: 2 low bits as Q2_K, and 4 is subtracted
/// when bit `e / 32` of `hmask[e % 32]` is clear; `y = d * scale * q`.
pub fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let dl: [f32; 16] = std::array::from_fn(|k| {
        let low = (scales[k % 8] >> (4 * (k / 8))) & 0x0F;
        let high = (scales[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        d * ((low | (high << 4)) as i8 - 32) as f32
    });
    out.extend((0..QK_K).map(|e| {
        let low = (qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32))) & 3;
        let high_clear = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
        let q = low as i8 - (high_clear << 2) as i8;
        dl[e / 16] * q as f32
    }));
}

/// The eight 6-bit (scale, min) pairs of Q4_K and Q5_K packed in 12 bytes (gguf-py
/// `Q4_K.get_scale_min`, llama.cpp `get_scale_min_k4`): pairs 0..4 are the low 6 bits of bytes
/// 0..4 (scales) and 4..8 (mins); pairs 4..8 take a nibble of bytes 8..12 and the top two bits of
/// the first eight bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let sc = std::array::from_fn(|j| {
        if j < 4 {
            s[j] & 0x3F
        } else {
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30)
        }
    });
    let min = std::array::from_fn(|j| {
        if j < 4 {
            s[j + 4] & 0x3F
        } else {
            (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30)
        }
    });
    (sc, min)
}

/// Sub-block scales and minimums of Q4_K/Q5_K: `d * sc[j]` and `dmin * min[j]`.
fn k4_scales(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, min) = scale_min_k4(&b[4..16]);
    (sc.map(|s| d * s as f32), min.map(|m| dmin * m as f32))
}

/// The low nibble of value e in Q4_K/Q5_K: sub-block j = e / 32 reads `qs[32 * (j / 2) + e % 32]`,
/// its low nibble for even j, its high nibble for odd j.
fn k4_nibble(qs: &[u8], e: usize) -> u8 {
    let j = e / 32;
    (qs[32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 0x0F
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; eight sub-blocks of 32 values,
/// `y = d * sc[j] * q - dmin * min[j]`.
pub fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (dl, ml) = k4_scales(b);
    let qs = &b[16..16 + QK_K / 2];
    out.extend((0..QK_K).map(|e| dl[e / 32] * k4_nibble(qs, e) as f32 - ml[e / 32]));
}

/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`; as Q4_K with a fifth
/// bit, bit `e / 32` of `qh[e % 32]`.
pub fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (dl, ml) = k4_scales(b);
    let (qh, qs) = (&b[16..48], &b[48..48 + QK_K / 2]);
    out.extend((0..QK_K).map(|e| {
        let q = k4_nibble(qs, e) | (((qh[e % 32] >> (e / 32)) & 1) << 4);
        dl[e / 32] * q as f32 - ml[e / 32]
    }));
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`. Value e, in half h = e / 128:
/// the nibble of `ql[64 * h + e % 64]` (low for e % 128 < 64, else high) and 2 bits of
/// `qh[32 * h + e % 32]` at shift `2 * (e % 128 / 32)`, minus 32; `y = d * scales[e / 16] * q`.
pub fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    let dl: [f32; 16] = std::array::from_fn(|k| d * scales[k] as i8 as f32);
    out.extend((0..QK_K).map(|e| {
        let (h, r) = (e / 128, e % 128);
        let low = (ql[64 * h + e % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[32 * h + e % 32] >> (2 * (r / 32))) & 0x03;
        let q = (low | (high << 4)) as i8 - 32;
        dl[e / 16] * q as f32
    }));
}

/// Q8_K: `d: f32, qs: [i8; 256], bsums: [i16; 16]` (the sums only speed up llama.cpp's dot
/// products); `y = d * q`, llama.cpp `dequantize_row_q8_K` (gguf-py has no Q8_K dequantizer).
pub fn q8_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    out.extend(b[4..4 + QK_K].iter().map(|&q| d * q as i8 as f32));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_gguf_py_quant_sizes() {
        // GGML_QUANT_SIZES in gguf-py 0.19 constants.py.
        assert_eq!(
            [Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_K_BYTES],
            [84, 110, 144, 176, 210, 292]
        );
    }

    #[test]
    fn q4_k_scale_and_min_unpacking_takes_high_bits_from_the_first_eight_bytes() {
        // Bytes 0..4 = 0b11_000001 (scale 1, two high bits 3 for pair 4..8), 4..8 = 0b10_000010
        // (min 2, high bits 2), 8..12 = 0x5A (scale nibble 0xA, min nibble 0x5).
        let mut s = [0u8; 12];
        s[..4].fill(0b1100_0001);
        s[4..8].fill(0b1000_0010);
        s[8..].fill(0x5A);
        let (sc, min) = scale_min_k4(&s);
        assert_eq!(sc, [1, 1, 1, 1, 0x3A, 0x3A, 0x3A, 0x3A]);
        assert_eq!(min, [2, 2, 2, 2, 0x25, 0x25, 0x25, 0x25]);
    }

    #[test]
    fn q8_k_block_multiplies_each_int8_by_the_f32_scale() {
        let mut block = 0.5f32.to_le_bytes().to_vec();
        block.extend((0..QK_K).map(|i| (i as i32 - 128) as i8 as u8));
        block.extend([0u8; 32]);
        assert_eq!(block.len(), Q8_K_BYTES);
        let mut out = Vec::new();
        q8_k(&block, &mut out);
        let expected: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 128.0) * 0.5).collect();
        assert_eq!(out, expected);
    }
}
