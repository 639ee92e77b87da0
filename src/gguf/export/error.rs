//! Errors of `peft export gguf`.

use std::path::PathBuf;

use crate::error::{LoadError, MergeError, WriteError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: already exists (pass --force to replace it)", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: architecture `{architecture}` cannot be exported to GGUF yet (supported: llama, chatglm)", path.display())]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    #[error("unknown --type `{0}` (supported: f32, f16, bf16, q8_0, q4_0, q4_k_m)")]
    UnsupportedType(String),
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("tensor `{tensor}`: {message}")]
    Tensor { tensor: String, message: String },
    #[error("{}: {message}", dir.display())]
    LoraOnly { dir: PathBuf, message: String },
    #[error("{0}")]
    Option(String),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Path(#[from] crate::io::paths::PathError),
}
