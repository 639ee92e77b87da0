//! NF4 (Dettmers et al. 2023, QLoRA, arXiv 2305.14314) exactly as bitsandbytes 0.50 computes it on
//! CPU (`backends/default/ops.py`, `quantize_4bit` / `_dequantize_4bit_compute`): the flattened
//! tensor in 64-value blocks, `absmax` per block in f32, each value scaled by `x · (1/absmax)`
//! (clamped to [-1, 1]) and mapped to the codebook entry whose bucket holds it (`torch.bucketize`
//! over the midpoints of neighbouring entries: a value on a midpoint takes the lower entry); two
//! codes a byte, the first in the high nibble. Dequantizing is `code[q] · absmax` in f32.

/// bitsandbytes' blocksize for NF4 (its default, and PEFT/transformers' QLoRA setting).
pub const NF4_BLOCK: usize = 64;

/// `bitsandbytes.functional.get_4bit_type("nf4")`, as the f32 values torch holds.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The 15 bucket bounds: `(code[i] + code[i + 1]) / 2` in f32 (NF4's order is already sorted).
fn bounds() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0)
}

/// The packed codes (`values.len() / 2` bytes) and per-block absmax of `values`, whose length is
/// a whole number of 64-value blocks (the caller checks).
pub fn quantize_nf4(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert!(
        values.len() % NF4_BLOCK == 0,
        "NF4 takes whole 64-value blocks"
    );
    let bounds = bounds();
    let mut packed = Vec::with_capacity(values.len() / 2);
    let mut absmax = Vec::with_capacity(values.len() / NF4_BLOCK);
    for block in values.chunks_exact(NF4_BLOCK) {
        let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        let inv = 1.0 / am.max(1e-38);
        // torch.bucketize(right=False): the number of bounds strictly below the value.
        let code = |v: f32| {
            let s = (v * inv).clamp(-1.0, 1.0);
            bounds.iter().filter(|&&b| b < s).count() as u8
        };
        packed.extend(
            block
                .chunks_exact(2)
                .map(|p| (code(p[0]) << 4) | code(p[1])),
        );
    }
    (packed, absmax)
}

/// Appends the values of `packed` (whole blocks, `absmax` one per block) to `out`.
pub fn dequantize_nf4(packed: &[u8], absmax: &[f32], out: &mut Vec<f32>) {
    for (block, &am) in packed.chunks_exact(NF4_BLOCK / 2).zip(absmax) {
        for &b in block {
            out.push(NF4_CODE[(b >> 4) as usize] * am);
            out.push(NF4_CODE[(b & 0x0F) as usize] * am);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebook_entries_quantize_to_themselves() {
        let mut values = vec![0.0f32; NF4_BLOCK];
        for (i, c) in NF4_CODE.iter().enumerate() {
            values[i] = c * 3.0;
        }
        let (packed, absmax) = quantize_nf4(&values);
        assert_eq!(absmax, [3.0]);
        let mut back = Vec::new();
        dequantize_nf4(&packed, &absmax, &mut back);
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn an_all_zero_block_decodes_to_zero() {
        let (packed, absmax) = quantize_nf4(&[0.0; NF4_BLOCK]);
        assert!(packed.iter().all(|&b| b == 0x77));
        let mut back = Vec::new();
        dequantize_nf4(&packed, &absmax, &mut back);
        assert!(back.iter().all(|&v| v == 0.0));
    }
}
