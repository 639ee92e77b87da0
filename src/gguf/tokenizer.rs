//! `tokenizer.json` and `tokenizer_config.json` from the `tokenizer.*` GGUF keys.
//!
//! `gpt2`-type vocabularies are byte-level BPE: the tokens and merges are stored in GPT-2's
//! byte-to-unicode spelling, so they go into a `BPE` model as they are, with the pre-tokenizer
//! llama.cpp names in `tokenizer.ggml.pre` (llama.cpp `llama-vocab.cpp`, transformers
//! `integrations/gguf/gguf_tokenizer_mapping.py`) and a `ByteLevel` decoder. Token type 3 (CONTROL)
//! becomes a special added token, type 4 (USER_DEFINED) a plain added token, as in transformers.

use serde_json::{json, Map, Value as Json};

use super::reader::{Gguf, Value};
use crate::error::GgufError;

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL` and `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The split regexes of llama.cpp's `llama-bpe` and `qwen2` pre-tokenizers, as transformers spells
/// them (`_LLAMA3_SPLIT`, qwen2 `PRETOKENIZE_REGEX`). GPT-2's own regex is `ByteLevel(use_regex)`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The two tokenizer files of a Hugging Face model folder.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    pub tokenizer: Json,
    pub tokenizer_config: Json,
    /// `tokenizer.ggml.pre`, for the conversion report.
    pub pre: String,
}

/// The vocabulary as read from the file.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i64>,
    /// Whether token i had to be respelled into the byte alphabet.
    respelled: Vec<bool>,
}

/// Builds both files. `max_len` is the model's context length (`model_max_length`).
pub fn build(gguf: &Gguf, max_len: u64) -> Result<TokenizerFiles, GgufError> {
    let model = gguf.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(tok_err(gguf, format!("tokenizer.ggml.model `{model}` is not supported (supported: gpt2, the byte-level BPE of Llama 3, SmolLM, Qwen2, GPT-2)")));
    }
    let vocab = read_vocab(gguf)?;
    let merges = read_merges(gguf)?;
    let pre = match gguf.get("tokenizer.ggml.pre") {
        Some(v) => v.as_str().unwrap_or("default").to_string(),
        None => "default".to_string(),
    };
    let added = added_tokens(&vocab);
    let flags = Flags::from_gguf(gguf)?;
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(&pre),
        "post_processor": post_processor(gguf, &vocab, flags)?,
        "decoder": byte_level(true, true),
        "model": bpe_model(&vocab, &merges),
    });
    let tokenizer_config = tokenizer_config(gguf, &vocab, &added, flags, max_len)?;
    Ok(TokenizerFiles { tokenizer, tokenizer_config, pre })
}

fn tok_err(gguf: &Gguf, message: String) -> GgufError {
    GgufError::Tokenizer { path: gguf.path.clone(), message }
}

fn read_vocab(gguf: &Gguf) -> Result<Vocab, GgufError> {
    let raw = gguf.get_array("tokenizer.ggml.tokens")?.ok_or_else(|| tok_err(gguf, "no tokenizer.ggml.tokens".into()))?;
    let tokens = strings(gguf, raw, "tokenizer.ggml.tokens")?;
    let types = match gguf.get_array("tokenizer.ggml.token_type")? {
        None => vec![1; tokens.len()],
        Some(raw) => {
            let types: Option<Vec<i64>> = raw.iter().map(|v| v.as_f64().map(|f| f as i64)).collect();
            match types {
                Some(t) if t.len() == tokens.len() => t,
                _ => return Err(tok_err(gguf, format!("tokenizer.ggml.token_type must hold {} integers", tokens.len()))),
            }
        }
    };
    let respelled = tokens.iter().map(|t| !t.chars().all(in_alphabet)).collect();
    Ok(Vocab { tokens: tokens.into_iter().map(respell).collect(), types, respelled })
}

fn strings(gguf: &Gguf, raw: &[Value], key: &str) -> Result<Vec<String>, GgufError> {
    raw.iter()
        .enumerate()
        .map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| tok_err(gguf, format!("{key}[{i}] is a {}, not a STRING", v.type_name()))))
        .collect()
}

/// Merges `"a b"` as pairs, split on the one space (byte-level tokens never contain one).
fn read_merges(gguf: &Gguf) -> Result<Vec<(String, String)>, GgufError> {
    let raw = gguf.get_array("tokenizer.ggml.merges")?.ok_or_else(|| tok_err(gguf, "a gpt2 tokenizer needs tokenizer.ggml.merges".into()))?;
    let merges = strings(gguf, raw, "tokenizer.ggml.merges")?;
    merges
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split(' ').collect::<Vec<_>>().as_slice() {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(tok_err(gguf, format!("tokenizer.ggml.merges[{i}] `{m}` is not two tokens separated by one space"))),
        })
        .collect()
}

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// for the code points 256.. in byte order.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('\u{FFFD}')
}

fn in_alphabet(c: char) -> bool {
    let cp = c as u32;
    (cp < 256 && u8::try_from(cp).is_ok_and(|b| byte_char(b) == c)) || (256..256 + 68).contains(&cp)
}

/// A token written outside the byte alphabet (a llama.cpp mislabel) is respelled byte by byte,
/// as transformers' `byte_level_tokenizer` does.
fn respell(token: String) -> String {
    if token.chars().all(in_alphabet) {
        token
    } else {
        token.bytes().map(byte_char).collect()
    }
}

/// CONTROL tokens as special, USER_DEFINED as plain added tokens. A CONTROL token that had to be
/// respelled is skipped, as transformers' `add_gguf_special_tokens` skips it (and a respelled
/// USER_DEFINED one, which its `token in vocab` test drops).
fn added_tokens(vocab: &Vocab) -> Vec<Json> {
    let entry = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special})
    };
    vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .filter(|(id, _)| !vocab.respelled[*id])
        .filter_map(|(id, (tok, &ty))| match ty {
            CONTROL => Some(entry(id, tok, true)),
            USER_DEFINED => Some(entry(id, tok, false)),
            _ => None,
        })
        .collect()
}

fn byte_level(trim_offsets: bool, use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim_offsets, "use_regex": use_regex})
}

/// The pre-tokenizer for `tokenizer.ggml.pre` (llama.cpp `llama-vocab.cpp` regexes per name).
fn pre_tokenizer(pre: &str) -> Json {
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false, false),
        ]})
    };
    match pre {
        // SmolLM's own tokenizer.json: digits one by one, then the GPT-2 regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true, true),
        ]}),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT),
        "gpt-2" | "default" => byte_level(true, true),
        other => {
            tracing::warn!("tokenizer.ggml.pre `{other}` is not known; using the GPT-2 pre-tokenizer");
            byte_level(true, true)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Flags {
    add_bos: bool,
    add_eos: bool,
}

impl Flags {
    fn from_gguf(gguf: &Gguf) -> Result<Self, GgufError> {
        Ok(Self {
            add_bos: gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            add_eos: gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        })
    }
}

/// The token string for id key `key`, if the file names one.
fn special(gguf: &Gguf, vocab: &Vocab, key: &str) -> Result<Option<(u64, String)>, GgufError> {
    match gguf.get_u64(key)? {
        None => Ok(None),
        Some(id) => match vocab.tokens.get(id as usize) {
            Some(tok) => Ok(Some((id, tok.clone()))),
            None => Err(tok_err(gguf, format!("{key} = {id} is outside the vocabulary of {}", vocab.tokens.len()))),
        },
    }
}

/// BOS/EOS added by a template when the file asks for them, else ByteLevel offsets only.
fn post_processor(gguf: &Gguf, vocab: &Vocab, flags: Flags) -> Result<Json, GgufError> {
    if !flags.add_bos && !flags.add_eos {
        return Ok(byte_level(false, true));
    }
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    let mut push = |key: &str, seq: &mut Vec<Json>, seq2: Option<&mut Vec<Json>>| -> Result<(), GgufError> {
        let (id, tok) = special(gguf, vocab, key)?.ok_or_else(|| tok_err(gguf, format!("add_bos/add_eos set but {key} missing")))?;
        let item = json!({"SpecialToken": {"id": tok, "type_id": 0}});
        seq.push(item.clone());
        if let Some(s) = seq2 {
            s.push(item);
        }
        specials.insert(tok.clone(), json!({"id": tok, "ids": [id], "tokens": [tok]}));
        Ok(())
    };
    let (seq_a, seq_b) = (json!({"Sequence": {"id": "A", "type_id": 0}}), json!({"Sequence": {"id": "B", "type_id": 1}}));
    if flags.add_bos {
        push("tokenizer.ggml.bos_token_id", &mut single, Some(&mut pair))?;
    }
    single.push(seq_a.clone());
    pair.push(seq_a);
    pair.push(seq_b);
    if flags.add_eos {
        push("tokenizer.ggml.eos_token_id", &mut single, Some(&mut pair))?;
    }
    Ok(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}))
}

fn bpe_model(vocab: &Vocab, merges: &[(String, String)]) -> Json {
    // A token spelled twice keeps its last id, as Python's dict comprehension in transformers.
    let mut ids = Map::new();
    for (id, tok) in vocab.tokens.iter().enumerate() {
        ids.insert(tok.clone(), json!(id));
    }
    json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": null,
        "continuing_subword_prefix": "",
        "end_of_word_suffix": "",
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": false,
        "vocab": ids,
        "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
    })
}

/// `tokenizer_config.json`: special tokens, BOS/EOS flags and the chat template.
fn tokenizer_config(gguf: &Gguf, vocab: &Vocab, added: &[Json], flags: Flags, max_len: u64) -> Result<Json, GgufError> {
    let name = |key: &str| -> Result<Json, GgufError> { Ok(special(gguf, vocab, key)?.map_or(Json::Null, |(_, t)| json!(t))) };
    let decoder: Map<String, Json> = added
        .iter()
        .filter_map(|t| {
            let mut t = t.as_object()?.clone();
            let id = t.remove("id")?;
            Some((id.to_string(), Json::Object(t)))
        })
        .collect();
    let chat_template = match gguf.get("tokenizer.chat_template") {
        Some(v) => json!(v.as_str().ok_or_else(|| tok_err(gguf, "tokenizer.chat_template is not a string".into()))?),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2_bytes_to_unicode() {
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(b' '), '\u{120}'); // Ġ
        assert_eq!(byte_char(b'\n'), '\u{10A}'); // Ċ
        assert_eq!(byte_char(0xAD), '\u{143}'); // the soft hyphen is the last remapped byte
        let all: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
        assert!(all.iter().all(|&c| in_alphabet(c)));
    }

    #[test]
    fn tokens_outside_the_byte_alphabet_are_respelled() {
        assert_eq!(respell("<|im_start|>".into()), "<|im_start|>");
        assert_eq!(respell("a b".into()), "a\u{120}b");
    }
}
