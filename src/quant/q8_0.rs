//! `--quantize-base int8`'s quantizer: ggml Q8_0, the same bytes as
//! `gguf::quantize::quantize_q8_0` (gguf-py 0.19's, bit for bit), split over rayon's pool and
//! compiled for AVX-512F/AVX2 at run time. The arithmetic is that function's, operation for
//! operation; what changes is that `floor` is one `vroundps` instead of a libm call per value on
//! baseline x86-64 (SSE2 has no rounding instruction), and that the 32 values of a block are
//! rounded in SIMD lanes. `floor` is exact, so every instruction set gives the same bits.

use half::f16;
use rayon::prelude::*;

use crate::gguf::quantize::roundf;

/// ggml's `QK8_0`.
const QK: usize = 32;
/// Bytes per Q8_0 block: the f16 scale and 32 i8.
const BLOCK_BYTES: usize = 2 + QK;
/// Blocks per parallel task.
const BLOCKS_PER_TASK: usize = 512;

/// The Q8_0 blocks of `values` (a whole number of 32-value blocks).
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len() % QK == 0, "Q8_0 takes whole 32-value blocks");
    let mut out = vec![0u8; values.len() / QK * BLOCK_BYTES];
    out.par_chunks_mut(BLOCKS_PER_TASK * BLOCK_BYTES)
        .zip(values.par_chunks(BLOCKS_PER_TASK * QK))
        .for_each(|(dst, src)| run(src, dst));
    out
}

simd_dispatch!(fn run(src: &[f32], dst: &mut [u8]) => run_body);

/// `gguf::quantize::quantize_q8_0`'s loop body over the blocks of `src`.
#[inline(always)]
fn run_body(src: &[f32], dst: &mut [u8]) {
    for (block, out) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, &v) in out[2..].iter_mut().zip(block) {
            *q = roundf(v * id) as i8 as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_values::{hard_blocks, Rng};

    #[test]
    fn base_q8_0_blocks_are_gguf_py_s_bytes_on_every_instruction_set() {
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        let mut values = hard_blocks(&mut rng, 20_003, &[]);
        values.extend((0..1536 * 576).map(|_| rng.gauss() * 0.02));
        let want = crate::gguf::quantize::quantize_q8_0(&values);
        assert!(quantize_q8_0(&values) == want, "dispatched");
        let mut got = vec![0u8; want.len()];
        run_body(&values, &mut got);
        assert!(got == want, "portable");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { run_avx2(&values, &mut got) };
                assert!(got == want, "AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                unsafe { run_avx512(&values, &mut got) };
                assert!(got == want, "AVX-512");
            }
        }
    }
}
