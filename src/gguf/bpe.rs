//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): tokens and merges are stored in GPT-2's
//! byte-to-unicode spelling, so they go into a `BPE` model as they are, behind the pre-tokenizer
//! llama.cpp names in `tokenizer.ggml.pre` (llama.cpp `llama-vocab.cpp`; transformers
//! `integrations/gguf/gguf_tokenizer_mapping.py` `byte_level_tokenizer`, `set_split_regex`).

use serde_json::{json, Map, Value as Json};

use super::reader::Gguf;
use super::tokenizer::{strings, tok_err};
use crate::error::GgufError;

/// The split regexes of llama.cpp's `llama-bpe` and `qwen2` pre-tokenizers, as transformers spells
/// them (`_LLAMA3_SPLIT`, qwen2 `PRETOKENIZE_REGEX`). GPT-2's own regex is `ByteLevel(use_regex)`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// for the code points 256.. in byte order.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('\u{FFFD}')
}

pub fn in_alphabet(c: char) -> bool {
    let cp = c as u32;
    (cp < 256 && u8::try_from(cp).is_ok_and(|b| byte_char(b) == c)) || (256..256 + 68).contains(&cp)
}

/// A token written outside the byte alphabet (a llama.cpp mislabel) is respelled byte by byte,
/// as transformers' `byte_level_tokenizer` does.
pub fn respell(token: &str) -> String {
    if token.chars().all(in_alphabet) {
        token.to_string()
    } else {
        token.bytes().map(byte_char).collect()
    }
}

/// Merges `"a b"` as pairs, split on the one space (byte-level tokens never contain one).
pub fn read_merges(gguf: &Gguf) -> Result<Vec<(String, String)>, GgufError> {
    let raw = gguf
        .get_array("tokenizer.ggml.merges")?
        .ok_or_else(|| tok_err(gguf, "a gpt2 tokenizer needs tokenizer.ggml.merges".into()))?;
    let merges = strings(gguf, raw, "tokenizer.ggml.merges")?;
    merges
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split(' ').collect::<Vec<_>>().as_slice() {
            [a, b] => Ok((a.to_string(), b.to_string())),
            _ => Err(tok_err(
                gguf,
                format!(
                    "tokenizer.ggml.merges[{i}] `{m}` is not two tokens separated by one space"
                ),
            )),
        })
        .collect()
}

fn byte_level(trim_offsets: bool, use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim_offsets, "use_regex": use_regex})
}

/// The pre-tokenizer for `tokenizer.ggml.pre` (llama.cpp `llama-vocab.cpp` regexes per name).
pub fn pre_tokenizer(pre: &str) -> Json {
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false, false),
        ]})
    };
    match pre {
        // SmolLM's own tokenizer.json: digits one by one, then the GPT-2 regex. (Its vocabulary
        // has no multi-digit token, so transformers' plain GPT-2 split gives the same ids.)
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true, true),
        ]}),
        // `chatglm-bpe` (GLM-4): llama-vocab.cpp's CHATGLM4 regex is Llama 3's.
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "chatglm-bpe" => {
            split(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT),
        "gpt-2" | "default" => byte_level(true, true),
        other => {
            tracing::warn!(
                "tokenizer.ggml.pre `{other}` is not known; using the GPT-2 pre-tokenizer"
            );
            byte_level(true, true)
        }
    }
}

pub fn decoder() -> Json {
    byte_level(true, true)
}

/// The `BPE` model. A token spelled twice keeps its last id, as Python's dict in transformers.
pub fn model(tokens: &[String], merges: &[(String, String)]) -> Json {
    let mut ids = Map::new();
    for (id, tok) in tokens.iter().enumerate() {
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
        assert_eq!(respell("<|im_start|>"), "<|im_start|>");
        assert_eq!(respell("a b"), "a\u{120}b");
    }
}
