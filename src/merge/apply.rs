//! Producing one output tensor: copied in chunks when nothing changes, converted in chunks when
//! only the dtype changes, and widened to f32, patched and narrowed when an adapter touches it.

use std::io::Write;

use safetensors::Dtype;

use crate::error::MergeError;
use crate::io::dtype;
use crate::merge::adapter::Adapter;
use crate::merge::delta::{self, LowRank};
use crate::merge::layout::OutTensor;
use crate::merge::patches::{Fold, Patch};
use crate::merge::plan::MergePlan;
use crate::merge::stream::Reader;

/// Bytes copied per read for unchanged tensors (a multiple of every element size).
const CHUNK: usize = 16 << 20;

fn not_float(plan: &MergePlan, t: &OutTensor, dtype: Dtype) -> MergeError {
    let file = plan
        .base
        .get(&t.source)
        .map(|e| plan.base.shard_path(e).to_path_buf())
        .unwrap_or_default();
    MergeError::NotFloat {
        file,
        tensor: t.source.clone(),
        dtype: format!("{dtype:?}"),
    }
}

/// Writes the bytes of `t` to `out`.
pub fn write_tensor(
    plan: &MergePlan,
    reader: &mut Reader,
    t: &OutTensor,
    out: &mut dyn Write,
) -> Result<(), MergeError> {
    let entry = plan
        .base
        .get(&t.source)
        .ok_or_else(|| crate::error::LoadError::MissingTensor {
            tensor: t.source.clone(),
        })?;
    let path = plan.base.shard_path(entry).to_path_buf();
    let io = |source| MergeError::Io {
        path: plan.options.out.clone(),
        source,
    };
    if let Some(patches) = plan.patches.get(&t.name) {
        let mut raw = vec![0u8; entry.range.len()];
        reader.read(&path, entry.range.start, &mut raw)?;
        let mut values =
            dtype::to_f32(entry.dtype, &raw).ok_or_else(|| not_float(plan, t, entry.dtype))?;
        drop(raw);
        for patch in patches {
            apply_patch(
                &plan.adapters[patch.adapter],
                patch,
                &mut values,
                &entry.shape,
                plan.options.scale,
            )?;
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(MergeError::NonFinite {
                tensor: t.name.clone(),
                dtype: None,
            });
        }
        let bytes = dtype::from_f32(t.dtype, &values).ok_or_else(|| not_float(plan, t, t.dtype))?;
        finite_as_written(t, &bytes)?;
        return out.write_all(&bytes).map_err(io);
    }
    let elem = entry.dtype.bitsize() / 8;
    let chunk = CHUNK / elem.max(1) * elem.max(1);
    let mut buf = vec![0u8; chunk.min(entry.range.len())];
    let mut pos = entry.range.start;
    while pos < entry.range.end {
        let n = chunk.min(entry.range.end - pos);
        reader.read(&path, pos, &mut buf[..n])?;
        if t.dtype == entry.dtype {
            out.write_all(&buf[..n]).map_err(io)?;
        } else {
            let values = dtype::to_f32(entry.dtype, &buf[..n])
                .ok_or_else(|| not_float(plan, t, entry.dtype))?;
            let bytes =
                dtype::from_f32(t.dtype, &values).ok_or_else(|| not_float(plan, t, t.dtype))?;
            finite_as_written(t, &bytes)?;
            out.write_all(&bytes).map_err(io)?;
        }
        pos += n;
    }
    Ok(())
}

/// The finiteness check runs on the bytes as written: f32 values finite before a cast to f16 can
/// overflow to infinity in it (65504 is f16's largest).
fn finite_as_written(t: &OutTensor, bytes: &[u8]) -> Result<(), MergeError> {
    if dtype::all_finite(t.dtype, bytes) {
        return Ok(());
    }
    Err(MergeError::NonFinite {
        tensor: t.name.clone(),
        dtype: Some(format!("{:?}", t.dtype)),
    })
}

/// Applies one fold to `w` (shape [out, in], or [out] for a bias), weighted by `strength`.
/// Public for `peft export gguf`, which folds adapters on its way to a GGUF.
pub fn apply_patch(
    adapter: &Adapter,
    patch: &Patch,
    w: &mut [f32],
    shape: &[usize],
    strength: f32,
) -> Result<(), MergeError> {
    let cols = shape.get(1).copied().unwrap_or(1);
    match &patch.fold {
        Fold::LowRank { a, b, s } => {
            let (a, b) = (adapter.read(a)?, adapter.read(b)?);
            let r = a.len() / cols;
            delta::add_low_rank(
                w,
                cols,
                &LowRank {
                    a: &a,
                    b: &b,
                    r,
                    s: s * strength,
                },
            );
        }
        Fold::AdaLora { a, b, e, s } => {
            let (a, b, e) = (adapter.read(a)?, adapter.read(b)?, adapter.read(e)?);
            let ae = delta::fold_singular_values(&a, &e, cols);
            delta::add_low_rank(
                w,
                cols,
                &LowRank {
                    a: &ae,
                    b: &b,
                    r: e.len(),
                    s: s * strength,
                },
            );
        }
        Fold::Dora { a, b, magnitude, s } => {
            let (a, b, m) = (adapter.read(a)?, adapter.read(b)?, adapter.read(magnitude)?);
            let r = a.len() / cols;
            delta::dora(
                w,
                cols,
                &LowRank {
                    a: &a,
                    b: &b,
                    r,
                    s: *s,
                },
                &m,
                strength,
            );
        }
        Fold::Embedding { a, b, s } => {
            let (a, b) = (adapter.read(a)?, adapter.read(b)?);
            let r = b.len() / cols;
            delta::add_embedding_low_rank(
                w,
                cols,
                &LowRank {
                    a: &a,
                    b: &b,
                    r,
                    s: s * strength,
                },
            );
        }
        Fold::Ia3 { l, feedforward } => {
            delta::ia3(w, cols, &adapter.read(l)?, *feedforward, strength)
        }
        Fold::Ia3Bias { l } => delta::ia3_bias(w, &adapter.read(l)?, strength),
    }
    Ok(())
}
