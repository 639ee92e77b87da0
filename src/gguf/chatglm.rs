//! Reading llama.cpp's `chatglm` architecture back into a THUDM ChatGLM2/3 folder: the
//! `chatglm.*` keys as convert_hf_to_gguf.py's `ChatGLMModel.set_gguf_parameters` writes them
//! (conversion/chatglm.py) → `config.json` as THUDM's `configuration_chatglm.py` saves it, and
//! llama.cpp's tensor names → the checkpoint keys (the inverse of `export::chatglm::gguf_name`).
//!
//! ChatGLMModel changes no tensor's layout: `attn_qkv` is THUDM's fused `query_key_value` (rows
//! Q, K, V), `ffn_up` the fused `dense_h_to_4h` (gate rows, then up rows), and no Q/K rows are
//! permuted (ChatGLM's rotary already rotates interleaved pairs). So every tensor comes back as
//! stored. What our ChatGLM model cannot run is refused: a rotary over anything but half of each
//! head, a head size other than `hidden / heads` (llama.cpp's Q/K/V views assume it), and
//! GLM-4's separate `attn_q`/`attn_k`/`attn_v` (transformers' `GlmForCausalLM` layout).

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::config::{f32_json, SpecialIds};
use super::names::Rows;
use super::reader::Gguf;
use crate::error::GgufError;

/// The ChatGLM hyperparameters read from the file (names as in THUDM's config).
#[derive(Debug, Clone, PartialEq)]
pub struct GlmParams {
    pub num_layers: u64,
    pub hidden_size: u64,
    pub ffn_hidden_size: u64,
    pub num_attention_heads: u64,
    pub multi_query_group_num: u64,
    pub kv_channels: u64,
    pub seq_length: u64,
    pub padded_vocab_size: u64,
    pub layernorm_epsilon: f64,
    /// `rope.freq_base / 10000` (ChatGLM's rotary base is `10000 · rope_ratio`).
    pub rope_ratio: f64,
    /// Whether the file has `attn_qkv.bias` (ChatGLM2/3 have it; `add_qkv_bias`).
    pub add_qkv_bias: bool,
}

fn missing(gguf: &Gguf, key: &str) -> GgufError {
    GgufError::MissingKey {
        path: gguf.path.clone(),
        key: key.to_string(),
    }
}

impl GlmParams {
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GgufError> {
        let req = |key: &str| gguf.get_u64(key)?.ok_or_else(|| missing(gguf, key));
        let hidden_size = req("chatglm.embedding_length")?;
        let heads = req("chatglm.attention.head_count")?;
        if heads == 0 || hidden_size % heads != 0 {
            return Err(gguf.invalid(format!("chatglm.embedding_length {hidden_size} is not a multiple of chatglm.attention.head_count {heads}")));
        }
        let kv_heads = gguf
            .get_u64("chatglm.attention.head_count_kv")?
            .unwrap_or(heads);
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(gguf.invalid(format!(
                "chatglm.attention.head_count_kv {kv_heads} does not divide head_count {heads}"
            )));
        }
        // llama.cpp's chatglm graph takes Q/K/V views of `hidden / heads` per head.
        let head_dim = hidden_size / heads;
        if let Some(k) = gguf.get_u64("chatglm.attention.key_length")? {
            if k != head_dim {
                return Err(gguf.invalid(format!("chatglm.attention.key_length {k} is not hidden / heads = {head_dim}, which ChatGLM's fused query_key_value assumes")));
            }
        }
        if head_dim % 4 != 0 {
            return Err(gguf.invalid(format!(
                "a head size of {head_dim} is not a multiple of 4 (ChatGLM rotates half of each head in pairs)"
            )));
        }
        // ChatGLM2/3 rotate the first half of each head (`partial_rotary_factor` 0.5).
        let rot = gguf
            .get_u64("chatglm.rope.dimension_count")?
            .unwrap_or(head_dim / 2);
        if rot != head_dim / 2 {
            return Err(gguf.invalid(format!("chatglm.rope.dimension_count {rot} is not half the head size {head_dim}: ChatGLM's rotary covers exactly half of each head")));
        }
        let num_layers = req("chatglm.block_count")?;
        // Six tensors per layer at least: a larger count is a corrupt file and sizes nothing.
        if num_layers.saturating_mul(6) > gguf.tensors.len() as u64 {
            return Err(gguf.invalid(format!(
                "chatglm.block_count {num_layers} needs more than the {} tensors present",
                gguf.tensors.len()
            )));
        }
        let padded_vocab_size = match gguf.tensors.iter().find(|t| t.name == "token_embd.weight") {
            Some(t) => t.dims.get(1).copied().unwrap_or(0),
            None => match gguf.get_array("tokenizer.ggml.tokens")? {
                Some(tokens) => tokens.len() as u64,
                None => return Err(missing(gguf, "tokenizer.ggml.tokens")),
            },
        };
        let base = gguf.get_f64("chatglm.rope.freq_base")?.unwrap_or(10_000.0);
        if !(base.is_finite() && base > 0.0) {
            return Err(gguf.invalid(format!("chatglm.rope.freq_base {base} is not positive")));
        }
        Ok(Self {
            num_layers,
            hidden_size,
            ffn_hidden_size: req("chatglm.feed_forward_length")?,
            num_attention_heads: heads,
            multi_query_group_num: kv_heads,
            kv_channels: head_dim,
            seq_length: req("chatglm.context_length")?,
            padded_vocab_size,
            layernorm_epsilon: gguf
                .get_f64("chatglm.attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5),
            // The base is an f32 in the file: the ratio printed from its shortest decimal.
            rope_ratio: format!("{}", base as f32).parse::<f64>().unwrap_or(base) / 10_000.0,
            add_qkv_bias: gguf
                .tensors
                .iter()
                .any(|t| t.name.ends_with(".attn_qkv.bias")),
        })
    }

    /// Every key a ChatGLM checkpoint with these parameters has, with its PyTorch shape.
    pub fn expected_shapes(&self) -> BTreeMap<String, Vec<u64>> {
        let (h, ffn, vocab) = (
            self.hidden_size,
            self.ffn_hidden_size,
            self.padded_vocab_size,
        );
        let q = self.num_attention_heads.saturating_mul(self.kv_channels);
        let qkv = self
            .num_attention_heads
            .saturating_add(self.multi_query_group_num.saturating_mul(2))
            .saturating_mul(self.kv_channels);
        let mut shapes = BTreeMap::from([
            (
                "transformer.embedding.word_embeddings.weight".to_string(),
                vec![vocab, h],
            ),
            (
                "transformer.encoder.final_layernorm.weight".to_string(),
                vec![h],
            ),
            (
                "transformer.output_layer.weight".to_string(),
                vec![vocab, h],
            ),
        ]);
        for l in 0..self.num_layers {
            let p = |m: &str| format!("transformer.encoder.layers.{l}.{m}");
            shapes.insert(p("input_layernorm.weight"), vec![h]);
            shapes.insert(p("self_attention.query_key_value.weight"), vec![qkv, h]);
            if self.add_qkv_bias {
                shapes.insert(p("self_attention.query_key_value.bias"), vec![qkv]);
            }
            shapes.insert(p("self_attention.dense.weight"), vec![h, q]);
            shapes.insert(p("post_attention_layernorm.weight"), vec![h]);
            shapes.insert(
                p("mlp.dense_h_to_4h.weight"),
                vec![ffn.saturating_mul(2), h],
            );
            shapes.insert(p("mlp.dense_4h_to_h.weight"), vec![h, ffn]);
        }
        shapes
    }
}

/// The checkpoint key for llama.cpp tensor `name` in a `chatglm` file (gguf-py tensor_mapping.py,
/// MODEL_ARCH.CHATGLM, with the `transformer.` prefix ChatGLMModel.filter_tensors dropped put
/// back); `None` for a name we do not know. Rows are never rearranged.
pub fn hf_name(name: &str) -> Option<(String, Rows)> {
    let fixed = match name {
        "token_embd.weight" => Some("transformer.embedding.word_embeddings.weight"),
        "output_norm.weight" => Some("transformer.encoder.final_layernorm.weight"),
        "output.weight" => Some("transformer.output_layer.weight"),
        _ => None,
    };
    if let Some(key) = fixed {
        return Some((key.to_string(), Rows::AsIs));
    }
    let (layer, suffix) = super::names::block(name)?;
    let module = match suffix {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_qkv.weight" => "self_attention.query_key_value.weight",
        "attn_qkv.bias" => "self_attention.query_key_value.bias",
        "attn_output.weight" => "self_attention.dense.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_up.weight" => "mlp.dense_h_to_4h.weight",
        "ffn_down.weight" => "mlp.dense_4h_to_h.weight",
        _ => return None,
    };
    Some((
        format!("transformer.encoder.layers.{layer}.{module}"),
        Rows::AsIs,
    ))
}

/// Why an unknown `chatglm` tensor name cannot be read, when we know the layout it belongs to.
pub fn unknown_reason(name: &str) -> Option<&'static str> {
    let suffix = name.strip_prefix("blk.")?.split_once('.')?.1;
    match suffix {
        "attn_q.weight" | "attn_k.weight" | "attn_v.weight" | "attn_q.bias" | "attn_k.bias"
        | "attn_v.bias" => Some(
            "separate attn_q/attn_k/attn_v (GLM-4 in transformers' layout) are not read; ChatGLM2/3 keep the fused attn_qkv",
        ),
        "ffn_gate.weight" => Some(
            "a separate ffn_gate is not read; ChatGLM2/3 keep gate and up fused in ffn_up",
        ),
        _ => None,
    }
}

/// THUDM's `ChatGLMConfig` as `configuration_chatglm.py` saves it (the fields of
/// tests/fixtures/chatglm-tiny/config.json); `dtype` is the name written as `torch_dtype`.
pub fn chatglm_config_json(p: &GlmParams, ids: SpecialIds, dtype: &str) -> Json {
    json!({
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"
        },
        "model_type": "chatglm",
        "num_layers": p.num_layers,
        "padded_vocab_size": p.padded_vocab_size,
        "vocab_size": p.padded_vocab_size,
        "hidden_size": p.hidden_size,
        "ffn_hidden_size": p.ffn_hidden_size,
        "kv_channels": p.kv_channels,
        "num_attention_heads": p.num_attention_heads,
        "multi_query_attention": p.multi_query_group_num != p.num_attention_heads,
        "multi_query_group_num": p.multi_query_group_num,
        "seq_length": p.seq_length,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "classifier_dropout": null,
        "layernorm_epsilon": f32_json(p.layernorm_epsilon),
        "rmsnorm": true,
        "apply_residual_connection_post_layernorm": false,
        "post_layer_norm": true,
        "add_bias_linear": false,
        "add_qkv_bias": p.add_qkv_bias,
        "bias_dropout_fusion": true,
        "apply_query_key_layer_scaling": true,
        "attention_softmax_in_fp32": true,
        "fp32_residual_connection": false,
        "original_rope": true,
        "rope_ratio": f32_json(p.rope_ratio),
        "pre_seq_len": null,
        "prefix_projection": false,
        "quantization_bit": 0,
        "tie_word_embeddings": false,
        "use_cache": true,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "torch_dtype": dtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_the_export_writes_maps_back_to_its_checkpoint_key() {
        for key in [
            "transformer.embedding.word_embeddings.weight",
            "transformer.encoder.final_layernorm.weight",
            "transformer.output_layer.weight",
            "transformer.encoder.layers.3.input_layernorm.weight",
            "transformer.encoder.layers.3.self_attention.query_key_value.weight",
            "transformer.encoder.layers.3.self_attention.query_key_value.bias",
            "transformer.encoder.layers.3.self_attention.dense.weight",
            "transformer.encoder.layers.3.post_attention_layernorm.weight",
            "transformer.encoder.layers.3.mlp.dense_h_to_4h.weight",
            "transformer.encoder.layers.3.mlp.dense_4h_to_h.weight",
        ] {
            let (gguf, _) = crate::gguf::export::chatglm::gguf_name(key).unwrap();
            assert_eq!(
                hf_name(&gguf),
                Some((key.to_string(), Rows::AsIs)),
                "{gguf}"
            );
        }
    }

    #[test]
    fn glm4_separate_projections_are_named_as_unsupported() {
        assert_eq!(hf_name("blk.0.attn_q.weight"), None);
        assert!(unknown_reason("blk.0.attn_q.weight")
            .unwrap()
            .contains("attn_qkv"));
        assert_eq!(unknown_reason("blk.0.rope_freqs.weight"), None);
    }
}
