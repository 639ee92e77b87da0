//! `config.json` for a Llama model, from the GGUF keys llama.cpp writes (`llama.*`, see gguf-py
//! constants.py `Keys.LLM`/`Keys.Attention`/`Keys.Rope`), as transformers' `gguf_config_mapping.py`
//! reads them.

use serde_json::{json, Value as Json};

use super::reader::Gguf;
use crate::error::GgufError;

/// The architectures we convert (`general.architecture`).
pub const SUPPORTED_ARCHITECTURES: &str = "llama, chatglm";

/// The Llama hyperparameters read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub head_dim: u64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: u64,
    pub vocab_size: u64,
    pub tie_word_embeddings: bool,
}

impl LlamaParams {
    /// Reads `llama.*`; `vocab_size` falls back to the tokenizer's length, then to the rows of
    /// `token_embd`. Tied embeddings when the file has no `output.weight` (as llama.cpp loads it).
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GgufError> {
        let req = |key: &str| gguf.get_u64(key)?.ok_or_else(|| missing(gguf, key));
        let hidden_size = req("llama.embedding_length")?;
        let num_attention_heads = req("llama.attention.head_count")?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(gguf.invalid(format!("llama.embedding_length {hidden_size} is not a multiple of llama.attention.head_count {num_attention_heads}")));
        }
        let num_key_value_heads = gguf
            .get_u64("llama.attention.head_count_kv")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(gguf.invalid(format!("llama.attention.head_count_kv {num_key_value_heads} does not divide head_count {num_attention_heads}")));
        }
        let head_dim = gguf
            .get_u64("llama.attention.key_length")?
            .unwrap_or(hidden_size / num_attention_heads);
        let vocab_size = match gguf.get_u64("llama.vocab_size")? {
            Some(v) => v,
            None => match gguf.get_array("tokenizer.ggml.tokens")? {
                Some(tokens) => tokens.len() as u64,
                None => embedding_rows(gguf)?,
            },
        };
        // Nine tensors per layer: a larger count is a corrupt file, and is not allowed to size anything.
        let num_hidden_layers = req("llama.block_count")?;
        if num_hidden_layers.saturating_mul(9) > gguf.tensors.len() as u64 {
            return Err(gguf.invalid(format!(
                "llama.block_count {num_hidden_layers} needs more than the {} tensors present",
                gguf.tensors.len()
            )));
        }
        Ok(Self {
            hidden_size,
            intermediate_size: req("llama.feed_forward_length")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: gguf
                .get_f64("llama.attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| missing(gguf, "llama.attention.layer_norm_rms_epsilon"))?,
            // llama.cpp's default when the key is absent.
            rope_theta: gguf.get_f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
            max_position_embeddings: req("llama.context_length")?,
            vocab_size,
            tie_word_embeddings: !gguf.tensors.iter().any(|t| t.name == "output.weight"),
        })
    }
}

fn missing(gguf: &Gguf, key: &str) -> GgufError {
    GgufError::MissingKey {
        path: gguf.path.clone(),
        key: key.to_string(),
    }
}

fn embedding_rows(gguf: &Gguf) -> Result<u64, GgufError> {
    let embd = gguf.tensors.iter().find(|t| t.name == "token_embd.weight");
    embd.and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| missing(gguf, "llama.vocab_size"))
}

/// An f32 metadata value (eps, theta) widened to f64 prints as `9.999999747378752e-6`; print the
/// shortest decimal that round-trips through f32 instead, as transformers' reader does.
pub(super) fn f32_json(v: f64) -> Json {
    let short: f64 = format!("{}", v as f32).parse().unwrap_or(v);
    json!(short)
}

/// The special token ids transformers expects in `config.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecialIds {
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub pad: Option<u64>,
}

impl SpecialIds {
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GgufError> {
        Ok(Self {
            bos: gguf.get_u64("tokenizer.ggml.bos_token_id")?,
            eos: gguf.get_u64("tokenizer.ggml.eos_token_id")?,
            pad: gguf.get_u64("tokenizer.ggml.padding_token_id")?,
        })
    }
}

/// transformers' `LlamaConfig` as JSON. `dtype` is the name written as `torch_dtype`.
pub fn llama_config_json(p: &LlamaParams, ids: SpecialIds, dtype: &str) -> Json {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": f32_json(p.rms_norm_eps),
        "rope_theta": f32_json(p.rope_theta),
        "rope_scaling": null,
        "max_position_embeddings": p.max_position_embeddings,
        "vocab_size": p.vocab_size,
        "tie_word_embeddings": p.tie_word_embeddings,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "torch_dtype": dtype,
    })
}

/// `generation_config.json`: the ids `generate` stops on and pads with.
pub fn generation_config_json(ids: SpecialIds) -> Json {
    json!({ "bos_token_id": ids.bos, "eos_token_id": ids.eos, "pad_token_id": ids.pad })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_metadata_prints_as_the_short_decimal() {
        assert_eq!(f32_json(1e-5f32 as f64), json!(1e-5));
        assert_eq!(f32_json(100000.0), json!(100000.0));
    }
}
