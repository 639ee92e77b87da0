//! `MergeOptions` (what the user asked for) -> `MergePlan` (what will be written), with every check
//! done here, before the first byte of output: paths, adapter methods, tensor names, shapes,
//! dtypes and ranks.

use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::Value;

use crate::error::{LoadError, MergeError};
use crate::io::Checkpoint;
use crate::merge::adapter::Adapter;
use crate::merge::layout::{detect_tie, plan_layout, Lookup, OutShard, Tie};
use crate::merge::patches::{collect, Patches};

/// What to merge, as given on the command line.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub base: PathBuf,
    /// Folded in this order.
    pub adapters: Vec<PathBuf>,
    pub out: PathBuf,
    /// Output dtype of float tensors; `None` keeps each tensor's dtype.
    pub dtype: Option<Dtype>,
    /// Repack into shards of at most this many bytes; `None` keeps the input's layout.
    pub max_shard_size: Option<u64>,
    /// Replace an existing `out`.
    pub force: bool,
    /// Weight of each adapter's change: `W + scale·(merged(W) − W)`; 1 is a plain merge.
    pub scale: f32,
}

/// A validated merge, ready to write.
pub struct MergePlan {
    pub options: MergeOptions,
    pub base: Checkpoint,
    pub adapters: Vec<Adapter>,
    /// Base tensor name -> folds to apply.
    pub patches: Patches,
    pub shards: Vec<OutShard>,
    /// Whether to write `model.safetensors.index.json`.
    pub write_index: bool,
    /// The tied pair this merge unties, if any.
    pub untied: Option<Tie>,
    /// `config.json` as it will be written (`None`: the base has none).
    pub config: Option<Value>,
    /// A GGUF base's converted f32 folder, removed with the plan.
    pub scratch: Option<Scratch>,
}

/// A folder removed when dropped: a GGUF base converted for the merge (issue 17 item 5: a GGUF
/// base is dequantized, merged in f32 and written as safetensors, never as a 4-bit merge).
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `peft convert gguf` of `file` (f32) into a hidden folder beside `out`.
fn convert_gguf_base(file: &Path, out: &Path) -> Result<Scratch, MergeError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into());
    let dir = parent.join(format!(".{name}.gguf-base-{}", std::process::id()));
    let scratch = Scratch(dir.clone());
    crate::gguf::convert_gguf(
        file,
        &dir,
        crate::gguf::ConvertOptions {
            dtype: Dtype::F32,
            force: true,
        },
    )
    .map_err(|e| {
        MergeError::Load(LoadError::Config {
            path: file.to_path_buf(),
            message: e.to_string(),
        })
    })?;
    Ok(scratch)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    move |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` made absolute with symlinks resolved, even if its last components do not exist yet.
fn resolve(path: &Path) -> Result<PathBuf, MergeError> {
    Ok(crate::io::paths::resolve(path)?)
}

/// `--out` must not be the base or an adapter, overlap one, or (without `--force`) exist.
fn check_out(base: &Path, adapters: &[PathBuf], out: &Path, force: bool) -> Result<(), MergeError> {
    let base_abs = base.canonicalize().map_err(io_err(base))?;
    let out_abs = resolve(out)?;
    if out_abs == base_abs {
        return Err(MergeError::OutIsBase {
            path: out.to_path_buf(),
        });
    }
    if out_abs.starts_with(&base_abs) || base_abs.starts_with(&out_abs) {
        return Err(MergeError::OutOverlapsBase {
            out: out.to_path_buf(),
            base: base.to_path_buf(),
        });
    }
    // The adapters are inputs too: `--force` must never replace a folder that holds one.
    let adapters: Vec<(&str, &Path)> = adapters
        .iter()
        .map(|a| ("--adapter folder", a.as_path()))
        .collect();
    crate::io::paths::check_out_against_inputs(out, &adapters)?;
    if out.symlink_metadata().is_ok() && !force {
        return Err(MergeError::OutExists {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

/// A base that lacks tensors its config.json needs (a missing shard, or an index that omits one)
/// would be written as a model that cannot be loaded: refused with the list. A config of a
/// family we do not model is not checked (the merge itself only needs the adapted tensors).
fn check_complete(dir: &Path, base: &Checkpoint) -> Result<(), MergeError> {
    let Ok(model) = crate::models::ModelDir::open(dir) else {
        return Ok(());
    };
    let missing: Vec<String> = model
        .expected_tensors()
        .into_iter()
        .filter(|n| !base.contains(n))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MergeError::IncompleteBase { tensors: missing })
    }
}

fn read_config(base: &Path) -> Result<Option<Value>, MergeError> {
    let path = base.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(crate::io::json::read_json(&path)?))
}

/// The config as it will be written: untied if needed, with the new dtype if one was asked for.
fn edit_config(config: Option<Value>, untie: bool, dtype: Option<Dtype>) -> Option<Value> {
    let mut config = config?;
    let obj = config.as_object_mut()?;
    if untie {
        obj.insert("tie_word_embeddings".into(), Value::Bool(false));
    }
    let name = match dtype {
        Some(Dtype::F32) => Some("float32"),
        Some(Dtype::BF16) => Some("bfloat16"),
        Some(Dtype::F16) => Some("float16"),
        _ => None,
    };
    if let Some(name) = name {
        for key in ["dtype", "torch_dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), Value::String(name.into()));
            }
        }
    }
    Some(config)
}

impl MergePlan {
    /// Validates everything and decides the output; writes nothing.
    pub fn build(mut options: MergeOptions) -> Result<Self, MergeError> {
        if !options.scale.is_finite() {
            return Err(MergeError::Option(format!(
                "--scale must be a finite number, got {}",
                options.scale
            )));
        }
        if options.adapters.is_empty() {
            return Err(MergeError::Option("give at least one --adapter".into()));
        }
        let mut scratch = None;
        if crate::gguf::base::is_gguf_file(&options.base) {
            check_out(
                &options.base,
                &options.adapters,
                &options.out,
                options.force,
            )?;
            let converted = convert_gguf_base(&options.base, &options.out)?;
            options.base = converted.0.clone();
            scratch = Some(converted);
        }
        if !options.base.is_dir() {
            let path = options.base.clone();
            return Err(LoadError::MissingFile {
                path,
                what: "base model folder",
            }
            .into());
        }
        check_out(
            &options.base,
            &options.adapters,
            &options.out,
            options.force,
        )?;
        let base = Checkpoint::open_dir(&options.base)?;
        let config = read_config(&options.base)?;
        let adapters = options
            .adapters
            .iter()
            .map(|d| Adapter::load(d))
            .collect::<Result<Vec<_>, _>>()?;
        let tie = detect_tie(config.as_ref(), &base);
        let patches = collect(
            &adapters,
            &Lookup {
                base: &base,
                tie: tie.as_ref(),
            },
        )?;
        // After the adapters' own checks, which name the adapter file for a tensor it adapts.
        check_complete(&options.base, &base)?;
        let untied =
            tie.filter(|t| patches.contains_key(&t.input) || patches.contains_key(&t.output));
        let shards = plan_layout(
            &base,
            options.dtype,
            untied.as_ref(),
            options.max_shard_size,
        );
        let had_index = options
            .base
            .join(crate::io::checkpoint::INDEX_FILE)
            .is_file();
        let write_index = had_index || shards.len() > 1;
        let config = edit_config(config, untied.is_some(), options.dtype);
        Ok(Self {
            options,
            base,
            adapters,
            patches,
            shards,
            write_index,
            untied,
            config,
            scratch,
        })
    }

    /// Total bytes of tensor data to write.
    pub fn total_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.tensors)
            .map(|t| t.byte_len())
            .sum()
    }
}
