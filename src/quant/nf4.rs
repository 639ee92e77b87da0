//! NF4 (Dettmers et al. 2023, QLoRA, arXiv 2305.14314) exactly as bitsandbytes 0.50 computes it on
//! CPU (`backends/default/ops.py`, `quantize_4bit` / `_dequantize_4bit_compute`): the flattened
//! tensor in 64-value blocks, `absmax` per block in f32, each value scaled by `x · (1/absmax)`
//! (clamped to [-1, 1]) and mapped to the codebook entry whose bucket holds it (`torch.bucketize`
//! over the midpoints of neighbouring entries: a value on a midpoint takes the lower entry); two
//! codes a byte, the first in the high nibble. Dequantizing is `code[q] · absmax` in f32.

use rayon::prelude::*;

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

/// Blocks per parallel task.
const BLOCKS_PER_TASK: usize = 256;

/// The packed codes (`values.len() / 2` bytes) and per-block absmax of `values`, whose length is
/// a whole number of 64-value blocks (the caller checks). Split over rayon's pool and compiled
/// for AVX-512F/AVX2 at run time; every block's arithmetic is the same, so are the bytes.
pub fn quantize_nf4(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert!(
        values.len() % NF4_BLOCK == 0,
        "NF4 takes whole 64-value blocks"
    );
    let mut packed = vec![0u8; values.len() / 2];
    let mut absmax = vec![0.0f32; values.len() / NF4_BLOCK];
    packed
        .par_chunks_mut(BLOCKS_PER_TASK * NF4_BLOCK / 2)
        .zip(absmax.par_chunks_mut(BLOCKS_PER_TASK))
        .zip(values.par_chunks(BLOCKS_PER_TASK * NF4_BLOCK))
        .for_each(|((p, a), v)| run(v, p, a));
    (packed, absmax)
}

simd_dispatch!(fn run(values: &[f32], packed: &mut [u8], absmax: &mut [f32]) => run_body);

/// The blocks of `values` into `packed` (32 bytes a block) and `absmax` (one a block).
#[inline(always)]
fn run_body(values: &[f32], packed: &mut [u8], absmax: &mut [f32]) {
    let bounds = bounds();
    let blocks = values
        .chunks_exact(NF4_BLOCK)
        .zip(packed.chunks_exact_mut(NF4_BLOCK / 2));
    for ((block, out), am_out) in blocks.zip(absmax) {
        let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *am_out = am;
        let inv = 1.0 / am.max(1e-38);
        // torch.bucketize(right=False): the number of bounds strictly below the value.
        let code = |v: f32| {
            let s = (v * inv).clamp(-1.0, 1.0);
            bounds.iter().map(|&b| u8::from(b < s)).sum::<u8>()
        };
        for (o, p) in out.iter_mut().zip(block.chunks_exact(2)) {
            *o = (code(p[0]) << 4) | code(p[1]);
        }
    }
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
    use crate::quant::test_values::{hard_blocks, Rng};

    /// The codes of a value one bound at a time, as the quantizer first wrote them.
    fn plain(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let bounds = bounds();
        let (mut packed, mut absmax) = (Vec::new(), Vec::new());
        for block in values.chunks_exact(NF4_BLOCK) {
            let am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            absmax.push(am);
            let inv = 1.0 / am.max(1e-38);
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

    #[test]
    fn parallel_simd_nf4_gives_the_plain_loop_s_codes_on_every_instruction_set() {
        let mut rng = Rng(0x1405_7b7e_f767_814f);
        // Codebook entries and bucket bounds exactly, times powers of two: the ties of bucketize.
        let mut values: Vec<f32> = (0..4096)
            .map(|i| {
                let b = bounds();
                let v = if i % 2 == 0 {
                    NF4_CODE[i % 16]
                } else {
                    b[i % 15]
                };
                v * 2f32.powi((i / 64 % 9) as i32 - 4)
            })
            .collect();
        values.extend(hard_blocks(&mut rng, 20_004, &[]));
        let want = plain(&values);
        let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let check = |(p, a): (Vec<u8>, Vec<f32>), what: &str| {
            assert!(p == want.0, "{what}: codes");
            assert!(bits(&a) == bits(&want.1), "{what}: absmax");
        };
        check(quantize_nf4(&values), "dispatched");
        let mut got = (
            vec![0u8; values.len() / 2],
            vec![0.0f32; values.len() / NF4_BLOCK],
        );
        run_body(&values, &mut got.0, &mut got.1);
        check(got.clone(), "portable");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { run_avx2(&values, &mut got.0, &mut got.1) };
                check(got.clone(), "AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                unsafe { run_avx512(&values, &mut got.0, &mut got.1) };
                check(got.clone(), "AVX-512");
            }
        }
    }

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
