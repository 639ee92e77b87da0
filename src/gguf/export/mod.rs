//! `peft export gguf`: a Hugging Face Llama folder (and adapters, folded in) → one GGUF file that
//! llama.cpp and Ollama load, or a PEFT LoRA adapter → a GGUF LoRA (`--lora-only`).
//!
//! - [`arch`]: the architecture by `model_type`: Llama ([`metadata`]) or ChatGLM ([`chatglm`]);
//! - [`metadata`]: `general.*` / `llama.*` keys from config.json;
//! - [`chatglm`]: the `chatglm.*` keys and tensors;
//! - [`vocab`]: the tokenizer and chat template;
//! - [`plan`]: tensor names, ggml types (`--type`), the rotary row permutation, encoding;
//! - [`source`]: base tensors with the adapters folded, one at a time (the merge's code);
//! - [`lora`]: the GGUF LoRA adapter;
//! - [`modelfile`]: the Ollama `Modelfile` beside the output.
//!
//! Everything is checked before the first byte is written; the GGUF is streamed to a hidden
//! temporary sibling and renamed into place when complete (see [`crate::gguf::writer`]).

pub mod arch;
pub mod chatglm;
pub mod error;
pub mod lora;
pub mod metadata;
pub mod modelfile;
pub mod plan;
pub mod source;
pub mod vocab;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

pub use error::ExportError;
pub use plan::ExportType;

use crate::gguf::writer::{write_gguf, GgufLayout, StreamError, TensorSpec};
use arch::Arch;
use metadata::general_keys;

/// What to export, as given on the command line.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub model: PathBuf,
    pub adapters: Vec<PathBuf>,
    pub out: PathBuf,
    pub ty: ExportType,
    pub force: bool,
    /// Write the (single) adapter as a GGUF LoRA instead of a merged model.
    pub lora_only: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub out: PathBuf,
    pub modelfile: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// ggml type name → tensor count.
    pub types: std::collections::BTreeMap<String, usize>,
    pub tokenizer: String,
    pub merged: usize,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |cause| ExportError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

pub(crate) fn read_config(model: &Path) -> Result<(PathBuf, Json), ExportError> {
    let path = model.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let json = serde_json::from_str(&text).map_err(|e| ExportError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((path, json))
}

/// `--out` must be a new file (or `--force`), not an input, and not inside one; the Modelfile
/// beside it must not be an input either.
pub(crate) fn check_out(opts: &ExportOptions) -> Result<(), ExportError> {
    let mut inputs: Vec<(&str, &Path)> = vec![("--model folder", opts.model.as_path())];
    inputs.extend(
        opts.adapters
            .iter()
            .map(|a| ("--adapter folder", a.as_path())),
    );
    crate::io::paths::check_out_against_inputs(&opts.out, &inputs)?;
    crate::io::paths::check_out_against_inputs(&modelfile::path_for(&opts.out), &inputs)?;
    if opts.out.is_dir() {
        return Err(ExportError::Option(format!(
            "--out {} is a folder; give the .gguf file to write",
            opts.out.display()
        )));
    }
    if opts.out.symlink_metadata().is_ok() && !opts.force {
        return Err(ExportError::OutputExists {
            path: opts.out.clone(),
        });
    }
    Ok(())
}

/// Runs the export.
pub fn export_gguf(opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    if opts.lora_only {
        return lora::export_lora(opts);
    }
    check_out(opts)?;
    let (config_path, config) = read_config(&opts.model)?;
    let arch = Arch::from_config(&config_path, &config)?;
    let vocab = vocab::read(&opts.model, &arch, &config)?;
    let source = source::Source::open(&opts.model, &opts.adapters, &config)?;
    let planned = arch.plan(opts.ty, !arch.tied() || source.unties())?;
    let names: Vec<&str> = planned
        .iter()
        .filter(|p| p.made.is_none())
        .map(|p| p.hf.as_str())
        .collect();
    let missing = source.missing(&names);
    if !missing.is_empty() {
        return Err(ExportError::Config {
            path: opts.model.clone(),
            message: format!(
                "the checkpoint lacks {} tensor(s): {}",
                missing.len(),
                missing.join(", ")
            ),
        });
    }
    let mut metadata = general_keys(
        arch.name(),
        &model_name(&opts.model),
        "model",
        Some(opts.ty.file_type()),
    );
    let arch_keys = arch.keys();
    // A key the architecture sets (ChatGLM's `add_bos_token = false`) wins over the tokenizer's.
    metadata.extend(arch_keys.iter().cloned());
    metadata.extend(
        vocab
            .keys
            .iter()
            .filter(|(k, _)| !arch_keys.iter().any(|(a, _)| a == k))
            .cloned(),
    );
    let tensors = planned
        .iter()
        .map(|p| TensorSpec {
            name: p.gguf.clone(),
            dims: p.dims(),
            ggml_type: plan::type_id(p.ty),
            n_bytes: p.n_bytes(),
        })
        .collect();
    let layout = GgufLayout { metadata, tensors };
    write_gguf(&opts.out, &layout, |i, out| {
        let p = &planned[i];
        let mut values = match &p.made {
            Some(v) => v.clone(),
            None => source.read(&p.hf, &p.shape)?,
        };
        if let Some(heads) = arch.heads(p.rows) {
            values = plan::permute_rows(&values, p.shape[0], p.shape[1], heads as usize)
                .ok_or_else(|| ExportError::Tensor {
                    tensor: p.hf.clone(),
                    message: format!("{} rows do not split into {heads} heads", p.shape[0]),
                })?;
        }
        out.write_all(&plan::encode(p.ty, &values))
            .map_err(io_err(&opts.out))
    })
    .map_err(stream_err)?;
    let modelfile = modelfile::write(
        &opts.out,
        vocab.chat_template.as_deref(),
        vocab.eos.as_deref(),
        None,
    )?;
    let mut types = std::collections::BTreeMap::new();
    for p in &planned {
        *types
            .entry(crate::gguf::dequant::type_name(plan::type_id(p.ty)))
            .or_insert(0) += 1;
    }
    Ok(ExportReport {
        out: opts.out.clone(),
        modelfile,
        tensors: planned.len(),
        bytes: layout.file_size(),
        types,
        tokenizer: vocab.kind,
        merged: source.patches.len(),
    })
}

pub(crate) fn stream_err(e: StreamError<ExportError>) -> ExportError {
    match e {
        StreamError::Io(w) => ExportError::Write(w),
        StreamError::Produce(e) => e,
    }
}

/// `general.name`: the model folder's name.
pub(crate) fn model_name(dir: &Path) -> String {
    std::path::absolute(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into())
}
