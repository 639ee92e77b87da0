//! `config.json` of a Llama-family checkpoint -> [`LlamaConfig`], validated once here.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::LoadError;
use crate::models::config_fields::Fields;
use crate::models::rope::RopeScaling;
use crate::models::sizes;

pub const MODEL_TYPES: &str = "llama, mistral, qwen2";

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v bias (Qwen2 always has it; Llama's `attention_bias` also biases o_proj).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// A token id field that may be a number or a list (`eos_token_id: [128001, 128009]`).
pub fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn rope(f: &Fields) -> Result<(f64, RopeScaling), LoadError> {
    // transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}`; 4.x writes
    // `rope_theta` and `rope_scaling: {type|rope_type, factor, ...}`.
    let params = f.map.get("rope_parameters").and_then(Value::as_object);
    let scaling = f
        .map
        .get("rope_scaling")
        .and_then(Value::as_object)
        .or(params);
    let theta = match params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
    {
        Some(t) => t,
        None => f.f64_or("rope_theta", 10000.0)?,
    };
    let Some(s) = scaling else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f32, LoadError> {
        s.get(key)
            .and_then(Value::as_f64)
            .map(|x| x as f32)
            .ok_or_else(|| f.err(format!("rope scaling `{kind}` needs `{key}`")))
            // Factors divide frequencies and wavelengths: 0, negative or overflowing gives inf/NaN.
            .and_then(|x| {
                if x.is_finite() && x > 0.0 {
                    Ok(x)
                } else {
                    Err(f.err(format!(
                        "rope scaling `{key}` must be a finite number > 0, found {x}"
                    )))
                }
            })
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(f.err(format!(
                "unsupported rope scaling `{other}` (supported: default, linear, llama3)"
            )))
        }
    };
    Ok((theta, scaling))
}

impl LlamaConfig {
    /// Parses a config.json object; `path` names the file in errors.
    pub fn from_json(map: &Map<String, Value>, path: &Path) -> Result<Self, LoadError> {
        let f = Fields { map, path };
        let model_type = map
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !["llama", "mistral", "qwen2"].contains(&model_type.as_str()) {
            return Err(LoadError::UnknownModelType {
                path: path.to_path_buf(),
                model_type,
                supported: MODEL_TYPES,
            });
        }
        let hidden_size = f.usize_req("hidden_size")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        let num_key_value_heads = f.usize_or("num_key_value_heads", num_attention_heads)?;
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(f.err(format!(
                "num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = f.usize_or("head_dim", hidden_size / num_attention_heads)?;
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err(format!(
                "head_dim must be even and positive, found {head_dim}"
            )));
        }
        let (rope_theta, rope_scaling) = rope(&f)?;
        let qwen2 = model_type == "qwen2";
        let attention_bias = f.bool_or("attention_bias", false)?;
        let vocab_size = f.usize_req("vocab_size")?;
        let intermediate_size = f.usize_req("intermediate_size")?;
        let num_hidden_layers = f.usize_req("num_hidden_layers")?;
        let max_position_embeddings = f.usize_or("max_position_embeddings", 2048)?;
        let rms_norm_eps = f.f64_or("rms_norm_eps", 1e-6)?;
        if !(rms_norm_eps.is_finite()
            && rms_norm_eps >= 0.0
            && rope_theta.is_finite()
            && rope_theta > 0.0)
        {
            return Err(f.err(format!("rms_norm_eps ({rms_norm_eps}) must be finite and >= 0, rope_theta ({rope_theta}) finite and > 0")));
        }
        // Every product the model is built from is bounded by this total (checked arithmetic).
        sizes::layers("num_hidden_layers", num_hidden_layers).map_err(|m| f.err(m))?;
        let (l, h, i) = (
            ("num_hidden_layers", num_hidden_layers),
            ("hidden_size", hidden_size),
            ("intermediate_size", intermediate_size),
        );
        let (nh, nkv, d) = (
            ("num_attention_heads", num_attention_heads),
            ("num_key_value_heads", num_key_value_heads),
            ("head_dim", head_dim),
        );
        sizes::parameters(&[
            &[("vocab_size", vocab_size), h],
            &[("vocab_size", vocab_size), h],
            &[l, h, nh, d],
            &[l, h, nh, d],
            &[l, h, nkv, d],
            &[l, h, nkv, d],
            &[l, h, i],
            &[l, h, i],
            &[l, h, i],
            &[("max_position_embeddings", max_position_embeddings), d],
        ])
        .map_err(|m| f.err(m))?;
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            qkv_bias: qwen2 || attention_bias,
            o_bias: !qwen2 && attention_bias,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            bos_token_id: token_ids(map.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(map.get("eos_token_id")),
            pad_token_id: token_ids(map.get("pad_token_id")).first().copied(),
            model_type,
        })
    }

    /// Every linear module path with its (in, out) features, in checkpoint order.
    pub fn linear_shapes(&self) -> Vec<(String, usize, usize, bool)> {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let mut out = Vec::new();
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj"), h, q, self.qkv_bias));
            out.push((format!("{p}.self_attn.k_proj"), h, kv, self.qkv_bias));
            out.push((format!("{p}.self_attn.v_proj"), h, kv, self.qkv_bias));
            out.push((format!("{p}.self_attn.o_proj"), q, h, self.o_bias));
            out.push((format!("{p}.mlp.gate_proj"), h, i, self.mlp_bias));
            out.push((format!("{p}.mlp.up_proj"), h, i, self.mlp_bias));
            out.push((format!("{p}.mlp.down_proj"), i, h, self.mlp_bias));
        }
        out
    }
}
