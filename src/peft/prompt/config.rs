//! Prompt-learning options as PEFT's configs name them (PEFT.md §1.6, §1.7): PROMPT_TUNING,
//! P_TUNING, PREFIX_TUNING (also P-tuning v2) and ADAPTION_PROMPT.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::AdapterError;
use crate::peft::config::PeftType;

/// `prompt_tuning_init` (prompt_tuning/config.py).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInit {
    /// N(0, 1), `nn.Embedding`'s default.
    Random,
    /// The word embeddings of `prompt_tuning_init_text`, tokenized (special tokens included) and
    /// repeated / cut to `num_virtual_tokens`. `ids` are filled by the caller that holds the
    /// tokenizer (`peft train`), before injection.
    Text { text: String, ids: Option<Vec<i64>> },
    /// Word embeddings of random vocabulary ids.
    SampleVocab,
}

/// `encoder_reparameterization_type` (p_tuning/config.py).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reparam {
    Mlp,
    Lstm,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PromptKind {
    PromptTuning {
        init: PromptInit,
    },
    PTuning {
        reparam: Reparam,
        /// None -> token_dim.
        encoder_hidden_size: Option<usize>,
        /// LSTM layers (ignored by MLP, as PEFT).
        encoder_num_layers: usize,
        encoder_dropout: f64,
    },
    Prefix {
        prefix_projection: bool,
        encoder_hidden_size: Option<usize>,
        /// `init_weights: "zero"`: the prefix starts as a no-op.
        zero_init: bool,
    },
    Adaption {
        adapter_len: usize,
        adapter_layers: usize,
    },
}

/// The prompt-learning part of an adapter config.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptOptions {
    pub peft_type: PeftType,
    /// `num_virtual_tokens` (prompt, P-tuning, prefix); `adapter_len` for ADAPTION_PROMPT.
    pub num_virtual_tokens: usize,
    pub kind: PromptKind,
}

fn err(path: &Path, message: impl Into<String>) -> AdapterError {
    AdapterError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn positive(raw: &Map<String, Value>, key: &str, path: &Path) -> Result<usize, AdapterError> {
    match raw.get(key) {
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| {
                err(
                    path,
                    format!("`{key}` must be a positive integer, found {v}"),
                )
            }),
        None => Err(err(path, format!("`{key}` is required"))),
    }
}

fn optional(
    raw: &Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<usize>, AdapterError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => positive(raw, key, path).map(Some),
    }
}

fn string<'a>(raw: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    raw.get(key).and_then(Value::as_str)
}

impl PromptOptions {
    /// Parses the method fields of a prompt-learning config.
    pub fn parse(
        peft_type: PeftType,
        raw: &Map<String, Value>,
        path: &Path,
    ) -> Result<Self, AdapterError> {
        if raw.get("modules_to_save").is_some_and(|v| !v.is_null()) {
            return Err(AdapterError::Unsupported(format!(
                "{}: `modules_to_save` with {} is not supported",
                path.display(),
                peft_type.as_str()
            )));
        }
        if raw
            .get("num_transformer_submodules")
            .and_then(Value::as_u64)
            .is_some_and(|n| n != 1)
        {
            return Err(AdapterError::Unsupported(format!(
                "{}: num_transformer_submodules != 1 (encoder-decoder models) is not supported",
                path.display()
            )));
        }
        let (num_virtual_tokens, kind) = match peft_type {
            PeftType::PromptTuning => {
                let init = match string(raw, "prompt_tuning_init").unwrap_or("RANDOM") {
                    "RANDOM" => PromptInit::Random,
                    "SAMPLE_VOCAB" => PromptInit::SampleVocab,
                    "TEXT" => match string(raw, "prompt_tuning_init_text") {
                        Some(t) if !t.is_empty() => PromptInit::Text { text: t.to_string(), ids: None },
                        _ => return Err(err(path, "prompt_tuning_init TEXT needs `prompt_tuning_init_text` (the text whose token embeddings start the prompt)")),
                    },
                    other => return Err(err(path, format!("`prompt_tuning_init` must be RANDOM, TEXT or SAMPLE_VOCAB, found {other:?}"))),
                };
                (
                    positive(raw, "num_virtual_tokens", path)?,
                    PromptKind::PromptTuning { init },
                )
            }
            PeftType::PTuning => {
                let reparam = match string(raw, "encoder_reparameterization_type").unwrap_or("MLP") {
                    "MLP" => Reparam::Mlp,
                    "LSTM" => Reparam::Lstm,
                    other => return Err(err(path, format!("`encoder_reparameterization_type` must be MLP or LSTM, found {other:?}"))),
                };
                let dropout = raw
                    .get("encoder_dropout")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                if !(0.0..1.0).contains(&dropout) {
                    return Err(err(
                        path,
                        format!("`encoder_dropout` must be in [0, 1), found {dropout}"),
                    ));
                }
                let kind = PromptKind::PTuning {
                    reparam,
                    encoder_hidden_size: optional(raw, "encoder_hidden_size", path)?,
                    encoder_num_layers: optional(raw, "encoder_num_layers", path)?.unwrap_or(2),
                    encoder_dropout: dropout,
                };
                (positive(raw, "num_virtual_tokens", path)?, kind)
            }
            PeftType::PrefixTuning => {
                let zero_init = match raw.get("init_weights") {
                    None | Some(Value::Null) => false,
                    Some(Value::String(s)) if s == "zero" => true,
                    Some(v) => {
                        return Err(err(
                            path,
                            format!("`init_weights` must be null or \"zero\", found {v}"),
                        ))
                    }
                };
                let kind = PromptKind::Prefix {
                    prefix_projection: raw
                        .get("prefix_projection")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    encoder_hidden_size: optional(raw, "encoder_hidden_size", path)?,
                    zero_init,
                };
                (positive(raw, "num_virtual_tokens", path)?, kind)
            }
            PeftType::AdaptionPrompt => {
                if let Some(t) = raw.get("target_modules").filter(|v| !v.is_null()) {
                    if t.as_str() != Some("self_attn") {
                        return Err(AdapterError::Unsupported(format!(
                            "{}: ADAPTION_PROMPT target_modules {t} (Llama wraps \"self_attn\")",
                            path.display()
                        )));
                    }
                }
                let len = positive(raw, "adapter_len", path)?;
                let kind = PromptKind::Adaption {
                    adapter_len: len,
                    adapter_layers: positive(raw, "adapter_layers", path)?,
                };
                (len, kind)
            }
            other => {
                return Err(AdapterError::Unsupported(format!(
                    "{} is not a prompt-learning method",
                    other.as_str()
                )))
            }
        };
        Ok(Self {
            peft_type,
            num_virtual_tokens,
            kind,
        })
    }
}

/// PEFT 0.21.2's keys and defaults for a prompt-learning config (what `save_pretrained` writes).
pub fn defaults(peft_type: PeftType) -> Value {
    let common = json!({
        "modules_to_save": null, "num_attention_heads": null, "num_layers": null,
        "num_transformer_submodules": 1, "num_virtual_tokens": null, "token_dim": null,
    });
    let extra = match peft_type {
        PeftType::PromptTuning => json!({
            "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": null,
            "tokenizer_kwargs": null, "tokenizer_name_or_path": null,
        }),
        PeftType::PTuning => json!({
            "encoder_dropout": 0.0, "encoder_hidden_size": null, "encoder_num_layers": 2,
            "encoder_reparameterization_type": "MLP",
        }),
        PeftType::PrefixTuning => json!({
            "encoder_hidden_size": null, "init_weights": null, "prefix_projection": false,
        }),
        PeftType::AdaptionPrompt => {
            return json!({"adapter_layers": null, "adapter_len": null, "target_modules": "self_attn"})
        }
        _ => json!({}),
    };
    let mut out = common;
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peft::config::{AdapterConfig, Method};

    fn parse(value: Value) -> Result<AdapterConfig, AdapterError> {
        AdapterConfig::from_json(value, Path::new("adapter_config.json"))
    }

    #[test]
    fn text_init_without_text_is_refused() {
        let e = parse(json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "prompt_tuning_init": "TEXT"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prompt_tuning_init_text"), "{e}");
    }

    #[test]
    fn peft_defaults_fill_missing_fields() {
        let c = parse(json!({"peft_type": "P_TUNING", "num_virtual_tokens": 3})).unwrap();
        let Method::PromptLearning(o) = &c.method else {
            panic!("not prompt learning")
        };
        assert_eq!(
            o.kind,
            PromptKind::PTuning {
                reparam: Reparam::Mlp,
                encoder_hidden_size: None,
                encoder_num_layers: 2,
                encoder_dropout: 0.0
            }
        );
        let written: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        for key in [
            "encoder_reparameterization_type",
            "encoder_num_layers",
            "token_dim",
            "num_layers",
        ] {
            assert!(written.get(key).is_some(), "missing {key}: {written}");
        }
        assert_eq!(written["inference_mode"], true);
    }

    #[test]
    fn adaption_prompt_needs_its_length_and_layers() {
        let e = parse(json!({"peft_type": "ADAPTION_PROMPT", "adapter_len": 4}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("adapter_layers"), "{e}");
        let c =
            parse(json!({"peft_type": "ADAPTION_PROMPT", "adapter_len": 4, "adapter_layers": 2}))
                .unwrap();
        let written: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(written["target_modules"], "self_attn");
        assert!(written.get("num_virtual_tokens").is_none(), "{written}");
    }

    #[test]
    fn encoder_decoder_prompts_are_refused() {
        let e = parse(json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4, "num_transformer_submodules": 2}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_transformer_submodules"), "{e}");
    }
}
