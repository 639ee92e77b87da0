//! Conversions between on-disk float encodings and f32. We compute in f32 on CPU; F16/BF16 weights
//! are widened on load and narrowed (round to nearest even, as torch does) on write.

use half::{bf16, f16};
use safetensors::Dtype;

/// Decodes little-endian `bytes` of `dtype` into f32 values; `None` for a non-float dtype.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// Encodes f32 values as little-endian bytes of `dtype` (F32, F16 or BF16).
pub fn from_f32(dtype: Dtype, values: &[f32]) -> Option<Vec<u8>> {
    let out = match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// Whether every value of little-endian `bytes` of `dtype` is finite (no NaN, no infinity) in
/// that dtype: a value finite in f32 may overflow to infinity in f16. Integer dtypes are always
/// finite. Tested on the exponent bits (all ones = NaN or infinity), without decoding.
pub fn all_finite(dtype: Dtype, bytes: &[u8]) -> bool {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .all(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 != 0x7F80_0000),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 != 0x7C00),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 != 0x7F80),
        Dtype::F64 => bytes.chunks_exact(8).all(|c| {
            let bits = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            bits & 0x7FF0_0000_0000_0000 != 0x7FF0_0000_0000_0000
        }),
        _ => true,
    }
}

/// Decodes integer tensors (I64, I32) into i64 values; `None` for other dtypes.
pub fn to_i64(dtype: Dtype, bytes: &[u8]) -> Option<Vec<i64>> {
    let out = match dtype {
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// Parses a user-facing dtype name (`f32`, `bf16`, `f16`).
pub fn parse_float_dtype(name: &str) -> Option<Dtype> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Some(Dtype::F32),
        "f16" | "float16" => Some(Dtype::F16),
        "bf16" | "bfloat16" => Some(Dtype::BF16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_keeps_representable_values() {
        let values = [1.0f32, -2.5, 0.15625, 65280.0];
        let bytes = from_f32(Dtype::BF16, &values).unwrap();
        assert_eq!(to_f32(Dtype::BF16, &bytes).unwrap(), values);
    }

    #[test]
    fn a_value_finite_in_f32_can_be_infinite_in_f16() {
        let values = [1.0f32, 1e5];
        assert!(all_finite(
            Dtype::F32,
            &from_f32(Dtype::F32, &values).unwrap()
        ));
        assert!(all_finite(
            Dtype::BF16,
            &from_f32(Dtype::BF16, &values).unwrap()
        ));
        assert!(!all_finite(
            Dtype::F16,
            &from_f32(Dtype::F16, &values).unwrap()
        ));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                assert!(!all_finite(dtype, &from_f32(dtype, &[0.0, bad]).unwrap()));
            }
        }
    }

    #[test]
    fn integer_dtypes_are_not_floats() {
        assert!(to_f32(Dtype::I64, &[0; 8]).is_none());
    }
}
