//! Quantized frozen bases (`--quantize-base int8|int4|nf4`, and a GGUF file's own quantized
//! tensors with `--model file.gguf`): a frozen linear weight kept as blocks in memory and
//! dequantized tile by tile inside the product (`kernels::quant_linear`), never as a whole.
//!
//! The layouts are the published ones, so the numbers match their reference implementations:
//! - `int8` is ggml's Q8_0 (32 values, absmax/127 f16 scale; [`q8_0`], the bytes of
//!   `gguf::quantize::quantize_q8_0`);
//! - `int4` is ggml's Q4_0 block layout (32 values, f16 scale, `d · (q − 8)`), its scale found by
//!   llama.cpp's error-minimising search ([`search`]) rather than gguf-py's `max / −8`;
//! - `nf4` is bitsandbytes' NF4 (64 values, f32 absmax, its 16-value codebook; [`nf4`]), so an
//!   adapter trained with PEFT on a `load_in_4bit` base sees the same base weights here;
//! - a GGUF tensor keeps its own type (Q8_0, Q4_0, Q4_1, Q2_K…Q6_K), decoded by `gguf::dequant`.
//!
//! A [`QMatrix`] holds PyTorch's orientation `[out, in]`, row-major, blocks running along `in`
//! (the GGUF layout; for NF4 the flattened order bitsandbytes uses is the same when
//! `in % 64 == 0`, which we require). Each row is a whole number of blocks, so any run of rows is
//! one contiguous byte range and a column range of a row is a run of whole blocks.

/// `fn NAME(args) { BODY(args) }` dispatched at run time to copies of `BODY` compiled for AVX-512F
/// or AVX2 (`run_avx512`, `run_avx2`, which the tests call directly), else the portable build:
/// the quantizers' loops are written for the compiler to vectorise, and `is_x86_feature_detected!`
/// picks the widest copy this CPU runs (never `target-cpu=native`; as `kernels::softmax`).
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { run_avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { run_avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn run_avx512($($arg: $ty),*) {
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn run_avx2($($arg: $ty),*) {
            $body($($arg),*)
        }
    };
}

pub mod nf4;
pub mod q8_0;
pub mod search;
mod search_lanes;
#[cfg(test)]
mod test_values;

use std::sync::Arc;

use crate::gguf::dequant::{dequantize, GgmlType};

/// The schemes of `--quantize-base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseQuant {
    Int8,
    Int4,
    Nf4,
}

impl BaseQuant {
    /// Values per block: a row must be a whole number of them.
    pub fn block(self) -> usize {
        match self {
            Self::Int8 | Self::Int4 => 32,
            Self::Nf4 => nf4::NF4_BLOCK,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Int4 => "int4",
            Self::Nf4 => "nf4",
        }
    }
}

/// How a [`QMatrix`]'s bytes decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    /// A ggml block type (our int8 = Q8_0, int4 = Q4_0, or a GGUF tensor's type).
    Ggml(GgmlType),
    /// bitsandbytes NF4: `data` the packed codes, `absmax` one per 64 values.
    Nf4,
}

/// A quantized `[rows = out, cols = in]` matrix.
#[derive(Debug)]
pub struct QMatrix {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
    /// NF4 only: the per-block scales.
    pub absmax: Vec<f32>,
}

/// A shared handle to a frozen quantized weight (the module tree clones it freely).
#[derive(Debug, Clone)]
pub struct QuantWeight(pub Arc<QMatrix>);

impl QMatrix {
    /// Quantizes the row-major `[rows, cols]` `values` with `scheme`; `None` when a row is not a
    /// whole number of the scheme's blocks (the caller keeps that tensor unquantized).
    pub fn quantize(scheme: BaseQuant, values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || cols % scheme.block() != 0 || values.len() != rows * cols {
            return None;
        }
        let (format, data, absmax) = match scheme {
            BaseQuant::Int8 => (
                QFormat::Ggml(GgmlType::Q8_0),
                q8_0::quantize_q8_0(values),
                Vec::new(),
            ),
            BaseQuant::Int4 => (
                QFormat::Ggml(GgmlType::Q4_0),
                search::quantize_q4_0_search(values),
                Vec::new(),
            ),
            BaseQuant::Nf4 => {
                let (data, absmax) = nf4::quantize_nf4(values);
                (QFormat::Nf4, data, absmax)
            }
        };
        Some(Self {
            format,
            rows,
            cols,
            data,
            absmax,
        })
    }

    /// A GGUF tensor's blocks as they are stored, `[rows, cols]` row-major; `None` when the byte
    /// count does not match or a row is not a whole number of blocks.
    pub fn from_ggml(ty: GgmlType, data: Vec<u8>, rows: usize, cols: usize) -> Option<Self> {
        let (block, size) = ty.block();
        let ok = cols % block == 0 && data.len() == rows * (cols / block) * size;
        ok.then_some(Self {
            format: QFormat::Ggml(ty),
            rows,
            cols,
            data,
            absmax: Vec::new(),
        })
    }

    /// Values per block and bytes per block.
    fn block(&self) -> (usize, usize) {
        match self.format {
            QFormat::Ggml(ty) => ty.block(),
            QFormat::Nf4 => (nf4::NF4_BLOCK, nf4::NF4_BLOCK / 2),
        }
    }

    /// Values per block (a column range passed to [`Self::decode`] starts and ends on one).
    pub fn block_len(&self) -> usize {
        self.block().0
    }

    /// Bytes held (blocks and scales).
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.absmax.len()
    }

    /// Appends row `r`'s columns `c0..c1` (block-aligned) as f32 to `out`.
    pub fn decode(&self, r: usize, c0: usize, c1: usize, out: &mut Vec<f32>) {
        let (block, size) = self.block();
        debug_assert!(c0 % block == 0 && (c1 % block == 0 || c1 == self.cols));
        let per_row = self.cols / block;
        let (b0, b1) = (r * per_row + c0 / block, r * per_row + c1.div_ceil(block));
        let bytes = &self.data[b0 * size..b1 * size];
        match self.format {
            QFormat::Ggml(ty) => dequantize(ty, bytes, out),
            QFormat::Nf4 => nf4::dequantize_nf4(bytes, &self.absmax[b0..b1], out),
        }
    }

    /// Appends rows `r0..r1` (whole) as f32, row-major, to `out`.
    pub fn decode_rows(&self, r0: usize, r1: usize, out: &mut Vec<f32>) {
        let (block, size) = self.block();
        let per_row = self.cols / block;
        let (b0, b1) = (r0 * per_row, r1 * per_row);
        let bytes = &self.data[b0 * size..b1 * size];
        match self.format {
            QFormat::Ggml(ty) => dequantize(ty, bytes, out),
            QFormat::Nf4 => nf4::dequantize_nf4(bytes, &self.absmax[b0..b1], out),
        }
    }

    /// The whole matrix as f32 `[rows, cols]` (the reference composition, merges, DoRA's norm).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        self.decode_rows(0, self.rows, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_range_decodes_as_the_same_slice_of_the_whole() {
        let values: Vec<f32> = (0..4 * 128)
            .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
            .collect();
        for scheme in [BaseQuant::Int8, BaseQuant::Int4, BaseQuant::Nf4] {
            let q = QMatrix::quantize(scheme, &values, 4, 128).expect("whole blocks");
            let whole = q.dequantize();
            let mut part = Vec::new();
            q.decode(2, 64, 128, &mut part);
            assert_eq!(part, whole[2 * 128 + 64..3 * 128], "{scheme:?}");
        }
    }

    #[test]
    fn a_row_that_is_not_whole_blocks_is_left_unquantized() {
        assert!(QMatrix::quantize(BaseQuant::Nf4, &[0.0; 96], 3, 32).is_none());
        assert!(QMatrix::quantize(BaseQuant::Int4, &[0.0; 96], 3, 32).is_some());
    }
}
