//! The `tokenizer.*` keys from a model folder, as convert_hf_to_gguf.py writes them:
//! a byte-level BPE `tokenizer.json` becomes `tokenizer.ggml.model = gpt2` with its merges
//! (`_set_vocab_gpt2`); a SentencePiece `tokenizer.model`, which the converter tries first,
//! becomes `llama` with scores and piece types (`_set_vocab_sentencepiece`). The chat template,
//! the special ids and the bos/eos flags are embedded too (gguf-py `SpecialVocab`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use super::arch::Arch;
use super::error::ExportError;
use crate::gguf::reader::Value;

/// gguf-py `TokenType`.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The split regex of Llama 3's (and GLM-4's) tokenizer.json, which llama.cpp knows as
/// `llama-bpe` (and, for `chatglm`, `chatglm-bpe`: llama-vocab.cpp `LLAMA_VOCAB_PRE_TYPE_CHATGLM4`,
/// the same regex with no BOS).
const LLAMA3_SPLIT: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// The embedded tokenizer, and what the Modelfile needs from it.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub keys: Vec<(String, Value)>,
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.model/pre`, for the report.
    pub kind: String,
    pub eos: Option<String>,
}

fn read_json(path: &Path) -> Result<Json, ExportError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ExportError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_str(&text).map_err(|e| ExportError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_str(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// The pre-tokenizer llama.cpp should use (`tokenizer.ggml.pre`). llama.cpp names them by a hash
/// of their output (convert_hf_to_gguf_update.py); we recognise the layouts we meet by structure.
fn pre_name(pre: Option<&Json>, chatglm: bool) -> &'static str {
    let Some(pre) = pre else { return "default" };
    let ty = |v: &Json| v.get("type").and_then(Json::as_str).map(str::to_string);
    match ty(pre).as_deref() {
        Some("ByteLevel") => "gpt-2",
        Some("Sequence") => {
            let parts: Vec<Json> = pre
                .get("pretokenizers")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            let kinds: Vec<Option<String>> = parts.iter().map(ty).collect();
            let digits_each = parts
                .first()
                .and_then(|p| p.get("individual_digits"))
                .and_then(Json::as_bool)
                == Some(true);
            let split_regex = parts
                .first()
                .and_then(|p| p.get("pattern"))
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str);
            if kinds == [Some("Digits".into()), Some("ByteLevel".into())] && digits_each {
                // SmolLM / SmolLM2: `\p{N}` split before the GPT-2 regex.
                "smollm"
            } else if kinds == [Some("Split".into()), Some("ByteLevel".into())]
                && split_regex == Some(LLAMA3_SPLIT)
            {
                if chatglm {
                    "chatglm-bpe"
                } else {
                    "llama-bpe"
                }
            } else {
                "default"
            }
        }
        _ => "default",
    }
}

/// Reads the tokenizer of `dir`; the vocabulary size from config.json pads the token list.
pub fn read(dir: &Path, arch: &Arch, config: &Json) -> Result<Vocab, ExportError> {
    let vocab_size = arch.vocab();
    let chatglm = matches!(arch, Arch::ChatGlm(_));
    let config_path = dir.join("tokenizer_config.json");
    let tok_config = if config_path.is_file() {
        read_json(&config_path)?
    } else {
        Json::Null
    };
    let spm_path = dir.join("tokenizer.model");
    let (mut keys, ids, kind) = if spm_path.is_file() {
        sentencepiece(&spm_path, dir, vocab_size, chatglm)?
    } else {
        byte_level_bpe(&dir.join("tokenizer.json"), vocab_size, chatglm)?
    };
    let special = |name: &str, config_key: &str| -> Option<u32> {
        token_str(tok_config.get(name))
            .and_then(|t| ids.get(&t).copied())
            .or_else(|| {
                let v = config.get(config_key)?;
                v.as_u64()
                    .or_else(|| v.as_array()?.first()?.as_u64())
                    .map(|v| v as u32)
            })
    };
    for (key, name, config_key) in [
        ("bos_token_id", "bos_token", "bos_token_id"),
        ("eos_token_id", "eos_token", "eos_token_id"),
        ("unknown_token_id", "unk_token", "unk_token_id"),
        ("padding_token_id", "pad_token", "pad_token_id"),
    ] {
        if let Some(id) = special(name, config_key) {
            keys.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    for flag in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = tok_config.get(flag).and_then(Json::as_bool) {
            keys.push((format!("tokenizer.ggml.{flag}"), Value::Bool(b)));
        }
    }
    let chat_template = chat_template(dir, &tok_config)?;
    if let Some(t) = &chat_template {
        keys.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(Vocab {
        keys,
        chat_template,
        kind,
        eos: token_str(tok_config.get("eos_token")),
    })
}

/// `chat_template.jinja` (transformers 5), else tokenizer_config.json's `chat_template` (a string,
/// or a list of named templates: the `default` one).
fn chat_template(dir: &Path, tok_config: &Json) -> Result<Option<String>, ExportError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|cause| ExportError::Io { path: jinja, cause });
    }
    Ok(match tok_config.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    })
}

type Parts = (Vec<(String, Value)>, HashMap<String, u32>, String);

/// Tokens padded to `vocab_size` with `[PAD{i}]` (USER_DEFINED), as `get_vocab_base` does.
fn pad_tokens(tokens: &mut Vec<Option<(String, i32)>>, vocab_size: u32) {
    if tokens.len() < vocab_size as usize {
        tokens.resize(vocab_size as usize, None);
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_none() {
            *t = Some((format!("[PAD{i}]"), USER_DEFINED));
        }
    }
}

fn byte_level_bpe(path: &Path, vocab_size: u32, chatglm: bool) -> Result<Parts, ExportError> {
    let bad = |message: String| ExportError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(bad(
            "no tokenizer.json or tokenizer.model in the model folder".into(),
        ));
    }
    let j = read_json(path)?;
    let model = &j["model"];
    if model.get("type").and_then(Json::as_str) != Some("BPE")
        || model.get("byte_fallback").and_then(Json::as_bool) == Some(true)
    {
        return Err(bad(format!(
            "only byte-level BPE tokenizer.json (GPT-2 style) or a SentencePiece tokenizer.model can be exported; found model type {}",
            model.get("type").unwrap_or(&Json::Null)
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: u64, token: &str, ty: i32| {
        let id = id as usize;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((token.to_string(), ty));
    };
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("vocab id of `{token}`")))?;
        put(id, token, NORMAL);
    }
    for t in j["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            continue;
        };
        let special = t["special"].as_bool().unwrap_or(false);
        put(id, content, if special { CONTROL } else { USER_DEFINED });
    }
    pad_tokens(&mut tokens, vocab_size);
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Value::String(s.clone()),
            other => Value::String(
                other
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .filter_map(Json::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            ),
        })
        .collect();
    let pre = pre_name(j.get("pre_tokenizer").filter(|p| !p.is_null()), chatglm);
    let (keys, ids) = token_keys("gpt2", pre, tokens.into_iter().flatten().collect(), None);
    let mut keys = keys;
    keys.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
    Ok((keys, ids, format!("gpt2/{pre}")))
}

/// `tokenizer.ggml.{model, pre, tokens, [scores], token_type}` and the token → id map.
fn token_keys(
    model: &str,
    pre: &str,
    tokens: Vec<(String, i32)>,
    scores: Option<Vec<f32>>,
) -> (Vec<(String, Value)>, HashMap<String, u32>) {
    let ids = tokens
        .iter()
        .enumerate()
        .map(|(i, (t, _))| (t.clone(), i as u32))
        .collect();
    let mut keys = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String(model.into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                tokens
                    .iter()
                    .map(|(t, _)| Value::String(t.clone()))
                    .collect(),
            ),
        ),
    ];
    if let Some(scores) = scores {
        keys.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ));
    }
    keys.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(tokens.iter().map(|(_, ty)| Value::I32(*ty)).collect()),
    ));
    (keys, ids)
}

/// SentencePiece pieces keep their scores; sentencepiece's piece types (NORMAL 1, UNKNOWN 2,
/// CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6) are gguf-py's `TokenType` values.
///
/// ChatGLM3 (`chatglm` with no tokenizer.json, as our tokenizer reads it): the converter's
/// `set_vocab_chatglm3`: pieces 0/1/2 renamed `<unk>`/`<bos>`/`<eos>`, THUDM's specials
/// (`[MASK] [gMASK] … <|observation|>`) after the model as CONTROL with score 0, the padding as
/// `[PAD{id}]` UNUSED with score 0, `tokenizer.ggml.pre = chatglm-spm`.
fn sentencepiece(
    path: &Path,
    dir: &Path,
    vocab_size: u32,
    chatglm: bool,
) -> Result<Parts, ExportError> {
    let bytes = std::fs::read(path).map_err(|cause| ExportError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let model =
        crate::tokenizer_spm::SpModel::parse(&bytes).map_err(|message| ExportError::Tokenizer {
            path: path.to_path_buf(),
            message,
        })?;
    let mut tokens: Vec<Option<(String, i32)>> = model
        .pieces
        .iter()
        .map(|p| Some((p.piece.clone(), p.kind as i32)))
        .collect();
    let mut scores: Vec<f32> = model.pieces.iter().map(|p| p.score).collect();
    let added = dir.join("tokenizer.json");
    if chatglm && !added.is_file() {
        return chatglm3(&model, vocab_size);
    }
    if added.is_file() {
        for t in read_json(&added)?["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
                continue;
            };
            if id as usize >= tokens.len() {
                tokens.resize(id as usize + 1, None);
                scores.resize(id as usize + 1, -1000.0);
                let special = t["special"].as_bool().unwrap_or(false);
                tokens[id as usize] =
                    Some((content.into(), if special { CONTROL } else { USER_DEFINED }));
            }
        }
    }
    pad_tokens(&mut tokens, vocab_size);
    scores.resize(tokens.len(), -1000.0);
    let (mut keys, ids) = token_keys(
        "llama",
        "default",
        tokens.into_iter().flatten().collect(),
        Some(scores),
    );
    keys.push((
        "tokenizer.ggml.add_space_prefix".into(),
        Value::Bool(model.add_dummy_prefix),
    ));
    Ok((keys, ids, "llama/default".into()))
}

fn chatglm3(model: &crate::tokenizer_spm::SpModel, vocab_size: u32) -> Result<Parts, ExportError> {
    let mut tokens: Vec<(String, i32)> = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = match i {
                0 => "<unk>".to_string(),
                1 => "<bos>".to_string(),
                2 => "<eos>".to_string(),
                _ => p.piece.clone(),
            };
            (name, p.kind as i32)
        })
        .collect();
    let mut scores: Vec<f32> = model.pieces.iter().map(|p| p.score).collect();
    for s in crate::tokenizer_spm::CHATGLM_SPECIALS {
        tokens.push((s.to_string(), CONTROL));
        scores.push(0.0);
    }
    for i in tokens.len()..vocab_size as usize {
        tokens.push((format!("[PAD{i}]"), UNUSED));
        scores.push(0.0);
    }
    let (mut keys, ids) = token_keys("llama", "chatglm-spm", tokens, Some(scores));
    keys.push((
        "tokenizer.ggml.add_space_prefix".into(),
        Value::Bool(model.add_dummy_prefix),
    ));
    Ok((keys, ids, "llama/chatglm-spm".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn smollm2_and_gpt2_pre_tokenizers_are_recognised() {
        let smol = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false}]});
        assert_eq!(pre_name(Some(&smol), false), "smollm");
        assert_eq!(pre_name(Some(&json!({"type": "ByteLevel"})), true), "gpt-2");
        assert_eq!(
            pre_name(Some(&json!({"type": "Whitespace"})), false),
            "default"
        );
        let llama3 = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]});
        assert_eq!(pre_name(Some(&llama3), false), "llama-bpe");
        assert_eq!(pre_name(Some(&llama3), true), "chatglm-bpe");
    }
}
