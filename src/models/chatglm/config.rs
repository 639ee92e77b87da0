//! `config.json` of a ChatGLM2/3 checkpoint (`model_type: "chatglm"`) -> [`ChatGlmConfig`],
//! validated once here. Defaults are those of THUDM's `configuration_chatglm.py`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::LoadError;
use crate::models::config_fields::Fields;
use crate::models::llama::config::token_ids;
use crate::models::sizes;

pub const MODEL_TYPE: &str = "chatglm";

#[derive(Debug, Clone, PartialEq)]
pub struct ChatGlmConfig {
    pub num_layers: usize,
    /// Rows of the embedding and the output layer.
    pub padded_vocab_size: usize,
    pub hidden_size: usize,
    pub ffn_hidden_size: usize,
    /// Per-head dimension of q, k and v.
    pub kv_channels: usize,
    pub num_attention_heads: usize,
    /// Key/value heads: `multi_query_group_num` with `multi_query_attention`, else every head.
    pub kv_groups: usize,
    pub layernorm_epsilon: f64,
    pub add_qkv_bias: bool,
    pub add_bias_linear: bool,
    pub apply_residual_connection_post_layernorm: bool,
    pub post_layer_norm: bool,
    pub seq_length: usize,
    /// Rotary base = 10000 × rope_ratio (ChatGLM3-6B-32K uses 50).
    pub rope_ratio: f64,
    /// Recorded only: the reference `RotaryEmbedding` ignores `original_impl`.
    pub original_rope: bool,
    /// Native P-tuning v2 (`pre_seq_len`, `prefix_projection`), when the config enables it.
    pub pre_seq_len: Option<usize>,
    pub prefix_projection: bool,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ChatGlmConfig {
    /// Parses a config.json object; `path` names the file in errors.
    pub fn from_json(map: &Map<String, Value>, path: &Path) -> Result<Self, LoadError> {
        let f = Fields { map, path };
        let hidden_size = f.usize_or("hidden_size", 4096)?;
        let num_attention_heads = f.usize_or("num_attention_heads", 32)?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(f.err(format!("hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})")));
        }
        let kv_channels = f.usize_or("kv_channels", hidden_size / num_attention_heads)?;
        if kv_channels == 0 || kv_channels % 4 != 0 {
            // Rotary covers kv_channels/2 dims in pairs.
            return Err(f.err(format!(
                "kv_channels must be a positive multiple of 4, found {kv_channels}"
            )));
        }
        let kv_groups = if f.bool_or("multi_query_attention", false)? {
            f.usize_or("multi_query_group_num", 1)?
        } else {
            num_attention_heads
        };
        if kv_groups == 0 || num_attention_heads % kv_groups != 0 {
            return Err(f.err(format!("num_attention_heads ({num_attention_heads}) must be a multiple of multi_query_group_num ({kv_groups})")));
        }
        if !f.bool_or("rmsnorm", true)? {
            return Err(f.err("`rmsnorm: false` (LayerNorm, ChatGLM-6B v1 style) is not supported; ChatGLM2/3 use RMSNorm".into()));
        }
        let padded_vocab_size = match map.get("padded_vocab_size") {
            None | Some(Value::Null) => f.usize_req("vocab_size")?,
            Some(_) => f.usize_req("padded_vocab_size")?,
        };
        let pre_seq_len = match map.get("pre_seq_len") {
            None | Some(Value::Null) => None,
            Some(_) => Some(f.usize_req("pre_seq_len")?),
        };
        for (key, default) in [("layernorm_epsilon", 1e-5), ("rope_ratio", 1.0)] {
            let v = f.f64_or(key, default)?;
            if !(v.is_finite() && v >= 0.0) || (key == "rope_ratio" && v == 0.0) {
                return Err(f.err(format!(
                    "`{key}` must be a finite positive number, found {v}"
                )));
            }
        }
        let num_layers = f.usize_or("num_layers", 28)?;
        let ffn_hidden_size = f.usize_or("ffn_hidden_size", 13696)?;
        let seq_length = f.usize_or("seq_length", 2048)?;
        // Every product the model is built from is bounded by this total (checked arithmetic).
        sizes::layers("num_layers", num_layers).map_err(|m| f.err(m))?;
        let (l, h, kv) = (
            ("num_layers", num_layers),
            ("hidden_size", hidden_size),
            ("kv_channels", kv_channels),
        );
        let qkv_heads = num_attention_heads.saturating_add(kv_groups.saturating_mul(2));
        let ffn = ("ffn_hidden_size", ffn_hidden_size);
        sizes::parameters(&[
            &[("padded_vocab_size", padded_vocab_size), h],
            &[("padded_vocab_size", padded_vocab_size), h],
            &[
                l,
                h,
                ("num_attention_heads + 2 × multi_query_group_num", qkv_heads),
                kv,
            ],
            &[l, ("num_attention_heads", num_attention_heads), kv, h],
            &[l, h, ffn],
            &[l, h, ffn],
            &[l, h, ffn],
            &[("seq_length", seq_length), kv],
            &[("pre_seq_len", pre_seq_len.unwrap_or(0)), l, h],
        ])
        .map_err(|m| f.err(m))?;
        Ok(Self {
            num_layers,
            padded_vocab_size,
            hidden_size,
            ffn_hidden_size,
            kv_channels,
            num_attention_heads,
            kv_groups,
            layernorm_epsilon: f.f64_or("layernorm_epsilon", 1e-5)?,
            add_qkv_bias: f.bool_or("add_qkv_bias", false)?,
            add_bias_linear: f.bool_or("add_bias_linear", false)?,
            apply_residual_connection_post_layernorm: f
                .bool_or("apply_residual_connection_post_layernorm", false)?,
            post_layer_norm: f.bool_or("post_layer_norm", true)?,
            seq_length,
            rope_ratio: f.f64_or("rope_ratio", 1.0)?,
            original_rope: f.bool_or("original_rope", true)?,
            pre_seq_len,
            prefix_projection: f.bool_or("prefix_projection", false)?,
            eos_token_ids: token_ids(map.get("eos_token_id")),
            pad_token_id: token_ids(map.get("pad_token_id")).first().copied(),
        })
    }

    /// Output features of the fused `query_key_value`: q for every head, k and v per group.
    pub fn qkv_size(&self) -> usize {
        (self.num_attention_heads + 2 * self.kv_groups) * self.kv_channels
    }

    /// Width of one prefix token in the P-tuning v2 layout: `num_layers · 2 · groups · kv_channels`.
    pub fn prefix_kv_size(&self) -> usize {
        self.num_layers * 2 * self.kv_groups * self.kv_channels
    }

    /// Every linear module path with its (in, out) features and bias, in checkpoint order.
    pub fn linear_shapes(&self) -> Vec<(String, usize, usize, bool)> {
        let (h, f) = (self.hidden_size, self.ffn_hidden_size);
        let proj = self.num_attention_heads * self.kv_channels;
        let mut out = Vec::new();
        for l in 0..self.num_layers {
            let p = format!("transformer.encoder.layers.{l}");
            out.push((
                format!("{p}.self_attention.query_key_value"),
                h,
                self.qkv_size(),
                self.add_bias_linear || self.add_qkv_bias,
            ));
            out.push((
                format!("{p}.self_attention.dense"),
                proj,
                h,
                self.add_bias_linear,
            ));
            out.push((
                format!("{p}.mlp.dense_h_to_4h"),
                h,
                2 * f,
                self.add_bias_linear,
            ));
            out.push((format!("{p}.mlp.dense_4h_to_h"), f, h, self.add_bias_linear));
        }
        out
    }

    /// Parameters as stored: embedding, linears, norms and the output layer.
    pub fn num_parameters(&self) -> usize {
        let linear: usize = self
            .linear_shapes()
            .iter()
            .map(|(_, i, o, bias)| i * o + if *bias { *o } else { 0 })
            .sum();
        let norms = self.hidden_size * (2 * self.num_layers + usize::from(self.post_layer_norm));
        2 * self.padded_vocab_size * self.hidden_size + linear + norms
    }
}
