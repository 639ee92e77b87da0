//! A safetensors checkpoint: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json` (`weight_map: {tensor: file}`), each memory-mapped. Headers are
//! parsed and validated up front (the `safetensors` crate rejects absurd header lengths, offsets
//! outside the file and truncated data), so later reads cannot run past the file.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::LoadError;
use crate::io::dtype;

/// `pytorch_model.bin`, its index, or shards such as ChatGLM's `pytorch_model-00001-of-00007.bin`.
fn has_pickle_weights(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("pytorch_model")
            && (name.ends_with(".bin") || name.ends_with(".bin.index.json"))
    })
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into the checkpoint's shard list.
    pub shard: usize,
    /// Byte range inside the shard's memory map.
    pub range: std::ops::Range<usize>,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    metadata: Option<HashMap<String, String>>,
}

/// A memory-mapped checkpoint; reading a tensor copies only that tensor.
pub struct Checkpoint {
    shards: Vec<Shard>,
    entries: BTreeMap<String, TensorEntry>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl Checkpoint {
    /// A checkpoint holding no tensors (a GGUF base is read by `gguf::base` instead).
    pub fn empty() -> Self {
        Self {
            shards: Vec::new(),
            entries: BTreeMap::new(),
        }
    }

    /// Opens the checkpoint in a model folder: the index if present, else `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self, LoadError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        if has_pickle_weights(dir) {
            return Err(LoadError::PickleCheckpoint {
                dir: dir.to_path_buf(),
            });
        }
        Err(LoadError::MissingFile {
            path: single,
            what: "model weights (model.safetensors or its index)",
        })
    }

    /// Opens the shards named by a `model.safetensors.index.json`, checking that each tensor is
    /// where the index says it is.
    pub fn open_index(index_path: &Path) -> Result<Self, LoadError> {
        let index: Index = crate::io::json::read_json(index_path)?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = index.weight_map.values().cloned().collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for path in &paths {
            if !path.is_file() {
                return Err(LoadError::MissingFile {
                    path: path.clone(),
                    what: "a shard named in the index",
                });
            }
        }
        let checkpoint = Self::open_files(&paths)?;
        for (tensor, file) in &index.weight_map {
            let Some(entry) = checkpoint.entries.get(tensor) else {
                return Err(LoadError::IndexMismatch {
                    index: index_path.to_path_buf(),
                    tensor: tensor.clone(),
                    file: file.clone(),
                });
            };
            if checkpoint.shards[entry.shard].path != dir.join(file) {
                return Err(LoadError::IndexMismatch {
                    index: index_path.to_path_buf(),
                    tensor: tensor.clone(),
                    file: file.clone(),
                });
            }
        }
        Ok(checkpoint)
    }

    /// Opens one or more safetensors files as one checkpoint.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self, LoadError> {
        let mut shards = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; a file changed underneath us is the user's race, as in
            // every mmap-based loader (safetensors, transformers).
            let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| LoadError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let base = 8 + header_len;
            collect_entries(&metadata, i, base, &mut entries, path)?;
            shards.push(Shard {
                path: path.clone(),
                metadata: metadata.metadata().clone(),
                map,
            });
        }
        Ok(Self { shards, entries })
    }

    pub fn entries(&self) -> impl Iterator<Item = &TensorEntry> {
        self.entries.values()
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// The `__metadata__` of the first shard.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.shards.first().and_then(|s| s.metadata.as_ref())
    }

    /// Raw bytes of a tensor, borrowed from the memory map.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.shards[entry.shard].map[entry.range.clone()]
    }

    pub fn shard_path(&self, entry: &TensorEntry) -> &Path {
        &self.shards[entry.shard].path
    }

    /// Reads a float tensor as f32 values with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name.to_string(),
            })?;
        let values = dtype::to_f32(entry.dtype, self.bytes(entry)).ok_or_else(|| {
            LoadError::UnsupportedDtype {
                path: self.shard_path(entry).to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{:?}", entry.dtype),
            }
        })?;
        self.release(entry);
        Ok((values, entry.shape.clone()))
    }

    /// Drops the mapped pages of a tensor already copied out, so that loading a model keeps
    /// about one copy of it resident (the decoded tensors), not two (they plus the file pages).
    /// The pages stay in the page cache; touching them again re-reads them.
    fn release(&self, entry: &TensorEntry) {
        #[cfg(unix)]
        {
            let map = &self.shards[entry.shard].map;
            // SAFETY: a read-only, file-backed mapping: MADV_DONTNEED only drops our page-table
            // entries and later reads fault the same file contents back in; no borrowed slice can
            // observe different bytes. memmap2 aligns the range to pages.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    entry.range.start,
                    entry.range.len(),
                )
            };
        }
    }

    /// Reads a float tensor and checks its shape.
    pub fn read_f32_shaped(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (values, shape) = self.read_f32(name)?;
        if shape != expected {
            return Err(LoadError::ShapeMismatch {
                tensor: name.to_string(),
                expected: expected.to_vec(),
                actual: shape,
            });
        }
        Ok(values)
    }

    /// Reads an integer tensor (I64 or I32) as i64 values with its shape.
    pub fn read_i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>), LoadError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name.to_string(),
            })?;
        let values = dtype::to_i64(entry.dtype, self.bytes(entry)).ok_or_else(|| {
            LoadError::UnsupportedDtype {
                path: self.shard_path(entry).to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{:?}", entry.dtype),
            }
        })?;
        Ok((values, entry.shape.clone()))
    }
}

fn collect_entries(
    metadata: &Metadata,
    shard: usize,
    base: usize,
    entries: &mut BTreeMap<String, TensorEntry>,
    path: &Path,
) -> Result<(), LoadError> {
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let entry = TensorEntry {
            name: name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            shard,
            range: base + start..base + end,
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(LoadError::DuplicateTensor {
                path: path.to_path_buf(),
                tensor: name,
            });
        }
    }
    Ok(())
}
