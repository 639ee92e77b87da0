//! `--quantize-base int4`'s quantizer: ggml Q4_0 blocks (32 values, `y = d · (q − 8)`, `d` in
//! f16), with the scale chosen to minimise the block's squared error instead of gguf-py's
//! `d = max / −8`. The blocks decode with the ordinary Q4_0 dequantizer, so the kernel and every
//! reader of the bytes are unchanged; only which 16 levels a block gets differs.
//!
//! The search is llama.cpp's `make_qx_quants` (ggml-quants.c, `nmax = 8`, the quantizer behind
//! `llama-quantize --imatrix` for Q4_0): for 19 candidate inverse scales `−(8 + 0.1·k) / max`,
//! k = −9…9 (`max` the signed value of largest magnitude), round each value to a level in
//! [−8, 7], take the least-squares scale for those levels, `d = Σ x·l / Σ l²`, and keep the
//! candidate that explains the most of the block (largest `(Σ x·l)² / Σ l²`, which is the smallest
//! error `Σ x² − (Σ x·l)² / Σ l²`). Unlike ggml, which keeps the candidate's levels, the values are
//! then rounded once more to the nearest level of the stored f16 scale: for a fixed scale the
//! nearest level is each value's best, so this never adds error. Uniform weights (plain squared
//! error, ggml's `rmse_type = 2`) were measured against ggml's default `x²` weights on SmolLM2
//! (README, "Quantized base").
//!
//! The code here is the scalar reference, one block and one candidate at a time; the quantizer
//! runs it in SIMD lanes (`search_lanes`: 16 blocks, 4 candidates at once), the same bytes.
//!
//! gguf export keeps `gguf::quantize::quantize_q4_0`, byte-identical to gguf-py; this one is for
//! the frozen base only.

use half::f16;
use rayon::prelude::*;

/// Values per Q4_0 block (ggml's `QK4_0`).
pub(super) const QK: usize = 32;
/// Bytes per Q4_0 block: the f16 scale and 16 bytes of nibbles.
pub(super) const BLOCK_BYTES: usize = 2 + QK / 2;
/// Blocks per parallel task: large enough to amortise the task, small enough to spread a row.
const BLOCKS_PER_TASK: usize = 256;

/// The Q4_0 blocks of `values` (a whole number of 32-value blocks) with searched scales: 16
/// blocks at a time in SIMD lanes (`search_lanes`), the same bytes as [`quantize_q4_0_search_reference`].
pub fn quantize_q4_0_search(values: &[f32]) -> Vec<u8> {
    quantize_with(values, super::search_lanes::quantize_run)
}

/// The scalar reference of [`quantize_q4_0_search`], one block and one candidate at a time
/// (kept to test the lanes against and to measure them by: `examples/bench_quantize_load.rs`).
pub fn quantize_q4_0_search_reference(values: &[f32]) -> Vec<u8> {
    quantize_with(values, |src, dst| {
        for (d, x) in dst.chunks_exact_mut(BLOCK_BYTES).zip(src.chunks_exact(QK)) {
            quantize_block(x.try_into().expect("32 values"), d);
        }
    })
}

/// Splits `values` into tasks of whole blocks over rayon's pool; `run(src, dst)` writes the
/// blocks of one task.
fn quantize_with(values: &[f32], run: impl Fn(&[f32], &mut [u8]) + Sync) -> Vec<u8> {
    assert!(values.len() % QK == 0, "Q4_0 takes whole 32-value blocks");
    let mut out = vec![0u8; values.len() / QK * BLOCK_BYTES];
    out.par_chunks_mut(BLOCKS_PER_TASK * BLOCK_BYTES)
        .zip(values.par_chunks(BLOCKS_PER_TASK * QK))
        .for_each(|(dst, src)| run(src, dst));
    out
}

/// A level in [−8, 7] for `v · iscale` (ggml's `nearest_int`: round half to even).
fn level(v: f32, iscale: f32) -> f32 {
    (v * iscale).round_ties_even().clamp(-8.0, 7.0)
}

/// The least-squares scale of the levels `x · iscale` rounds to, and its score `(Σ x·l)² / Σ l²`.
fn fit(x: &[f32; QK], iscale: f32) -> Option<(f32, f32)> {
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for &v in x {
        let l = level(v, iscale);
        sumlx += v * l;
        suml2 += l * l;
    }
    (suml2 > 0.0).then(|| (sumlx / suml2, sumlx * sumlx / suml2))
}

/// The searched scale of one block (0 for an all-zero block).
pub fn search_scale(x: &[f32; QK]) -> f32 {
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    if max == 0.0 {
        return 0.0;
    }
    let mut best = (0.0f32, f32::NEG_INFINITY);
    for k in -9..=9 {
        if let Some((d, score)) = fit(x, -(8.0 + 0.1 * k as f32) / max) {
            if score > best.1 {
                best = (d, score);
            }
        }
    }
    best.0
}

/// Writes one 18-byte Q4_0 block for `x` into `dst` (the reference; `search_lanes` also sends
/// blocks outside its range here).
pub(super) fn quantize_block(x: &[f32; QK], dst: &mut [u8]) {
    let d = f16::from_f32(search_scale(x));
    let inv = if d.to_f32() == 0.0 {
        0.0
    } else {
        1.0 / d.to_f32()
    };
    // Stored as q = l + 8 in 0..=15: element j in the low nibble of byte j, j + 16 in the high.
    let q = |v: f32| (level(v, inv) + 8.0) as u8;
    dst[..2].copy_from_slice(&d.to_le_bytes());
    for j in 0..QK / 2 {
        dst[2 + j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::{dequantize, GgmlType};
    use crate::gguf::quantize::quantize_q4_0;

    /// Deterministic, roughly Gaussian values with a few outliers, as trained weights have.
    fn weights(n: usize) -> Vec<f32> {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|i| {
                let g: f32 = (0..4).map(|_| uniform()).sum::<f32>() - 2.0;
                if i % 97 == 0 {
                    g * 6.0
                } else {
                    g
                }
            })
            .collect()
    }

    fn squared_error(values: &[f32], blocks: &[u8]) -> f64 {
        let mut back = Vec::new();
        dequantize(GgmlType::Q4_0, blocks, &mut back);
        values
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum()
    }

    #[test]
    fn searched_blocks_are_q4_0_blocks_that_decode_within_half_a_step() {
        let values = weights(32 * 64);
        let blocks = quantize_q4_0_search(&values);
        assert_eq!(blocks.len(), 64 * BLOCK_BYTES);
        let mut back = Vec::new();
        dequantize(GgmlType::Q4_0, &blocks, &mut back);
        for (x, (b, y)) in values
            .chunks_exact(QK)
            .zip(blocks.chunks_exact(BLOCK_BYTES).zip(back.chunks_exact(QK)))
        {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32().abs();
            for (v, w) in x.iter().zip(y) {
                // Inside the grid a value is at most half a step from its level; outside it, at
                // most the distance to the nearer end.
                let top = 7.0 * d;
                let bound = 0.5 * d + (v.abs() - top).max(0.0) + 1e-6;
                assert!((v - w).abs() <= bound, "{v} -> {w}, d {d}");
            }
        }
    }

    #[test]
    fn the_search_never_does_worse_than_gguf_py_q4_0_on_a_block() {
        let values = weights(32 * 512);
        let (plain, searched) = (quantize_q4_0(&values), quantize_q4_0_search(&values));
        let mut total = (0.0, 0.0);
        for (k, x) in values.chunks_exact(QK).enumerate() {
            let r = k * BLOCK_BYTES..(k + 1) * BLOCK_BYTES;
            let (p, s) = (
                squared_error(x, &plain[r.clone()]),
                squared_error(x, &searched[r]),
            );
            // k = 0 of the search is gguf-py's own levels refitted, so it can only gain (up to
            // the f16 rounding of the two scales).
            assert!(s <= p * (1.0 + 1e-3) + 1e-9, "block {k}: {s} > {p}");
            total = (total.0 + p, total.1 + s);
        }
        // And on such weights it gains overall (measured: 0.92 of the error).
        assert!(total.1 < 0.95 * total.0, "{total:?}");
    }

    #[test]
    fn an_all_zero_block_stays_zero() {
        let blocks = quantize_q4_0_search(&[0.0; QK]);
        // Level 0 everywhere (nibble 8), as gguf-py; its scale is −0.0, ours +0.0.
        assert_eq!(blocks[2..], quantize_q4_0(&[0.0; QK])[2..]);
        let mut back = Vec::new();
        dequantize(GgmlType::Q4_0, &blocks, &mut back);
        assert_eq!(back, [0.0; QK]);
    }

    #[test]
    fn a_block_on_a_q4_0_grid_is_recovered_exactly() {
        // Values that are exactly d·(q − 8) for a representable d: the search finds that grid.
        let d = 0.125f32;
        let x: Vec<f32> = (0..QK).map(|i| d * ((i % 16) as f32 - 8.0)).collect();
        let mut back = Vec::new();
        dequantize(GgmlType::Q4_0, &quantize_q4_0_search(&x), &mut back);
        assert_eq!(back, x);
    }
}
