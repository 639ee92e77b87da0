//! GGUF container parsing (versions 2 and 3), following gguf-py's `GGUFReader` (gguf/gguf_reader.py)
//! and ggml's `gguf.cpp`. Layout, all little endian:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type u32, value)
//! tensor_count × (name: string, n_dims u32, dims: n_dims × u64, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
//! ```
//! A string is `len u64` then UTF-8 bytes; an array is `elem_type u32, count u64, elements`.
//! Every length and count is checked against the bytes left before anything is allocated, so a
//! hostile or truncated file yields an error, never a panic or a huge allocation.

use std::path::{Path, PathBuf};

use crate::error::GgufError;

/// `GGUF_DEFAULT_ALIGNMENT` in gguf-py's constants.py.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays may nest (gguf.cpp allows it); deeper than this is treated as hostile.
const MAX_NESTING: u32 = 8;

/// One metadata value; the variants are gguf-py's `GGUFValueType` in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer value that fits in a u64 (GGUF writers differ: u32, i32 and u64 all occur).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The type name used in error messages (gguf-py's names).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "UINT8",
            Value::I8(_) => "INT8",
            Value::U16(_) => "UINT16",
            Value::I16(_) => "INT16",
            Value::U32(_) => "UINT32",
            Value::I32(_) => "INT32",
            Value::F32(_) => "FLOAT32",
            Value::Bool(_) => "BOOL",
            Value::String(_) => "STRING",
            Value::Array(_) => "ARRAY",
            Value::U64(_) => "UINT64",
            Value::I64(_) => "INT64",
            Value::F64(_) => "FLOAT64",
        }
    }
}

/// One entry of the tensor-info table. `dims` are ggml's `ne`: `dims[0]` varies fastest, so a
/// PyTorch `[rows, cols]` weight is stored with `dims = [cols, rows]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset of the first byte, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements, `None` on overflow.
    pub fn n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// The PyTorch shape: ggml's dims reversed.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header. Tensor data stays in the caller's buffer (usually a memory map).
#[derive(Debug, Clone)]
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl Gguf {
    /// Parses the header of `bytes`, the whole content of the file at `path` (named in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, GgufError> {
        let mut cur = Cursor {
            bytes,
            pos: 0,
            path,
        };
        let magic = cur.take(4, "magic").map_err(|_| not_gguf(path, bytes))?;
        if magic != b"GGUF" {
            return Err(not_gguf(path, bytes));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let tensor_count = cur.u64("tensor count")?;
        let kv_count = cur.u64("metadata count")?;
        // Each KV takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8 + 4 + 4 + 8.
        let mut metadata =
            Vec::with_capacity(cur.bounded_capacity(kv_count, 13, "metadata count")?);
        for _ in 0..kv_count {
            let key = cur.string("metadata key")?;
            let value_type = cur.u32(&format!("type of `{key}`"))?;
            let value = cur.value(value_type, &key, 0)?;
            metadata.push((key, value));
        }
        let mut tensors =
            Vec::with_capacity(cur.bounded_capacity(tensor_count, 24, "tensor count")?);
        for _ in 0..tensor_count {
            tensors.push(cur.tensor_info()?);
        }
        let mut gguf = Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment: DEFAULT_ALIGNMENT,
            data_offset: 0,
        };
        gguf.alignment = match gguf.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(gguf.invalid(format!(
                        "general.alignment must be a power of two, found {v:?}"
                    )))
                }
            },
        };
        // The data section starts at the next multiple of the alignment (gguf-py: `offs += ...`).
        let pos = cur.pos as u64;
        gguf.data_offset = pos.div_ceil(gguf.alignment) * gguf.alignment;
        Ok(gguf)
    }

    /// The metadata value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "STRING", v))
    }

    /// An optional unsigned integer value; present with another type is an error.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v))
            })
            .transpose()
    }

    /// An optional number.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.wrong_type(key, "a number", v))
            })
            .transpose()
    }

    /// An optional boolean.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong_type(key, "BOOL", v)))
            .transpose()
    }

    /// An optional array.
    pub fn get_array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(self.wrong_type(key, "ARRAY", v)),
        }
    }

    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    /// The bytes of tensor `info` inside `bytes` (the whole file), after checking they lie within it.
    pub fn tensor_data<'a>(
        &self,
        bytes: &'a [u8],
        info: &TensorInfo,
        n_bytes: u64,
    ) -> Result<&'a [u8], GgufError> {
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= bytes.len() as u64 => Ok(&bytes[s as usize..e as usize]),
            _ => Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!(
                    "data of tensor `{}` ({n_bytes} bytes at data offset {})",
                    info.name, info.offset
                ),
                offset: self.data_offset.saturating_add(info.offset),
            }),
        }
    }

    pub fn invalid(&self, message: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.clone(),
            message,
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongKeyType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.type_name(),
        }
    }
}

fn not_gguf(path: &Path, bytes: &[u8]) -> GgufError {
    GgufError::NotGguf {
        path: path.to_path_buf(),
        magic: bytes.iter().take(4).copied().collect(),
    }
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos as u64,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(self.truncated(what));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// `count` items of at least `min_size` bytes each must fit in what is left of the file; the
    /// capacity to reserve for them (capped, since a `Value` is larger than its encoding).
    fn bounded_capacity(&self, count: u64, min_size: u64, what: &str) -> Result<usize, GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() as u64 => Ok(count.min(1 << 16) as usize),
            _ => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: format!(
                    "{what} {count} does not fit in the {} bytes left",
                    self.remaining()
                ),
                offset: self.pos as u64,
            }),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let start = self.pos;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::Invalid {
            path: self.path.to_path_buf(),
            message: format!("{what} at offset {start} is not valid UTF-8"),
        })
    }

    /// A value of GGUF type `value_type` for metadata `key`.
    fn value(&mut self, value_type: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = format!("value of `{key}`");
        Ok(match value_type {
            0 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::String(self.string(&what)?),
            9 => self.array_value(key, depth)?,
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::Invalid {
                    path: self.path.to_path_buf(),
                    message: format!("metadata `{key}` has unknown value type {other}"),
                })
            }
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Value, GgufError> {
        if depth >= MAX_NESTING {
            return Err(GgufError::Invalid {
                path: self.path.to_path_buf(),
                message: format!("metadata `{key}`: arrays nested too deeply"),
            });
        }
        let elem_type = self.u32(&format!("array type of `{key}`"))?;
        let count = self.u64(&format!("array length of `{key}`"))?;
        let min_size = match elem_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        };
        let mut items = Vec::with_capacity(self.bounded_capacity(
            count,
            min_size,
            &format!("array length of `{key}`"),
        )?);
        for _ in 0..count {
            items.push(self.value(elem_type, key, depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32(&format!("dimension count of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Invalid {
                path: self.path.to_path_buf(),
                message: format!(
                    "tensor `{name}` has {n_dims} dimensions (expected 1 to {MAX_DIMS})"
                ),
            });
        }
        let dims = (0..n_dims)
            .map(|_| self.u64(&format!("dimensions of tensor `{name}`")))
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = self.u32(&format!("type of tensor `{name}`"))?;
        let offset = self.u64(&format!("offset of tensor `{name}`"))?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}
