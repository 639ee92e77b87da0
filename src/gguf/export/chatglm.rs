//! ChatGLM2/3 (`model_type = chatglm`) → llama.cpp's `chatglm` architecture, as
//! convert_hf_to_gguf.py's `ChatGLMModel` writes it (conversion/chatglm.py, gguf-py
//! tensor_mapping.py) and llama.cpp's `llm_build_chatglm` reads it (src/models/chatglm.cpp):
//!
//! - `query_key_value` stays fused as `attn_qkv` (rows Q, then K, then V; llama.cpp takes views
//!   at offsets `0`, `n_embd`, `n_embd + n_embd_gqa`), with its bias;
//! - `dense_h_to_4h` stays fused as `ffn_up` (`[2·ffn, hidden]`): llama.cpp's `LLM_FFN_SWIGLU`
//!   splits it into silu(first half) · second half, ChatGLM's `swiglu`;
//! - no Q/K row permutation: ChatGLM's rotary already rotates interleaved pairs (llama.cpp
//!   `LLAMA_ROPE_TYPE_NORM`), on the first half of each head (`rope.dimension_count = head_dim/2`),
//!   base `10000 · rope_ratio`.
//!
//! What llama.cpp's graph cannot express is refused: biases on the dense layers
//! (`add_bias_linear`), the post-layernorm residual, no final norm, a head size other than
//! `hidden / heads` (the Q/K/V views assume it), and a model-level prefix (`pre_seq_len`).

use std::path::Path;

use serde_json::Value as Json;

use super::error::ExportError;
use super::plan::{choose_type, ExportType, Planned};
use crate::gguf::names::Rows;
use crate::gguf::reader::Value;

/// The ChatGLM hyperparameters the export needs (names as in the THUDM config).
#[derive(Debug, Clone, PartialEq)]
pub struct GlmHparams {
    pub layers: u32,
    pub hidden: u32,
    pub ffn: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab: u32,
    pub context: u32,
    pub rope_base: f32,
    pub eps: f32,
    pub qkv_bias: bool,
}

impl GlmHparams {
    pub fn from_config(path: &Path, c: &Json) -> Result<Self, ExportError> {
        let bad = |message: String| ExportError::Config {
            path: path.to_path_buf(),
            message,
        };
        let get = |k: &str| c.get(k).filter(|v| !v.is_null());
        let int = |k: &str, default: Option<u64>| -> Result<u32, ExportError> {
            match get(k) {
                None => default.ok_or_else(|| bad(format!("missing `{k}`"))),
                Some(v) => v.as_u64().ok_or_else(|| bad(format!("invalid `{k}`: {v}"))),
            }
            .and_then(|v| u32::try_from(v).map_err(|_| bad(format!("`{k}` is too large"))))
        };
        let flag = |k: &str, default: bool| get(k).and_then(Json::as_bool).unwrap_or(default);
        let unsupported = |what: &str| {
            Err(bad(format!(
                "{what}: llama.cpp's `chatglm` graph cannot represent it, so it is not exported"
            )))
        };
        if !flag("rmsnorm", true) {
            return unsupported("`rmsnorm: false` (LayerNorm)");
        }
        if flag("add_bias_linear", false) {
            return unsupported("`add_bias_linear: true` (biases on dense layers)");
        }
        if flag("apply_residual_connection_post_layernorm", false) {
            return unsupported("`apply_residual_connection_post_layernorm: true`");
        }
        if !flag("post_layer_norm", true) {
            return unsupported("`post_layer_norm: false` (no final norm)");
        }
        if get("pre_seq_len").is_some() {
            return unsupported("`pre_seq_len` (a P-tuning v2 prefix inside the model)");
        }
        let hidden = int("hidden_size", None)?;
        let heads = int("num_attention_heads", None)?;
        if heads == 0 || hidden % heads != 0 {
            return Err(bad(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )));
        }
        let head_dim = int("kv_channels", Some((hidden / heads) as u64))?;
        if head_dim * heads != hidden {
            return unsupported(&format!(
                "kv_channels {head_dim} × {heads} heads ≠ hidden_size {hidden}"
            ));
        }
        if head_dim % 4 != 0 {
            return Err(bad(format!(
                "kv_channels {head_dim} is not a multiple of 4"
            )));
        }
        // Our ChatGLM model's reading (models::chatglm::config): without multi-query attention
        // every head has its own K/V (the converter reads multi_query_group_num regardless).
        let kv_heads = if flag("multi_query_attention", false) {
            int("multi_query_group_num", Some(1))?
        } else {
            heads
        };
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {heads} is not a multiple of multi_query_group_num {kv_heads}"
            )));
        }
        let vocab = match get("padded_vocab_size") {
            Some(_) => int("padded_vocab_size", None)?,
            None => int("vocab_size", None)?,
        };
        let ratio = get("rope_ratio").and_then(Json::as_f64).unwrap_or(1.0);
        let eps = get("layernorm_epsilon")
            .and_then(Json::as_f64)
            .unwrap_or(1e-5);
        Ok(Self {
            layers: int("num_layers", None)?,
            hidden,
            ffn: int("ffn_hidden_size", Some(4 * hidden as u64))?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context: int("seq_length", Some(hidden as u64))?,
            rope_base: (10000.0 * ratio) as f32,
            eps: eps as f32,
            qkv_bias: flag("add_qkv_bias", false) || flag("add_bias_linear", false),
        })
    }

    /// The `chatglm.*` keys (and `tokenizer.ggml.add_bos_token = false`) in
    /// `ChatGLMModel.set_gguf_parameters`' order.
    pub fn keys(&self) -> Vec<(String, Value)> {
        let k = |name: &str| format!("chatglm.{name}");
        vec![
            (k("context_length"), Value::U32(self.context)),
            (k("embedding_length"), Value::U32(self.hidden)),
            (k("feed_forward_length"), Value::U32(self.ffn)),
            (k("block_count"), Value::U32(self.layers)),
            (k("attention.head_count"), Value::U32(self.heads)),
            (k("attention.head_count_kv"), Value::U32(self.kv_heads)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(self.eps)),
            // `partial_rotary_factor` 0.5: ChatGLM rotates half of each head.
            (k("rope.dimension_count"), Value::U32(self.head_dim / 2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
            (k("rope.freq_base"), Value::F32(self.rope_base)),
        ]
    }

    /// Every tensor of the GGUF. With `q4_k_m` the fused `attn_qkv` follows llama.cpp's attn_v
    /// rule (see [`choose_type`]); the token embedding is not the output head here (ChatGLM has
    /// its own `output_layer`), so it takes the default Q4_K.
    pub fn plan(&self, t: ExportType) -> Result<Vec<Planned>, ExportError> {
        let (hid, ffn, vocab) = (self.hidden as usize, self.ffn as usize, self.vocab as usize);
        let qkv = ((self.heads + 2 * self.kv_heads) * self.head_dim) as usize;
        let q = (self.heads * self.head_dim) as usize;
        let mut keys: Vec<(String, Vec<usize>)> = vec![(
            "transformer.embedding.word_embeddings.weight".into(),
            vec![vocab, hid],
        )];
        for l in 0..self.layers {
            let p = |m: &str| format!("transformer.encoder.layers.{l}.{m}");
            keys.push((p("input_layernorm.weight"), vec![hid]));
            keys.push((p("self_attention.query_key_value.weight"), vec![qkv, hid]));
            if self.qkv_bias {
                keys.push((p("self_attention.query_key_value.bias"), vec![qkv]));
            }
            keys.extend([
                (p("self_attention.dense.weight"), vec![hid, q]),
                (p("post_attention_layernorm.weight"), vec![hid]),
                (p("mlp.dense_h_to_4h.weight"), vec![2 * ffn, hid]),
                (p("mlp.dense_4h_to_h.weight"), vec![hid, ffn]),
            ]);
        }
        keys.push((
            "transformer.encoder.final_layernorm.weight".into(),
            vec![hid],
        ));
        keys.push(("transformer.output_layer.weight".into(), vec![vocab, hid]));
        Ok(keys
            .into_iter()
            .filter_map(|(hf, shape)| {
                let (gguf, rows) = gguf_name(&hf)?;
                let ty = choose_type(t, &gguf, &shape, self.layers, false);
                Some(Planned {
                    gguf,
                    hf,
                    shape,
                    rows,
                    ty,
                    made: None,
                })
            })
            .collect())
    }
}

/// The GGUF name of a ChatGLM checkpoint key (gguf-py tensor_mapping.py after
/// `ChatGLMModel.filter_tensors` drops the `transformer.` prefix). Rows are never permuted.
pub fn gguf_name(hf: &str) -> Option<(String, Rows)> {
    let hf = hf.strip_prefix("transformer.")?;
    let fixed = match hf {
        "embedding.word_embeddings.weight" => Some("token_embd.weight"),
        "encoder.final_layernorm.weight" => Some("output_norm.weight"),
        "output_layer.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.into(), Rows::AsIs));
    }
    let rest = hf.strip_prefix("encoder.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let name = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attention.query_key_value.weight" => "attn_qkv.weight",
        "self_attention.query_key_value.bias" => "attn_qkv.bias",
        "self_attention.dense.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.dense_h_to_4h.weight" => "ffn_up.weight",
        "mlp.dense_4h_to_h.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), Rows::AsIs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::GgmlType;
    use serde_json::json;

    fn tiny() -> Json {
        json!({"model_type": "chatglm", "hidden_size": 64, "num_attention_heads": 4,
            "kv_channels": 16, "multi_query_attention": true, "multi_query_group_num": 2,
            "num_layers": 2, "ffn_hidden_size": 112, "padded_vocab_size": 512, "vocab_size": 512,
            "seq_length": 256, "layernorm_epsilon": 1e-5, "add_qkv_bias": true, "rope_ratio": 2.0})
    }

    #[test]
    fn a_chatglm_config_gives_chatglm_model_keys() {
        let h = GlmHparams::from_config(Path::new("c"), &tiny()).unwrap();
        assert_eq!((h.heads, h.kv_heads, h.head_dim, h.vocab), (4, 2, 16, 512));
        let keys = h.keys();
        assert!(keys.contains(&("chatglm.rope.dimension_count".into(), Value::U32(8))));
        assert!(keys.contains(&("chatglm.rope.freq_base".into(), Value::F32(20000.0))));
        assert!(keys.contains(&("chatglm.attention.head_count_kv".into(), Value::U32(2))));
        assert!(keys.contains(&("tokenizer.ggml.add_bos_token".into(), Value::Bool(false))));
    }

    #[test]
    fn the_plan_keeps_qkv_and_gate_up_fused_with_the_qkv_bias_in_f32() {
        let h = GlmHparams::from_config(Path::new("c"), &tiny()).unwrap();
        let p = h.plan(ExportType::Q8_0).unwrap();
        assert_eq!(p.len(), 3 + 2 * 7);
        let qkv = p
            .iter()
            .find(|t| t.gguf == "blk.1.attn_qkv.weight")
            .unwrap();
        assert_eq!((qkv.shape.clone(), qkv.ty), (vec![128, 64], GgmlType::Q8_0));
        let bias = p.iter().find(|t| t.gguf == "blk.1.attn_qkv.bias").unwrap();
        assert_eq!(bias.ty, GgmlType::F32);
        let up = p.iter().find(|t| t.gguf == "blk.0.ffn_up.weight").unwrap();
        assert_eq!(up.dims(), vec![64, 224]);
        assert!(p.iter().all(|t| t.rows == Rows::AsIs));
    }

    fn types(h: &GlmHparams, t: ExportType) -> Vec<(String, GgmlType)> {
        let p = h.plan(t).unwrap();
        p.into_iter().map(|t| (t.gguf, t.ty)).collect()
    }

    /// What llama.cpp's `llama_model_quantize(.., Q4_K_M)` wrote for an 8-layer ChatGLM2 with
    /// hidden 256 and ffn 512 (examples/check_gguf_q4_k_m_mix.py --synthetic-chatglm).
    #[test]
    fn q4_k_m_gives_attn_qkv_and_ffn_down_q6_k_in_the_layers_llama_cpp_picks() {
        let mut c = tiny();
        for (k, v) in [
            ("num_layers", 8),
            ("hidden_size", 256),
            ("kv_channels", 64),
            ("ffn_hidden_size", 512),
        ] {
            c[k] = json!(v);
        }
        let h = GlmHparams::from_config(Path::new("c"), &c).unwrap();
        let ty = types(&h, ExportType::Q4KM);
        let of = |name: &str| ty.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        // use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2.
        for l in 0..8 {
            let want = if [0, 3, 6, 7].contains(&l) {
                GgmlType::Q6K
            } else {
                GgmlType::Q4K
            };
            for m in ["attn_qkv", "ffn_down"] {
                assert_eq!(of(&format!("blk.{l}.{m}.weight")), Some(want), "{l} {m}");
            }
            for m in ["attn_output", "ffn_up"] {
                assert_eq!(of(&format!("blk.{l}.{m}.weight")), Some(GgmlType::Q4K));
            }
            assert_eq!(of(&format!("blk.{l}.attn_qkv.bias")), Some(GgmlType::F32));
        }
        assert_eq!(of("output.weight"), Some(GgmlType::Q6K));
        assert_eq!(of("token_embd.weight"), Some(GgmlType::Q4K));
        assert_eq!(of("output_norm.weight"), Some(GgmlType::F32));
    }

    /// The tiny ChatGLM (hidden 64, ffn 112, 2 layers): no row is a whole super-block, so
    /// Q4_K falls back to Q5_0 and Q6_K to Q8_0, and ffn_down's 112 columns (not whole 32-value
    /// blocks either) to F16, as llama.cpp's quantizer logs for it.
    #[test]
    fn q4_k_m_on_the_tiny_chatglm_takes_llama_cpp_fallbacks() {
        let h = GlmHparams::from_config(Path::new("c"), &tiny()).unwrap();
        let ty = types(&h, ExportType::Q4KM);
        let of = |name: &str| ty.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        assert_eq!(of("output.weight"), Some(GgmlType::Q8_0));
        assert_eq!(of("token_embd.weight"), Some(GgmlType::Q5_0));
        assert_eq!(of("blk.0.attn_qkv.weight"), Some(GgmlType::Q5_0));
        assert_eq!(of("blk.1.attn_qkv.weight"), Some(GgmlType::Q8_0));
        assert_eq!(of("blk.0.attn_output.weight"), Some(GgmlType::Q5_0));
        assert_eq!(of("blk.1.ffn_up.weight"), Some(GgmlType::Q5_0));
        assert_eq!(of("blk.0.ffn_down.weight"), Some(GgmlType::F16));
        assert_eq!(of("blk.1.ffn_down.weight"), Some(GgmlType::F16));
    }

    #[test]
    fn what_llama_cpp_cannot_run_is_refused_by_name() {
        for (key, value, want) in [
            ("add_bias_linear", json!(true), "add_bias_linear"),
            ("rmsnorm", json!(false), "LayerNorm"),
            ("pre_seq_len", json!(8), "pre_seq_len"),
            ("kv_channels", json!(8), "kv_channels 8"),
        ] {
            let mut c = tiny();
            c[key] = value;
            let e = GlmHparams::from_config(Path::new("c"), &c).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
