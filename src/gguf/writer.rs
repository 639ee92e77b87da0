//! GGUF v3 output, the layout [`super::reader`] parses (gguf-py's `GGUFWriter`, ggml's
//! `gguf.cpp`): header, metadata, tensor infos, padding to `general.alignment` (32), then each
//! tensor's bytes, every tensor starting on an aligned offset.
//!
//! The tensor infos (and so every offset) are computed from names, shapes and types alone, so the
//! data is streamed: the caller produces one tensor at a time. The file is written as a hidden
//! temporary sibling, synced, and renamed into place only when complete ([`crate::io::atomic`]);
//! on any error (a full disk included) the temporary file is removed and nothing is left behind.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::reader::{Value, DEFAULT_ALIGNMENT};
use crate::error::WriteError;

/// One tensor to write. `dims` are ggml's `ne` (fastest first: a PyTorch `[rows, cols]` matrix is
/// `[cols, rows]`); `n_bytes` is its encoded size in `ggml_type`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub n_bytes: u64,
}

/// Everything but the tensor data.
#[derive(Debug, Clone, Default)]
pub struct GgufLayout {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

fn pad(n: u64) -> u64 {
    n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - n
}

/// gguf-py's `GGUFValueType` id of a value.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The value's bytes without its type tag. Array elements take the first element's type (GGUF
/// arrays are homogeneous); an empty array is written as an empty UINT32 array.
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend(x.to_le_bytes()),
        Value::I8(x) => out.extend(x.to_le_bytes()),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            let elem = items.first().map(type_id).unwrap_or(4);
            out.extend(elem.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl GgufLayout {
    /// Offsets of each tensor relative to the data section, each aligned.
    pub fn offsets(&self) -> Vec<u64> {
        let mut offset = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let here = offset;
                offset += t.n_bytes + pad(t.n_bytes);
                here
            })
            .collect()
    }

    /// Header, metadata and tensor infos, padded to the start of the data section.
    pub fn header(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend(type_id(value).to_le_bytes());
            put_value(&mut out, value);
        }
        for (t, offset) in self.tensors.iter().zip(self.offsets()) {
            put_string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.to_le_bytes());
            out.extend(offset.to_le_bytes());
        }
        let padding = pad(out.len() as u64) as usize;
        out.resize(out.len() + padding, 0);
        out
    }

    /// Total file size.
    pub fn file_size(&self) -> u64 {
        let data: u64 = self
            .tensors
            .iter()
            .map(|t| t.n_bytes + pad(t.n_bytes))
            .sum();
        self.header().len() as u64 + data
    }
}

/// Why a streamed write stopped: the file system, or the producer of a tensor.
#[derive(Debug)]
pub enum StreamError<E> {
    Io(WriteError),
    Produce(E),
}

/// Writes `layout` to `path` atomically. `produce(i, out)` must write exactly
/// `layout.tensors[i].n_bytes` bytes (checked); padding is added here.
pub fn write_gguf<E>(
    path: &Path,
    layout: &GgufLayout,
    mut produce: impl FnMut(usize, &mut dyn Write) -> Result<(), E>,
) -> Result<(), StreamError<E>> {
    let tmp = crate::io::atomic::temp_path(path);
    let mut failure = None;
    let result = (|| -> io::Result<()> {
        let mut file = Counting {
            inner: BufWriter::with_capacity(1 << 20, File::create(&tmp)?),
            written: 0,
        };
        file.write_all(&layout.header())?;
        for (i, t) in layout.tensors.iter().enumerate() {
            let start = file.written;
            if let Err(e) = produce(i, &mut file) {
                failure = Some(e);
                return Err(io::Error::other("tensor producer failed"));
            }
            let n = file.written - start;
            if n != t.n_bytes {
                return Err(io::Error::other(format!(
                    "tensor `{}`: {n} bytes produced, {} expected",
                    t.name, t.n_bytes
                )));
            }
            file.write_all(&vec![0u8; pad(n) as usize])?;
        }
        let inner = file.inner.into_inner().map_err(|e| e.into_error())?;
        inner.sync_all()
    })();
    let finished = crate::io::atomic::finish(&tmp, path, result);
    match (failure, finished) {
        (Some(e), _) => Err(StreamError::Produce(e)),
        (None, Err(e)) => Err(StreamError::Io(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// A writer that counts the bytes through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::Gguf;

    fn layout() -> GgufLayout {
        GgufLayout {
            metadata: vec![
                ("general.architecture".into(), Value::String("llama".into())),
                ("llama.block_count".into(), Value::U32(2)),
                ("x.f".into(), Value::F32(0.5)),
                ("x.b".into(), Value::Bool(true)),
                (
                    "x.tokens".into(),
                    Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
                ),
                ("x.empty".into(), Value::Array(vec![])),
            ],
            tensors: vec![
                TensorSpec {
                    name: "a".into(),
                    dims: vec![3],
                    ggml_type: 0,
                    n_bytes: 12,
                },
                TensorSpec {
                    name: "b".into(),
                    dims: vec![2, 2],
                    ggml_type: 1,
                    n_bytes: 8,
                },
            ],
        }
    }

    #[test]
    fn a_written_file_is_parsed_back_with_its_metadata_and_aligned_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let l = layout();
        write_gguf::<()>(&path, &l, |i, out| {
            out.write_all(&vec![i as u8 + 1; l.tensors[i].n_bytes as usize])
                .map_err(|_| ())
        })
        .map_err(|_| "write failed")
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, l.file_size());
        let g = Gguf::parse(&path, &bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata, l.metadata);
        assert_eq!(g.tensors[1].offset, 32);
        assert_eq!(g.data_offset % 32, 0);
        let b = g.tensor_data(&bytes, &g.tensors[1], 8).unwrap();
        assert_eq!(b, &[2u8; 8]);
    }

    #[test]
    fn a_failing_producer_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let r = write_gguf(
            &path,
            &layout(),
            |i, _| if i == 1 { Err("boom") } else { Ok(()) },
        );
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_producer_writing_the_wrong_size_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let r = write_gguf::<()>(&path, &layout(), |_, out| {
            out.write_all(&[0u8; 4]).map_err(|_| ())
        });
        assert!(matches!(r, Err(StreamError::Io(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
