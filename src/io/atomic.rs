//! Atomic writes: every output is written to a temporary sibling, synced, then renamed into place,
//! so a crash or a full disk never leaves a half-written file behind.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};

use crate::error::WriteError;

/// A tensor held in memory in its on-disk byte layout (little endian).
#[derive(Debug, Clone)]
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    /// An f32 tensor from host values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            dtype: Dtype::F32,
            shape,
            bytes,
        }
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The temporary sibling used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn io_err(path: &Path, source: std::io::Error) -> WriteError {
    WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    finish(&tmp, path, result)
}

/// Writes a safetensors file atomically with `format: pt` metadata (transformers and PEFT reject
/// any other format tag).
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, OwnedTensor)],
    extra_metadata: Option<HashMap<String, String>>,
) -> Result<(), WriteError> {
    // Every written tensor is finite in the dtype it is written in (a NaN adapter written with
    // exit 0 is a silent failure).
    if let Some((name, t)) = tensors
        .iter()
        .find(|(_, t)| !crate::io::dtype::all_finite(t.dtype, &t.bytes))
    {
        return Err(WriteError::NonFinite {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: format!("{:?}", t.dtype),
        });
    }
    let mut metadata = extra_metadata.unwrap_or_default();
    metadata.insert("format".into(), "pt".into());
    let tmp = temp_path(path);
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    let result = safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|_| File::open(&tmp)?.sync_all());
    finish(&tmp, path, result)
}

/// Makes the file world-readable (like `cp` or torch's writer under the usual umask), as the
/// safetensors writer creates it private.
fn readable(tmp: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Renames `tmp` into place on success; removes it on failure.
pub fn finish(tmp: &Path, path: &Path, result: std::io::Result<()>) -> Result<(), WriteError> {
    match result
        .and_then(|_| readable(tmp))
        .and_then(|_| fs::rename(tmp, path))
    {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(tmp);
            Err(io_err(path, e))
        }
    }
}
