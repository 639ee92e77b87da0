//! The architectures the export writes, dispatched by `config.json`'s `model_type`: llama.cpp's
//! `llama` ([`Hparams`]) and `chatglm` ([`GlmHparams`]).

use std::path::Path;

use serde_json::Value as Json;

use super::chatglm::{self, GlmHparams};
use super::error::ExportError;
use super::metadata::Hparams;
use super::plan::{self, ExportType, Planned};
use crate::gguf::names::Rows;
use crate::gguf::reader::Value;

#[derive(Debug, Clone)]
pub enum Arch {
    Llama(Hparams),
    ChatGlm(GlmHparams),
}

impl Arch {
    pub fn from_config(path: &Path, c: &Json) -> Result<Self, ExportError> {
        match c.get("model_type").and_then(Json::as_str).unwrap_or("") {
            crate::models::chatglm::config::MODEL_TYPE => {
                Ok(Self::ChatGlm(GlmHparams::from_config(path, c)?))
            }
            _ => Ok(Self::Llama(Hparams::from_config(path, c)?)),
        }
    }

    /// `general.architecture`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Llama(_) => "llama",
            Self::ChatGlm(_) => "chatglm",
        }
    }

    pub fn vocab(&self) -> u32 {
        match self {
            Self::Llama(h) => h.vocab,
            Self::ChatGlm(h) => h.vocab,
        }
    }

    /// Whether the checkpoint may leave out the output head (tied to the embedding).
    pub fn tied(&self) -> bool {
        match self {
            Self::Llama(h) => h.tied,
            Self::ChatGlm(_) => false,
        }
    }

    /// The architecture's keys (after `general.*`).
    pub fn keys(&self) -> Vec<(String, Value)> {
        match self {
            Self::Llama(h) => h.llama_keys(),
            Self::ChatGlm(h) => h.keys(),
        }
    }

    /// Every tensor, in writing order.
    pub fn plan(&self, t: ExportType, write_output: bool) -> Result<Vec<Planned>, ExportError> {
        match self {
            Self::Llama(h) => Ok(plan::plan(h, t, write_output)),
            Self::ChatGlm(h) => h.plan(t),
        }
    }

    /// The GGUF name of a checkpoint key and how its rows are rearranged.
    pub fn gguf_name(&self, hf: &str) -> Option<(String, Rows)> {
        match self {
            Self::Llama(_) => plan::gguf_name(hf),
            Self::ChatGlm(_) => chatglm::gguf_name(hf),
        }
    }

    /// The head count a row permutation splits by.
    pub fn heads(&self, rows: Rows) -> Option<u32> {
        match (self, rows) {
            (_, Rows::AsIs) | (Self::ChatGlm(_), _) => None,
            (Self::Llama(h), Rows::QueryHeads) => Some(h.heads),
            (Self::Llama(h), Rows::KvHeads) => Some(h.kv_heads),
        }
    }
}
