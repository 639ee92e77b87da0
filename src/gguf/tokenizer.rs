//! `tokenizer.json` and `tokenizer_config.json` from the `tokenizer.*` GGUF keys, built as
//! transformers' own GGUF conversion builds them (integrations/gguf/gguf_tokenizer_mapping.py):
//! [`bpe`](super::bpe) for `gpt2`-type byte-level vocabularies, [`spm`](super::spm) for `llama`-type
//! SentencePiece ones. Token type 3 (CONTROL) becomes a special added token, type 4 (USER_DEFINED)
//! a plain added token, and BOS/EOS are added by a template when the file asks for them.

use serde_json::{json, Map, Value as Json};

use super::reader::{Gguf, Value};
use super::{bpe, spm};
use crate::error::GgufError;

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL` and `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The two tokenizer files of a Hugging Face model folder.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    pub tokenizer: Json,
    pub tokenizer_config: Json,
    /// `tokenizer.ggml.model` and `tokenizer.ggml.pre`, for the conversion report.
    pub kind: String,
}

/// The vocabulary as the tokenizer will spell it.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i64>,
    /// Tokens never added whole: byte-level tokens that had to be respelled.
    skip_added: Vec<bool>,
}

/// What the template adds around a sequence.
#[derive(Debug, Clone, Copy)]
struct Flags {
    add_bos: bool,
    add_eos: bool,
}

/// Builds both files. `max_len` is the model's context length (`model_max_length`).
pub fn build(gguf: &Gguf, max_len: u64) -> Result<TokenizerFiles, GgufError> {
    let model = gguf.get_str("tokenizer.ggml.model")?;
    let pre = gguf
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let raw = read_tokens(gguf)?;
    let (vocab, model_json, pre_tokenizer, decoder) = match model {
        "gpt2" => {
            let skip_added = raw
                .0
                .iter()
                .map(|t| !t.chars().all(bpe::in_alphabet))
                .collect();
            let tokens: Vec<String> = raw.0.iter().map(|t| bpe::respell(t)).collect();
            let merges = bpe::read_merges(gguf)?;
            let model = bpe::model(&tokens, &merges);
            (
                Vocab {
                    tokens,
                    types: raw.1,
                    skip_added,
                },
                model,
                bpe::pre_tokenizer(&pre),
                bpe::decoder(),
            )
        }
        "llama" => {
            let scores = read_scores(gguf, raw.0.len())?;
            let merges = spm::merges_from_scores(&raw.0, &scores);
            let model = spm::model(&raw.0, &merges);
            let skip_added = vec![false; raw.0.len()];
            (
                Vocab {
                    tokens: raw.0,
                    types: raw.1,
                    skip_added,
                },
                model,
                spm::pre_tokenizer(),
                spm::decoder(),
            )
        }
        other => {
            return Err(tok_err(gguf, format!("tokenizer.ggml.model `{other}` is not supported (supported: gpt2 byte-level BPE, llama SentencePiece BPE)")));
        }
    };
    // transformers adds BOS to a SentencePiece vocabulary whose file does not say otherwise.
    let flags = Flags {
        add_bos: gguf
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(model == "llama"),
        add_eos: gguf
            .get_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false),
    };
    let added = added_tokens(gguf, &vocab)?;
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(gguf, &vocab, flags)?,
        "decoder": decoder,
        "model": model_json,
    });
    let tokenizer_config = tokenizer_config(gguf, &vocab, &added, flags, max_len)?;
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config,
        kind: format!("{model}/{pre}"),
    })
}

pub(super) fn tok_err(gguf: &Gguf, message: String) -> GgufError {
    GgufError::Tokenizer {
        path: gguf.path.clone(),
        message,
    }
}

/// Tokens as stored, and their types (NORMAL when the file has none).
fn read_tokens(gguf: &Gguf) -> Result<(Vec<String>, Vec<i64>), GgufError> {
    let raw = gguf
        .get_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| tok_err(gguf, "no tokenizer.ggml.tokens".into()))?;
    let tokens = strings(gguf, raw, "tokenizer.ggml.tokens")?;
    let types = match gguf.get_array("tokenizer.ggml.token_type")? {
        None => vec![1; tokens.len()],
        Some(raw) => match raw
            .iter()
            .map(|v| v.as_f64().map(|f| f as i64))
            .collect::<Option<Vec<i64>>>()
        {
            Some(t) if t.len() == tokens.len() => t,
            _ => {
                return Err(tok_err(
                    gguf,
                    format!(
                        "tokenizer.ggml.token_type must hold {} integers",
                        tokens.len()
                    ),
                ))
            }
        },
    };
    Ok((tokens, types))
}

fn read_scores(gguf: &Gguf, n: usize) -> Result<Vec<f32>, GgufError> {
    let raw = gguf
        .get_array("tokenizer.ggml.scores")?
        .ok_or_else(|| tok_err(gguf, "a llama tokenizer needs tokenizer.ggml.scores".into()))?;
    match raw
        .iter()
        .map(|v| v.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<f32>>>()
    {
        Some(s) if s.len() == n => Ok(s),
        _ => Err(tok_err(
            gguf,
            format!("tokenizer.ggml.scores must hold {n} numbers"),
        )),
    }
}

pub(super) fn strings(gguf: &Gguf, raw: &[Value], key: &str) -> Result<Vec<String>, GgufError> {
    raw.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                tok_err(
                    gguf,
                    format!("{key}[{i}] is a {}, not a STRING", v.type_name()),
                )
            })
        })
        .collect()
}

/// CONTROL tokens and the unknown token as special, USER_DEFINED as plain added tokens, by id.
/// As transformers' `add_gguf_special_tokens`, a byte-level token that had to be respelled is
/// skipped.
fn added_tokens(gguf: &Gguf, vocab: &Vocab) -> Result<Vec<Json>, GgufError> {
    let unk = special(gguf, vocab, "tokenizer.ggml.unknown_token_id")?.map(|(id, _)| id as usize);
    let entry = |id: usize, content: &str, special: bool| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special});
    let added = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .filter(|(id, _)| !vocab.skip_added[*id]);
    Ok(added
        .filter_map(|(id, (tok, &ty))| match ty {
            CONTROL => Some(entry(id, tok, true)),
            _ if Some(id) == unk => Some(entry(id, tok, true)),
            USER_DEFINED => Some(entry(id, tok, false)),
            _ => None,
        })
        .collect())
}

/// The `(id, token)` named by id key `key`, if the file names one.
fn special(gguf: &Gguf, vocab: &Vocab, key: &str) -> Result<Option<(u64, String)>, GgufError> {
    match gguf.get_u64(key)? {
        None => Ok(None),
        Some(id) => match vocab.tokens.get(id as usize) {
            Some(tok) => Ok(Some((id, tok.clone()))),
            None => Err(tok_err(
                gguf,
                format!(
                    "{key} = {id} is outside the vocabulary of {}",
                    vocab.tokens.len()
                ),
            )),
        },
    }
}

/// transformers' `update_post_processor`: `[BOS] $A [EOS]`, and `[BOS] $A [EOS] [BOS]:1 $B:1 [EOS]:1`.
fn post_processor(gguf: &Gguf, vocab: &Vocab, flags: Flags) -> Result<Json, GgufError> {
    let mut specials = Map::new();
    let mut piece = |key: &str, on: bool| -> Result<Option<String>, GgufError> {
        if !on {
            return Ok(None);
        }
        let (id, tok) = special(gguf, vocab, key)?
            .ok_or_else(|| tok_err(gguf, format!("the file asks for it, but {key} is missing")))?;
        specials.insert(
            tok.clone(),
            json!({"id": tok, "ids": [id], "tokens": [tok]}),
        );
        Ok(Some(tok))
    };
    let bos = piece("tokenizer.ggml.bos_token_id", flags.add_bos)?;
    let eos = piece("tokenizer.ggml.eos_token_id", flags.add_eos)?;
    let sequence = |seq: &str, type_id: u32| {
        let tok = |t: &Option<String>| {
            t.as_ref()
                .map(|t| json!({"SpecialToken": {"id": t, "type_id": type_id}}))
        };
        [
            tok(&bos),
            Some(json!({"Sequence": {"id": seq, "type_id": type_id}})),
            tok(&eos),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
    };
    let single = sequence("A", 0);
    let pair = [sequence("A", 0), sequence("B", 1)].concat();
    Ok(
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
    )
}

/// `tokenizer_config.json`: special tokens, BOS/EOS flags and the chat template.
fn tokenizer_config(
    gguf: &Gguf,
    vocab: &Vocab,
    added: &[Json],
    flags: Flags,
    max_len: u64,
) -> Result<Json, GgufError> {
    let name = |key: &str| -> Result<Json, GgufError> {
        Ok(special(gguf, vocab, key)?.map_or(Json::Null, |(_, t)| json!(t)))
    };
    let decoder: Map<String, Json> = added
        .iter()
        .filter_map(|t| {
            let mut t = t.as_object()?.clone();
            let id = t.remove("id")?;
            Some((id.to_string(), Json::Object(t)))
        })
        .collect();
    let chat_template = match gguf.get("tokenizer.chat_template") {
        Some(v) => json!(v
            .as_str()
            .ok_or_else(|| tok_err(gguf, "tokenizer.chat_template is not a string".into()))?),
        None => Json::Null,
    };
    Ok(json!({
        "add_bos_token": flags.add_bos,
        "add_eos_token": flags.add_eos,
        "added_tokens_decoder": decoder,
        "bos_token": name("tokenizer.ggml.bos_token_id")?,
        "eos_token": name("tokenizer.ggml.eos_token_id")?,
        "unk_token": name("tokenizer.ggml.unknown_token_id")?,
        "pad_token": name("tokenizer.ggml.padding_token_id")?,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": false,
        "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }))
}
