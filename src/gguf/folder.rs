//! The small files of a Hugging Face folder built from a GGUF file's metadata: `config.json`,
//! `generation_config.json` and the tokenizer, shared by `peft convert gguf` ([`super::convert`])
//! and the prepared folder of `--model file.gguf` ([`super::base`]).
//!
//! The tokenizer is `tokenizer.json` ([`super::tokenizer`]), except for ChatGLM3's SentencePiece
//! vocabulary (`chatglm-spm`), which becomes the `tokenizer.model` THUDM's tokenizer and ours read
//! ([`super::spm_model`]), with a `tokenizer_config.json` naming `ChatGLMTokenizer`.

use serde_json::{json, Value as Json};

use super::config::{generation_config_json, SpecialIds};
use super::params::ModelParams;
use super::reader::{Gguf, Value};
use super::{spm_model, tokenizer};
use crate::error::GgufError;

/// The files, and `tokenizer.ggml.model/pre` for the report.
pub struct FolderFiles {
    pub files: Vec<(&'static str, Vec<u8>)>,
    pub tokenizer: String,
}

fn pretty(v: &Json) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

/// Builds every file; the tokenizer is loaded back once, so anything the `tokenizers` crate (and
/// so transformers) would reject fails here, before anything is written.
pub fn metadata_files(
    gguf: &Gguf,
    params: &ModelParams,
    dtype: &str,
) -> Result<FolderFiles, GgufError> {
    let ids = SpecialIds::from_gguf(gguf)?;
    let mut files = vec![
        ("config.json", pretty(&params.config_json(ids, dtype))),
        (
            "generation_config.json",
            pretty(&generation_config_json(ids)),
        ),
    ];
    let pre = gguf.get("tokenizer.ggml.pre").and_then(Value::as_str);
    let tokenizer = if matches!(params, ModelParams::ChatGlm(_)) && pre == Some("chatglm-spm") {
        let (model, names) = spm_model::chatglm3_model(gguf)?;
        crate::tokenizer_spm::SpModel::parse(&model)
            .and_then(|m| m.tokenizer_json(true))
            .and_then(|j| {
                j.to_string()
                    .parse::<tokenizers::Tokenizer>()
                    .map_err(|e| e.to_string())
            })
            .map_err(|message| {
                tokenizer::tok_err(
                    gguf,
                    format!("the built tokenizer.model does not load: {message}"),
                )
            })?;
        files.push(("tokenizer.model", model));
        files.push((
            "tokenizer_config.json",
            pretty(&chatglm3_tokenizer_config(gguf, &names, params)?),
        ));
        "llama/chatglm-spm".to_string()
    } else {
        let tok = tokenizer::build(gguf, params.context_length())?;
        let tokenizer_json = tok.tokenizer.to_string();
        tokenizers::Tokenizer::from_bytes(tokenizer_json.as_bytes()).map_err(|e| {
            GgufError::Tokenizer {
                path: gguf.path.clone(),
                message: format!("the built tokenizer.json does not load: {e}"),
            }
        })?;
        files.push(("tokenizer.json", tokenizer_json.into_bytes()));
        files.push(("tokenizer_config.json", pretty(&tok.tokenizer_config)));
        tok.kind
    };
    Ok(FolderFiles { files, tokenizer })
}

/// THUDM/chatglm3-6b's tokenizer_config.json, less its `auto_map` (the Python tokenizer is not
/// ours to ship), with the file's chat template and special tokens.
fn chatglm3_tokenizer_config(
    gguf: &Gguf,
    names: &[String],
    params: &ModelParams,
) -> Result<Json, GgufError> {
    // The names our tokenizer gives these ids (padding ids have none).
    let name = |key: &str| -> Result<Json, GgufError> {
        Ok(gguf
            .get_u64(key)?
            .and_then(|id| names.get(id as usize))
            .map_or(Json::Null, |s| json!(s)))
    };
    let chat_template = match gguf.get("tokenizer.chat_template") {
        Some(v) => json!(v.as_str().ok_or_else(|| tokenizer::tok_err(
            gguf,
            "tokenizer.chat_template is not a string".into()
        ))?),
        None => Json::Null,
    };
    Ok(json!({
        "tokenizer_class": "ChatGLMTokenizer",
        "do_lower_case": false,
        "remove_space": false,
        "padding_side": "left",
        "clean_up_tokenization_spaces": false,
        "eos_token": name("tokenizer.ggml.eos_token_id")?,
        "pad_token": name("tokenizer.ggml.padding_token_id")?,
        "unk_token": name("tokenizer.ggml.unknown_token_id")?,
        "chat_template": chat_template,
        "model_max_length": params.context_length(),
    }))
}
