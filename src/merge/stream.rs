//! Streaming safetensors output: the header is computed from shapes alone, then tensors are
//! written one at a time, so no more than one tensor (and, for unchanged tensors, one chunk) is in
//! memory. Input bytes are read with `pread` rather than through the memory map: pages touched
//! through a map count in the process's RSS until unmapped, pages read into a buffer do not.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::MergeError;
use crate::merge::layout::OutShard;

/// Where output files go. The default writes files; tests substitute one that fails on demand.
pub trait Sink {
    fn create(&mut self, path: &Path) -> io::Result<Box<dyn OutFile>>;
}

/// A file being written; `finish` makes it durable (fsync).
pub trait OutFile: Write {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

impl OutFile for BufWriter<File> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let file = (*self).into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

/// Writes plain files.
pub struct FileSink;

impl Sink for FileSink {
    fn create(&mut self, path: &Path) -> io::Result<Box<dyn OutFile>> {
        Ok(Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(path)?,
        )))
    }
}

/// The safetensors header of a shard: `{name: {dtype, shape, data_offsets}, __metadata__}`,
/// padded with spaces to a multiple of 8 bytes as the reference writer does.
pub fn header(shard: &OutShard) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in &shard.tensors {
        let end = offset + t.byte_len();
        let dtype = serde_json::to_value(t.dtype).unwrap_or(Value::Null);
        map.insert(
            t.name.clone(),
            json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend(bytes);
    out
}

/// Reads byte ranges of input shards with `pread`, keeping one open handle per shard.
#[derive(Default)]
pub struct Reader {
    files: HashMap<PathBuf, File>,
}

impl Reader {
    pub fn read(&mut self, path: &Path, offset: usize, buf: &mut [u8]) -> Result<(), MergeError> {
        let err = |source| MergeError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !self.files.contains_key(path) {
            self.files
                .insert(path.to_path_buf(), File::open(path).map_err(err)?);
        }
        match self.files.get(path) {
            Some(f) => f.read_exact_at(buf, offset as u64).map_err(err),
            None => Ok(()),
        }
    }
}

/// Writes one shard to `path`: the header, then each tensor's bytes from `write_tensor`, which
/// must write exactly `byte_len()` bytes.
pub fn write_shard(
    sink: &mut dyn Sink,
    path: &Path,
    shard: &OutShard,
    mut write_tensor: impl FnMut(usize, &mut dyn Write) -> Result<(), MergeError>,
) -> Result<(), MergeError> {
    let err = |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = sink.create(path).map_err(err)?;
    file.write_all(&header(shard)).map_err(err)?;
    for i in 0..shard.tensors.len() {
        write_tensor(i, &mut *file)?;
    }
    file.finish().map_err(err)
}

/// Writes `bytes` to a new file through the sink.
pub fn write_file(sink: &mut dyn Sink, path: &Path, bytes: &[u8]) -> Result<(), MergeError> {
    let err = |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = sink.create(path).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.finish().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::layout::OutTensor;
    use safetensors::Dtype;

    #[test]
    fn a_streamed_shard_is_read_back_by_the_reference_parser() {
        let shard = OutShard {
            file: "x.safetensors".into(),
            tensors: vec![
                OutTensor {
                    name: "b".into(),
                    source: "b".into(),
                    dtype: Dtype::BF16,
                    shape: vec![3],
                },
                OutTensor {
                    name: "a".into(),
                    source: "a".into(),
                    dtype: Dtype::F32,
                    shape: vec![0, 4],
                },
            ],
        };
        let mut bytes = header(&shard);
        assert_eq!(bytes.len() % 8, 0);
        bytes.extend([1u8, 0, 2, 0, 3, 0]);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &[1, 0, 2, 0, 3, 0]);
        assert_eq!(st.tensor("a").unwrap().shape(), &[0, 4]);
    }
}
