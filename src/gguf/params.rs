//! The architectures a GGUF file is read as (`general.architecture`): a closed enum over
//! [`LlamaParams`] (`llama`) and [`GlmParams`] (`chatglm`), each giving its tensor names, the
//! shapes it expects, its row handling and its `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use super::chatglm::{self, GlmParams};
use super::config::{llama_config_json, LlamaParams, SpecialIds, SUPPORTED_ARCHITECTURES};
use super::names::{self, Rows};
use super::reader::Gguf;
use crate::error::GgufError;

#[derive(Debug, Clone, PartialEq)]
pub enum ModelParams {
    Llama(LlamaParams),
    ChatGlm(GlmParams),
}

impl ModelParams {
    /// Reads the parameters of the file's architecture; any other architecture is refused by
    /// name. `file` names the file in the error.
    pub fn from_gguf(gguf: &Gguf, file: &Path) -> Result<Self, GgufError> {
        match gguf.get_str("general.architecture")? {
            "llama" => Ok(Self::Llama(LlamaParams::from_gguf(gguf)?)),
            "chatglm" => Ok(Self::ChatGlm(GlmParams::from_gguf(gguf)?)),
            other => Err(GgufError::UnknownArchitecture {
                path: file.to_path_buf(),
                architecture: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES,
            }),
        }
    }

    pub fn architecture(&self) -> &'static str {
        match self {
            Self::Llama(_) => "llama",
            Self::ChatGlm(_) => "chatglm",
        }
    }

    /// The checkpoint key (and row handling) of llama.cpp tensor `name`.
    pub fn hf_name(&self, name: &str) -> Option<(String, Rows)> {
        match self {
            Self::Llama(_) => names::hf_name(name),
            Self::ChatGlm(_) => chatglm::hf_name(name),
        }
    }

    /// Why tensor `name`, unknown to [`Self::hf_name`], cannot be read, when we know.
    pub fn unknown_reason(&self, name: &str) -> Option<&'static str> {
        match self {
            Self::Llama(_) => None,
            Self::ChatGlm(_) => chatglm::unknown_reason(name),
        }
    }

    /// Every checkpoint key with its PyTorch shape.
    pub fn expected_shapes(&self) -> BTreeMap<String, Vec<u64>> {
        match self {
            Self::Llama(p) => super::convert::llama_expected_shapes(p),
            Self::ChatGlm(p) => p.expected_shapes(),
        }
    }

    pub fn layers(&self) -> u64 {
        match self {
            Self::Llama(p) => p.num_hidden_layers,
            Self::ChatGlm(p) => p.num_layers,
        }
    }

    /// The context length (`model_max_length` of the tokenizer).
    pub fn context_length(&self) -> u64 {
        match self {
            Self::Llama(p) => p.max_position_embeddings,
            Self::ChatGlm(p) => p.seq_length,
        }
    }

    /// The head count whose row permutation `rows` undoes (only Llama's q/k are permuted).
    pub fn heads(&self, rows: Rows) -> Option<u64> {
        match (self, rows) {
            (_, Rows::AsIs) | (Self::ChatGlm(_), _) => None,
            (Self::Llama(p), Rows::QueryHeads) => Some(p.num_attention_heads),
            (Self::Llama(p), Rows::KvHeads) => Some(p.num_key_value_heads),
        }
    }

    /// `config.json`, `dtype` written as `torch_dtype`.
    pub fn config_json(&self, ids: SpecialIds, dtype: &str) -> Json {
        match self {
            Self::Llama(p) => llama_config_json(p, ids, dtype),
            Self::ChatGlm(p) => chatglm::chatglm_config_json(p, ids, dtype),
        }
    }
}
