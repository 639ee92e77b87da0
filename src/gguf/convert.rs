//! The whole GGUF → Hugging Face conversion. Every tensor is mapped and checked (name, type,
//! shape, extent) before anything is written; the folder is then written under a temporary
//! sibling name and renamed into place at the end, so a bad file, an unknown architecture or an
//! unsupported tensor type writes nothing. `model.safetensors` is streamed: its header comes from
//! the planned shapes, then each tensor is dequantized, encoded and written in turn, so at most
//! one tensor is held in f32 (a 7B GGUF converts in about the memory of its embedding, not 28 GB).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::Dtype;

use super::config::LlamaParams;
use super::dequant::{dequantize, type_name, GgmlType};
use super::folder::metadata_files;
use super::names::{unpermute_rows, Rows};
use super::params::ModelParams;
use super::reader::{Gguf, TensorInfo};
use crate::error::{GgufError, WriteError};
use crate::io::atomic::{write_atomic, OwnedTensor};
use crate::io::dtype::from_f32;
use crate::merge::layout::{OutShard, OutTensor};
use crate::merge::stream;

/// Options of `peft convert gguf`.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// dtype of `model.safetensors`: F32 (exact), BF16 or F16.
    pub dtype: Dtype,
    /// Replace an existing, non-empty output folder.
    pub force: bool,
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub out: PathBuf,
    pub architecture: String,
    pub tensors: usize,
    pub parameters: u64,
    /// ggml type name → tensor count, as found in the file.
    pub source_types: BTreeMap<String, usize>,
    /// `tokenizer.ggml.model/tokenizer.ggml.pre`.
    pub tokenizer: String,
}

/// One tensor, checked: its key, row handling, type and byte size.
pub(super) struct Plan<'a> {
    pub(super) info: &'a TensorInfo,
    pub(super) key: String,
    pub(super) rows: Rows,
    pub(super) ty: GgmlType,
    pub(super) n_bytes: u64,
}

/// Converts the GGUF file `file` into a Hugging Face model folder `out`.
pub fn convert_gguf(
    file: &Path,
    out: &Path,
    opts: ConvertOptions,
) -> Result<ConvertReport, GgufError> {
    // `--force` replaces the output folder: never one that holds (or is inside) the input.
    crate::io::paths::check_out_against_inputs(out, &[("GGUF file", file)])?;
    check_output(out, opts.force)?;
    let map = map_file(file)?;
    let gguf = Gguf::parse(file, &map)?;
    let params = ModelParams::from_gguf(&gguf, file)?;
    let architecture = params.architecture().to_string();
    let folder = metadata_files(&gguf, &params, dtype_label(opts.dtype))?;
    let plans = plan_tensors(&gguf, &map, &params)?;
    let mut source_types = BTreeMap::new();
    let mut parameters = 0u64;
    for plan in &plans {
        *source_types
            .entry(type_name(plan.info.ggml_type))
            .or_insert(0) += 1;
        parameters += plan.info.torch_shape().iter().product::<usize>() as u64;
    }
    let tensors = Tensors {
        gguf: &gguf,
        bytes: &map,
        plans: &plans,
        params: &params,
        dtype: opts.dtype,
    };
    write_folder(out, &folder.files, &tensors)?;
    let report = ConvertReport {
        out: out.to_path_buf(),
        architecture,
        tensors: plans.len(),
        parameters,
        source_types,
        tokenizer: folder.tokenizer,
    };
    Ok(report)
}

/// The planned tensors of one file, converted one at a time as `model.safetensors` is written.
struct Tensors<'a> {
    gguf: &'a Gguf,
    bytes: &'a [u8],
    plans: &'a [Plan<'a>],
    params: &'a ModelParams,
    dtype: Dtype,
}

impl Tensors<'_> {
    /// The safetensors layout: every tensor's name, output dtype and transformers shape.
    fn layout(&self) -> OutShard {
        let tensors = self
            .plans
            .iter()
            .map(|plan| OutTensor {
                name: plan.key.clone(),
                source: plan.info.name.clone(),
                dtype: self.dtype,
                shape: plan.info.torch_shape(),
            })
            .collect();
        OutShard {
            file: "model.safetensors".into(),
            tensors,
        }
    }

    /// Writes the header, then each tensor in the header's order; every tensor must come out with
    /// the planned byte length and finite in the output dtype (as `write_safetensors_atomic`
    /// checks for in-memory tensors), else nothing is kept.
    fn write(&self, path: &Path) -> Result<(), GgufError> {
        let io = |cause| GgufError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let layout = self.layout();
        let mut file = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
        file.write_all(&stream::header(&layout)).map_err(io)?;
        for (plan, planned) in self.plans.iter().zip(&layout.tensors) {
            let tensor = convert_tensor(self.gguf, self.bytes, plan, self.params, self.dtype)?;
            if tensor.bytes.len() as u64 != planned.byte_len() {
                return Err(GgufError::BadTensor {
                    path: self.gguf.path.clone(),
                    tensor: plan.info.name.clone(),
                    message: format!(
                        "converted to {} bytes, expected {}",
                        tensor.bytes.len(),
                        planned.byte_len()
                    ),
                });
            }
            if !crate::io::dtype::all_finite(tensor.dtype, &tensor.bytes) {
                return Err(WriteError::NonFinite {
                    path: path.to_path_buf(),
                    tensor: plan.key.clone(),
                    dtype: format!("{:?}", tensor.dtype),
                }
                .into());
            }
            file.write_all(&tensor.bytes).map_err(io)?;
        }
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }
}

fn dtype_label(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    }
}

pub(super) fn map_file(file: &Path) -> Result<Mmap, GgufError> {
    let io = |cause| GgufError::Io {
        path: file.to_path_buf(),
        cause,
    };
    let handle = File::open(file).map_err(io)?;
    // SAFETY: the map is read-only and lives only for this conversion; as with any memory-mapped
    // input, a concurrent truncation of the file by another process is outside our control.
    unsafe { Mmap::map(&handle) }.map_err(io)
}

/// Refuses a non-empty existing output unless `force`, before any work is done.
fn check_output(out: &Path, force: bool) -> Result<(), GgufError> {
    let occupied = match fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => out.exists(),
    };
    if occupied && !force {
        return Err(GgufError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

/// Maps every tensor to its key and checks its type, shape and extent against the parameters and
/// the file (`bytes`), before anything is dequantized.
pub(super) fn plan_tensors<'a>(
    gguf: &'a Gguf,
    bytes: &[u8],
    params: &ModelParams,
) -> Result<Vec<Plan<'a>>, GgufError> {
    let bad = |info: &TensorInfo, message: String| GgufError::BadTensor {
        path: gguf.path.clone(),
        tensor: info.name.clone(),
        message,
    };
    let mut expected = params.expected_shapes();
    let mut plans = Vec::with_capacity(gguf.tensors.len());
    for info in &gguf.tensors {
        let (key, rows) =
            params
                .hf_name(&info.name)
                .ok_or_else(|| match params.unknown_reason(&info.name) {
                    Some(why) => bad(info, why.to_string()),
                    None => GgufError::UnknownTensor {
                        path: gguf.path.clone(),
                        tensor: info.name.clone(),
                    },
                })?;
        let ty =
            GgmlType::from_id(info.ggml_type).ok_or_else(|| GgufError::UnsupportedTensorType {
                path: gguf.path.clone(),
                tensor: info.name.clone(),
                type_name: type_name(info.ggml_type),
            })?;
        let n = info
            .n_elements()
            .ok_or_else(|| bad(info, format!("dimensions {:?} overflow", info.dims)))?;
        // Blocks never straddle rows: gguf.cpp refuses `ne[0] % block_size != 0`, and so do we
        // (a 32-wide row cannot hold a 256-value k-quant super-block).
        let (block, _) = ty.block();
        let row = info.dims.first().copied().unwrap_or(0);
        if row % block as u64 != 0 {
            return Err(bad(
                info,
                format!(
                    "rows of {row} elements are not whole {} blocks of {block}",
                    type_name(info.ggml_type)
                ),
            ));
        }
        let n_bytes = ty.n_bytes(n).ok_or_else(|| {
            bad(
                info,
                format!(
                    "{n} elements are not whole {} blocks",
                    type_name(info.ggml_type)
                ),
            )
        })?;
        gguf.tensor_data(bytes, info, n_bytes)?;
        // Each expected key is taken once: a second tensor with the same key is caught here too.
        let shape = expected.remove(&key).ok_or_else(|| {
            bad(
                info,
                format!(
                    "`{key}` is unexpected, twice present, or beyond {} layers",
                    params.layers()
                ),
            )
        })?;
        let found: Vec<u64> = info.dims.iter().rev().copied().collect();
        if found != shape {
            return Err(bad(
                info,
                format!("shape {found:?} (as [out, in]), expected {shape:?} for `{key}`"),
            ));
        }
        plans.push(Plan {
            info,
            key,
            rows,
            ty,
            n_bytes,
        });
    }
    if !expected.is_empty() {
        return Err(GgufError::MissingTensors {
            path: gguf.path.clone(),
            tensors: expected.into_keys().collect(),
        });
    }
    Ok(plans)
}

/// Every key a Llama checkpoint with these parameters has, with its transformers shape.
pub(super) fn llama_expected_shapes(p: &LlamaParams) -> BTreeMap<String, Vec<u64>> {
    let (hidden, vocab, ffn) = (p.hidden_size, p.vocab_size, p.intermediate_size);
    let (q, kv) = (
        p.num_attention_heads.saturating_mul(p.head_dim),
        p.num_key_value_heads.saturating_mul(p.head_dim),
    );
    let mut shapes = BTreeMap::from([
        ("model.embed_tokens.weight".to_string(), vec![vocab, hidden]),
        ("model.norm.weight".to_string(), vec![hidden]),
    ]);
    if !p.tie_word_embeddings {
        shapes.insert("lm_head.weight".into(), vec![vocab, hidden]);
    }
    let per_layer = [
        ("input_layernorm", vec![hidden]),
        ("self_attn.q_proj", vec![q, hidden]),
        ("self_attn.k_proj", vec![kv, hidden]),
        ("self_attn.v_proj", vec![kv, hidden]),
        ("self_attn.o_proj", vec![hidden, q]),
        ("post_attention_layernorm", vec![hidden]),
        ("mlp.gate_proj", vec![ffn, hidden]),
        ("mlp.up_proj", vec![ffn, hidden]),
        ("mlp.down_proj", vec![hidden, ffn]),
    ];
    for layer in 0..p.num_hidden_layers {
        shapes.extend(
            per_layer
                .iter()
                .map(|(m, s)| (format!("model.layers.{layer}.{m}.weight"), s.clone())),
        );
    }
    shapes
}

/// Dequantizes one tensor, undoes the q/k row permutation and encodes it in `dtype`.
pub(super) fn convert_tensor(
    gguf: &Gguf,
    bytes: &[u8],
    plan: &Plan,
    params: &ModelParams,
    dtype: Dtype,
) -> Result<OwnedTensor, GgufError> {
    let bad = |message: String| GgufError::BadTensor {
        path: gguf.path.clone(),
        tensor: plan.info.name.clone(),
        message,
    };
    let data = gguf.tensor_data(bytes, plan.info, plan.n_bytes)?;
    let mut values = Vec::new();
    dequantize(plan.ty, data, &mut values);
    let shape = plan.info.torch_shape();
    if let Some(heads) = params.heads(plan.rows) {
        let [rows, cols] = shape[..] else {
            return Err(bad(format!("expected a matrix, found shape {shape:?}")));
        };
        values = unpermute_rows(&values, rows, cols, heads as usize).ok_or_else(|| {
            bad(format!(
                "{rows} rows do not split into {heads} heads of pairs"
            ))
        })?;
    }
    let encoded =
        from_f32(dtype, &values).ok_or_else(|| bad(format!("cannot write dtype {dtype:?}")))?;
    Ok(OwnedTensor {
        dtype,
        shape,
        bytes: encoded,
    })
}

/// Writes the folder as `.NAME.tmp-PID` beside `out`, then renames it into place (replacing an
/// existing `out` only after the new one is complete).
fn write_folder(out: &Path, files: &[(&str, Vec<u8>)], tensors: &Tensors) -> Result<(), GgufError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| GgufError::Io { path, cause }
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        for (file, bytes) in files {
            write_atomic(&tmp.join(file), bytes)?;
        }
        tensors.write(&tmp.join("model.safetensors"))?;
        swap_into_place(&tmp, out, &parent, &name)
    })();
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written
}

fn swap_into_place(tmp: &Path, out: &Path, parent: &Path, name: &str) -> Result<(), GgufError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| GgufError::Io { path, cause }
    };
    if !out.exists() {
        return fs::rename(tmp, out).map_err(io(out));
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    fs::rename(out, &old).map_err(io(out))?;
    if let Err(cause) = fs::rename(tmp, out) {
        let _ = fs::rename(&old, out);
        return Err(GgufError::Io {
            path: out.to_path_buf(),
            cause,
        });
    }
    fs::remove_dir_all(&old).map_err(io(&old))
}
