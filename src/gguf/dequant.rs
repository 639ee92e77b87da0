//! Dequantization of the ggml tensor types we import, exactly as gguf-py's `quants.py` computes them
//! (all arithmetic in f32, scales widened from f16 first), which is what llama.cpp's reference
//! `dequantize_row_*` in ggml-quants.c does too. The k-quants are in [`super::kquants`]. Other
//! types are an error naming the tensor.

use half::{bf16, f16};

use super::kquants::{self, QK_K};

/// ggml's block size for the legacy quantizations (`QK4_0`, `QK4_1`, `QK8_0`).
const QK: usize = 32;

/// The ggml tensor types we can read (ggml's `Q4_K` is spelled `Q4K`, and so on, for Rust's
/// camel-case rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

impl GgmlType {
    /// The supported type with ggml id `id` (gguf-py's `GGMLQuantizationType`), or `None`.
    pub fn from_id(id: u32) -> Option<Self> {
        match id {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            6 => Some(Self::Q5_0),
            8 => Some(Self::Q8_0),
            10 => Some(Self::Q2K),
            11 => Some(Self::Q3K),
            12 => Some(Self::Q4K),
            13 => Some(Self::Q5K),
            14 => Some(Self::Q6K),
            15 => Some(Self::Q8K),
            30 => Some(Self::BF16),
            _ => None,
        }
    }

    /// (elements per block, bytes per block), as `GGML_QUANT_SIZES` in gguf-py's constants.py.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (QK, 2 + QK / 2),
            Self::Q4_1 => (QK, 2 + 2 + QK / 2),
            Self::Q5_0 => (QK, 2 + 4 + QK / 2),
            Self::Q8_0 => (QK, 2 + QK),
            Self::Q2K => (QK_K, kquants::Q2_K_BYTES),
            Self::Q3K => (QK_K, kquants::Q3_K_BYTES),
            Self::Q4K => (QK_K, kquants::Q4_K_BYTES),
            Self::Q5K => (QK_K, kquants::Q5_K_BYTES),
            Self::Q6K => (QK_K, kquants::Q6_K_BYTES),
            Self::Q8K => (QK_K, kquants::Q8_K_BYTES),
        }
    }

    /// Bytes taken by `n` elements; `None` when `n` is not a whole number of blocks or overflows.
    pub fn n_bytes(self, n: u64) -> Option<u64> {
        let (block, size) = self.block();
        (n % block as u64 == 0)
            .then(|| (n / block as u64).checked_mul(size as u64))
            .flatten()
    }
}

/// ggml's name for type id `id` (for error messages), from gguf-py's `GGMLQuantizationType`.
pub fn type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("unknown type {id}"),
    };
    name.to_string()
}

/// Decodes `bytes` (a whole number of blocks of `ty`) into f32 values, appended to `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) {
    let (_, size) = ty.block();
    out.reserve(bytes.len() / size * ty.block().0);
    for b in bytes.chunks_exact(size) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(f16::from_le_bytes([b[0], b[1]]).to_f32()),
            // gguf-py: `(blocks.view(np.int16).astype(np.int32) << 16).view(np.float32)`
            GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => q4_0(b, out),
            GgmlType::Q4_1 => q4_1(b, out),
            GgmlType::Q5_0 => q5_0(b, out),
            GgmlType::Q8_0 => q8_0(b, out),
            GgmlType::Q2K => kquants::q2_k(b, out),
            GgmlType::Q3K => kquants::q3_k(b, out),
            GgmlType::Q4K => kquants::q4_k(b, out),
            GgmlType::Q5K => kquants::q5_k(b, out),
            GgmlType::Q6K => kquants::q6_k(b, out),
            GgmlType::Q8K => kquants::q8_k(b, out),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_0 block: `d: f16, qs: [u8; 16]`; element j is the low nibble of `qs[j]`, element j + 16 the
/// high nibble; `y = d * (q - 8)` (gguf-py `Q4_0.dequantize_blocks`).
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..2 + QK / 2];
    out.extend(qs.iter().map(|q| d * ((q & 0x0F) as i8 - 8) as f32));
    out.extend(qs.iter().map(|q| d * ((q >> 4) as i8 - 8) as f32));
}

/// Q4_1 block: `d: f16, m: f16, qs: [u8; 16]`, nibbles as Q4_0; `y = d * q + m`, computed as a
/// product then a sum (no fused multiply-add), as gguf-py's `(d * qs) + m`.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..4 + QK / 2];
    out.extend(qs.iter().map(|q| d * (q & 0x0F) as f32 + m));
    out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
}

/// Q5_0 block: `d: f16, qh: [u8; 4], qs: [u8; 16]`; nibbles as Q4_0, the fifth bit of element j
/// is bit j of the little-endian `qh`; `y = d * (q - 16)` (gguf-py `Q5_0.dequantize_blocks`).
/// Written by `peft export gguf --type q4_k_m` for rows that are not whole Q4_K super-blocks.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..6 + QK / 2];
    let q = |j: usize, nib: u8| (nib | ((((qh >> j) & 1) as u8) << 4)) as i8 - 16;
    out.extend(
        qs.iter()
            .enumerate()
            .map(|(j, v)| d * q(j, v & 0x0F) as f32),
    );
    out.extend(
        qs.iter()
            .enumerate()
            .map(|(j, v)| d * q(j + 16, v >> 4) as f32),
    );
}

/// Q8_0 block: `d: f16, qs: [i8; 32]`; `y = q * d` (gguf-py `Q8_0.dequantize_blocks`).
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..2 + QK].iter().map(|&q| q as i8 as f32 * d));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        dequantize(ty, bytes, &mut out);
        out
    }

    /// A block header: the f16 bytes of `v`.
    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn f32_f16_and_bf16_values_decode_to_themselves() {
        let f32s: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(run(GgmlType::F32, &f32s), [1.5, -0.25]);
        // f16 0x3C00 = 1.0, 0xC000 = -2.0; bf16 0x3FC0 = 1.5, 0xBE80 = -0.25
        assert_eq!(run(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0]), [1.0, -2.0]);
        assert_eq!(run(GgmlType::BF16, &[0xC0, 0x3F, 0x80, 0xBE]), [1.5, -0.25]);
    }

    #[test]
    fn q8_0_block_multiplies_each_int8_by_the_scale() {
        let mut block = h(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let expected: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.5).collect();
        assert_eq!(run(GgmlType::Q8_0, &block), expected);
    }

    #[test]
    fn q4_0_block_puts_low_nibbles_first_and_subtracts_eight() {
        // qs[j] = (high j % 16) << 4 | low (15 - j): low nibbles give 15..0, high nibbles 0..15.
        let mut block = h(2.0).to_vec();
        block.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
        let low: Vec<f32> = (0..16).map(|j| 2.0 * (15 - j - 8) as f32).collect();
        let high: Vec<f32> = (0..16).map(|j| 2.0 * (j - 8) as f32).collect();
        assert_eq!(run(GgmlType::Q4_0, &block), [low, high].concat());
        assert_eq!(run(GgmlType::Q4_0, &block)[0], 14.0); // 2 * (15 - 8)
    }

    #[test]
    fn q4_1_block_scales_nibbles_and_adds_the_minimum() {
        // d = 0.25, m = -1.0, qs[j] = 0x_j_(15 - j) as above: y = 0.25 q - 1.
        let mut block = [h(0.25), h(-1.0)].concat();
        block.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
        let out = run(GgmlType::Q4_1, &block);
        assert_eq!(out.len(), 32);
        assert_eq!(out[0], 2.75); // 0.25 * 15 - 1
        assert_eq!(out[15], -1.0); // 0.25 * 0 - 1
        assert_eq!(out[16], -1.0);
        assert_eq!(out[31], 2.75);
    }

    #[rstest::rstest]
    #[case(GgmlType::Q4_0, 32, Some(18))]
    #[case(GgmlType::Q4_1, 64, Some(40))]
    #[case(GgmlType::Q8_0, 32, Some(34))]
    #[case(GgmlType::Q8_0, 33, None)]
    #[case(GgmlType::F16, 3, Some(6))]
    #[case(GgmlType::Q2K, 512, Some(168))]
    #[case(GgmlType::Q3K, 256, Some(110))]
    #[case(GgmlType::Q4K, 256, Some(144))]
    #[case(GgmlType::Q5K, 256, Some(176))]
    #[case(GgmlType::Q6K, 768, Some(630))]
    #[case(GgmlType::Q8K, 256, Some(292))]
    #[case(GgmlType::Q4K, 32, None)]
    #[case(GgmlType::Q8K, u64::MAX - 255, None)] // 2^56 - 1 blocks of 292 bytes overflow
    fn byte_sizes_follow_ggml_block_sizes(
        #[case] ty: GgmlType,
        #[case] n: u64,
        #[case] bytes: Option<u64>,
    ) {
        assert_eq!(ty.n_bytes(n), bytes);
    }

    #[test]
    fn unsupported_types_are_named_like_gguf_py() {
        assert_eq!(GgmlType::from_id(16), None);
        assert_eq!(type_name(16), "IQ2_XXS");
        assert_eq!(GgmlType::from_id(14), Some(GgmlType::Q6K));
        assert_eq!(type_name(99), "unknown type 99");
    }
}
