//! `config.json` → the `general.*` and `llama.*` keys, as llama.cpp's `convert_hf_to_gguf.py`
//! writes them for `LlamaForCausalLM` (`TextModel.set_gguf_parameters` and
//! `LlamaModel.set_gguf_parameters` in conversion/base.py and conversion/llama.py).

use std::path::Path;

use serde_json::Value as Json;

use super::error::ExportError;
use crate::gguf::reader::Value;
use crate::models::rope::RopeScaling;

/// The Llama hyperparameters the export needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub layers: u32,
    pub hidden: u32,
    pub ffn: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub vocab: u32,
    pub context: u32,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub tied: bool,
    /// `rope_scaling` / `rope_parameters`, as our Llama model reads it.
    pub rope_scaling: RopeScaling,
}

fn get<'a>(c: &'a Json, keys: &[&str]) -> Option<&'a Json> {
    keys.iter().find_map(|k| c.get(*k).filter(|v| !v.is_null()))
}

impl Hparams {
    /// Reads `config.json`; anything but a Llama is refused, and so is a rotary scaling other than
    /// `linear` and `llama3` (those our model runs, read by our Llama config parser).
    pub fn from_config(path: &Path, c: &Json) -> Result<Self, ExportError> {
        let bad = |message: String| ExportError::Config {
            path: path.to_path_buf(),
            message,
        };
        let model_type = c.get("model_type").and_then(Json::as_str).unwrap_or("");
        if model_type != "llama" {
            return Err(ExportError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                architecture: if model_type.is_empty() {
                    "(no model_type)".into()
                } else {
                    model_type.into()
                },
            });
        }
        let int = |keys: &[&str]| -> Result<u32, ExportError> {
            get(c, keys)
                .and_then(Json::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad(format!("missing or invalid `{}`", keys[0])))
        };
        let rope = c.get("rope_parameters");
        let scaling = get(c, &["rope_scaling"]).or_else(|| {
            rope.filter(|r| r.get("rope_type").and_then(Json::as_str) != Some("default"))
        });
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => {
                let map = c
                    .as_object()
                    .ok_or_else(|| bad("config.json is not an object".into()))?;
                crate::models::llama::config::LlamaConfig::from_json(map, path)
                    .map_err(|e| bad(format!("rotary scaling {s}: {e}")))?
                    .rope_scaling
            }
        };
        let rope_theta = get(c, &["rope_theta"])
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(Json::as_f64)
            .unwrap_or(10000.0) as f32;
        let (hidden, heads) = (int(&["hidden_size"])?, int(&["num_attention_heads"])?);
        if heads == 0 {
            return Err(bad("num_attention_heads is 0".into()));
        }
        let head_dim = match get(c, &["head_dim"]) {
            Some(_) => int(&["head_dim"])?,
            None => hidden / heads,
        };
        Ok(Self {
            layers: int(&["num_hidden_layers"])?,
            hidden,
            ffn: int(&["intermediate_size"])?,
            heads,
            kv_heads: get(c, &["num_key_value_heads"])
                .map(|_| int(&["num_key_value_heads"]))
                .transpose()?
                .unwrap_or(heads),
            head_dim,
            vocab: int(&["vocab_size"])?,
            context: int(&["max_position_embeddings"])?,
            rope_theta,
            rms_eps: get(c, &["rms_norm_eps"])
                .and_then(Json::as_f64)
                .unwrap_or(1e-6) as f32,
            tied: c
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            rope_scaling,
        })
    }

    /// Llama 3.1's `rope_freqs` tensor (`LlamaModel.generate_extra_tensors`): per frequency the
    /// divisor llama.cpp applies (`ggml_rope_ext`'s `freq_factors`): 1 for short wavelengths,
    /// `factor` for long ones, `1 / ((1 − smooth) / factor + smooth)` between. Computed in f32 as
    /// the converter's torch code does. `None` without llama3 scaling.
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: old,
        } = self.rope_scaling
        else {
            return None;
        };
        let dim = self.head_dim as usize;
        let (low_wavelen, high_wavelen) = (old / low, old / high);
        Some(
            (0..dim)
                .step_by(2)
                .map(|i| {
                    let freq = 1.0 / self.rope_theta.powf(i as f32 / dim as f32);
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    }
                })
                .collect(),
        )
    }

    /// The `llama.*` keys in convert_hf_to_gguf.py's order.
    pub fn llama_keys(&self) -> Vec<(String, Value)> {
        let k = |name: &str| format!("llama.{name}");
        let mut keys = vec![
            (k("block_count"), Value::U32(self.layers)),
            (k("context_length"), Value::U32(self.context)),
            (k("embedding_length"), Value::U32(self.hidden)),
            (k("feed_forward_length"), Value::U32(self.ffn)),
            (k("attention.head_count"), Value::U32(self.heads)),
            (k("attention.head_count_kv"), Value::U32(self.kv_heads)),
            (k("rope.freq_base"), Value::F32(self.rope_theta)),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(self.rms_eps),
            ),
            (k("attention.key_length"), Value::U32(self.head_dim)),
            (k("attention.value_length"), Value::U32(self.head_dim)),
            (k("vocab_size"), Value::U32(self.vocab)),
            (k("rope.dimension_count"), Value::U32(self.head_dim)),
        ];
        // `TextModel.set_gguf_parameters`: linear scaling is two keys; llama3 is the
        // `rope_freqs` tensor instead ([`Self::rope_freqs`]).
        if let RopeScaling::Linear { factor } = self.rope_scaling {
            keys.push((k("rope.scaling.type"), Value::String("linear".into())));
            keys.push((k("rope.scaling.factor"), Value::F32(factor)));
        }
        keys
    }
}

/// `general.*` keys: architecture, type (`model` or `adapter`), name, and for a model the file
/// type (`LlamaFileType`) and `general.quantization_version = 2` (gguf-py `GGML_QUANT_VERSION`).
pub fn general_keys(
    arch: &str,
    name: &str,
    kind: &str,
    file_type: Option<u32>,
) -> Vec<(String, Value)> {
    let mut keys = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.type".to_string(), Value::String(kind.into())),
        ("general.name".to_string(), Value::String(name.into())),
    ];
    if let Some(ft) = file_type {
        keys.push(("general.file_type".into(), Value::U32(ft)));
        keys.push(("general.quantization_version".into(), Value::U32(2)));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_llama_config_gives_convert_hf_to_gguf_keys() {
        let c = json!({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
            "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "rope_scaling": null});
        let h = Hparams::from_config(Path::new("config.json"), &c).unwrap();
        assert_eq!((h.heads, h.kv_heads, h.head_dim, h.tied), (9, 3, 64, true));
        let keys = h.llama_keys();
        assert!(keys.contains(&("llama.rope.freq_base".into(), Value::F32(100000.0))));
        assert!(keys.contains(&("llama.attention.head_count_kv".into(), Value::U32(3))));
    }

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let c = json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512,
            "max_position_embeddings": 256,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}});
        let h = Hparams::from_config(Path::new("c"), &c).unwrap();
        assert_eq!((h.rope_theta, h.head_dim, h.kv_heads), (10000.0, 16, 4));
    }

    #[test]
    fn other_architectures_and_unknown_rope_scalings_are_refused_by_name() {
        let e = Hparams::from_config(Path::new("c"), &json!({"model_type": "gpt2"}));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("`gpt2` cannot be exported"));
        let c = json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512,
            "max_position_embeddings": 256, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}});
        let e = Hparams::from_config(Path::new("c"), &c).unwrap_err();
        assert!(e.to_string().contains("rotary scaling"), "{e}");
    }

    #[test]
    fn llama3_scaling_gives_llama_cpp_rope_factors() {
        // Llama 3.1's values: head_dim 128, theta 500000, factor 8, 1 / 4, 8192.
        let c = json!({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 512, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let h = Hparams::from_config(Path::new("c"), &c).unwrap();
        let f = h.rope_freqs().unwrap();
        assert_eq!(f.len(), 64);
        // Short wavelengths untouched, the longest divided by the full factor, smooth between.
        assert_eq!((f[0], f[63]), (1.0, 8.0));
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        assert!(!h.llama_keys().iter().any(|(k, _)| k.contains("scaling")));
        let mut linear = c.clone();
        linear["rope_scaling"] = json!({"rope_type": "linear", "factor": 4.0});
        let h = Hparams::from_config(Path::new("c"), &linear).unwrap();
        assert!(h.rope_freqs().is_none());
        assert!(h
            .llama_keys()
            .contains(&("llama.rope.scaling.factor".into(), Value::F32(4.0))));
    }
}
