//! A GGUF file as a frozen base, read in place (`--model file.gguf`, issue 17 item 3): its
//! quantized linear weights (Q8_0, Q4_0, Q4_1, Q2_K…Q6_K) stay in their blocks as
//! [`QMatrix`]es, decoded tile by tile in each product (`kernels::quant_linear`), never widened
//! to f32 as a whole; embeddings, norms and any F32/F16/BF16 tensor are dequantized as
//! `peft convert gguf` does. The config and tokenizer come from the file's metadata, written once
//! into a small folder beside the cache ([`prepare_folder`]) so every command finds them where a
//! Hugging Face folder keeps them; that folder holds no weights, only a marker naming the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::Dtype;

use super::convert::{convert_tensor, map_file, plan_tensors, Plan};
use super::dequant::GgmlType;
use super::folder::metadata_files;
use super::names::Rows;
use super::params::ModelParams;
use super::reader::Gguf;
use crate::error::GgufError;
use crate::quant::QMatrix;

/// The marker file of a prepared folder: `{"gguf": "<absolute path of the file>"}`.
pub const MARKER: &str = "gguf_base.json";

/// One planned tensor, by index into `Gguf::tensors`.
struct Entry {
    index: usize,
    rows: Rows,
    ty: GgmlType,
    n_bytes: u64,
}

/// An open GGUF file with every tensor checked (names, types, shapes, extents) up front.
pub struct GgufBase {
    map: Mmap,
    /// The same file, for reading the quantized blocks without touching the map.
    file: File,
    gguf: Gguf,
    params: ModelParams,
    entries: BTreeMap<String, Entry>,
}

impl GgufBase {
    pub fn open(file: &Path) -> Result<Self, GgufError> {
        let map = map_file(file)?;
        let handle = File::open(file).map_err(|cause| GgufError::Io {
            path: file.to_path_buf(),
            cause,
        })?;
        let gguf = Gguf::parse(file, &map)?;
        let params = ModelParams::from_gguf(&gguf, file)?;
        let entries = {
            let plans = plan_tensors(&gguf, &map, &params)?;
            plans
                .iter()
                .map(|p| {
                    let index = gguf
                        .tensors
                        .iter()
                        .position(|t| std::ptr::eq(t, p.info))
                        .unwrap_or_default();
                    let entry = Entry {
                        index,
                        rows: p.rows,
                        ty: p.ty,
                        n_bytes: p.n_bytes,
                    };
                    (p.key.clone(), entry)
                })
                .collect()
        };
        Ok(Self {
            map,
            file: handle,
            gguf,
            params,
            entries,
        })
    }

    /// The architecture the file was read as.
    pub fn params(&self) -> &ModelParams {
        &self.params
    }

    pub fn path(&self) -> &Path {
        &self.gguf.path
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The transformers keys present.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn plan<'a>(&'a self, key: &str, e: &Entry) -> Plan<'a> {
        Plan {
            info: &self.gguf.tensors[e.index],
            key: key.to_string(),
            rows: e.rows,
            ty: e.ty,
            n_bytes: e.n_bytes,
        }
    }

    /// Tensor `key` in f32, transformers layout (q/k rows un-permuted), as `peft convert gguf`
    /// writes it; `None` when absent.
    pub fn read_f32(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let Some(e) = self.entries.get(key) else {
            return Ok(None);
        };
        let t = convert_tensor(
            &self.gguf,
            &self.map,
            &self.plan(key, e),
            &self.params,
            Dtype::F32,
        )?;
        Ok(Some(
            t.bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    /// Tensor `key` as its own blocks, `[out, in]`, when it is block-quantized (`None` for an
    /// F32/F16/BF16 or absent tensor, which [`Self::read_f32`] reads). Blocks never straddle
    /// rows, so llama.cpp's q/k row permutation is undone on whole rows of bytes.
    pub fn quantized(&self, key: &str) -> Result<Option<QMatrix>, GgufError> {
        let Some(e) = self.entries.get(key) else {
            return Ok(None);
        };
        if matches!(e.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return Ok(None);
        }
        let info = &self.gguf.tensors[e.index];
        let bad = |message: String| GgufError::BadTensor {
            path: self.gguf.path.clone(),
            tensor: info.name.clone(),
            message,
        };
        let shape = info.torch_shape();
        let [rows, cols] = shape[..] else {
            return Err(bad(format!("expected a matrix, found shape {shape:?}")));
        };
        // Bounds-checked against the map, but read with `pread`: pages touched through the map
        // would stay in the process's RSS beside the copy (a 7B q4_0 file counted twice, 7.6 GiB
        // against 4.4 GiB), pages read into a buffer do not (as `merge::stream` reads).
        let extent = self.gguf.tensor_data(&self.map, info, e.n_bytes)?.len();
        let mut owned = vec![0u8; extent];
        let offset = self.gguf.data_offset.saturating_add(info.offset);
        self.file
            .read_exact_at(&mut owned, offset)
            .map_err(|cause| GgufError::Io {
                path: self.gguf.path.clone(),
                cause,
            })?;
        let data = match self.params.heads(e.rows).map(|h| h as usize) {
            None => owned,
            Some(heads) => unpermute_byte_rows(&owned, rows, heads).ok_or_else(|| {
                bad(format!(
                    "{rows} rows do not split into {heads} heads of pairs"
                ))
            })?,
        };
        QMatrix::from_ggml(e.ty, data, rows, cols)
            .map(Some)
            .ok_or_else(|| bad("rows are not whole blocks".into()))
    }
}

/// The (bytes, values) of `file`'s block-quantized matrices, summed: what the frozen projections
/// of `--model file.gguf` hold in memory per weight (`None` when none is block-quantized). Reads
/// the header and tensor table only.
pub fn block_density(file: &Path) -> Result<Option<(u64, u64)>, GgufError> {
    let base = GgufBase::open(file)?;
    let (mut bytes, mut values) = (0u64, 0u64);
    for e in base.entries.values() {
        let info = &base.gguf.tensors[e.index];
        if matches!(e.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || info.dims.len() != 2 {
            continue;
        }
        bytes = bytes.saturating_add(e.n_bytes);
        values = values.saturating_add(info.n_elements().unwrap_or(0));
    }
    Ok((values > 0).then_some((bytes, values)))
}

/// `names::unpermute_rows` on rows of bytes (each row a whole number of blocks).
fn unpermute_byte_rows(data: &[u8], rows: usize, heads: usize) -> Option<Vec<u8>> {
    if heads == 0 || rows == 0 || rows % (2 * heads) != 0 || data.len() % rows != 0 {
        return None;
    }
    let row = data.len() / rows;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = (h * half + i) * 2 + j;
                out.extend_from_slice(&data[src * row..(src + 1) * row]);
            }
        }
    }
    Some(out)
}

/// Whether `path` names a GGUF file (by its magic, so any file name works).
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// The folder holding `file`'s config and tokenizer: `<temp>/peft-gguf/<stem>-<size>-<mtime>`,
/// written on first use (the marker last, so a folder cut short is rebuilt).
pub fn prepare_folder(file: &Path) -> Result<PathBuf, GgufError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| GgufError::Io { path, cause }
    };
    let abs = std::fs::canonicalize(file).map_err(io(file))?;
    let meta = std::fs::metadata(&abs).map_err(io(&abs))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dir = std::env::temp_dir()
        .join("peft-gguf")
        .join(format!("{stem}-{}-{mtime}", meta.len()));
    if dir.join(MARKER).is_file() {
        return Ok(dir);
    }
    let map = map_file(&abs)?;
    let gguf = Gguf::parse(&abs, &map)?;
    let params = ModelParams::from_gguf(&gguf, &abs)?;
    let marker = serde_json::json!({ "gguf": abs.to_string_lossy() });
    let mut files = metadata_files(&gguf, &params, "float32")?.files;
    files.push((
        MARKER,
        serde_json::to_vec_pretty(&marker).unwrap_or_default(),
    ));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        crate::io::atomic::write_atomic(&path, &bytes).map_err(|e| GgufError::Io {
            path: path.clone(),
            cause: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(dir)
}

/// The GGUF file a prepared folder stands for, if `dir` is one.
pub fn marked_file(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("gguf")?.as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rows_unpermute_as_the_f32_rows_do() {
        let (rows, cols, heads) = (8, 3, 2);
        let w: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let want = super::super::names::unpermute_rows(&w, rows, cols, heads).unwrap();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let got = unpermute_byte_rows(&bytes, rows, heads).unwrap();
        let got: Vec<f32> = got
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, want);
    }
}
