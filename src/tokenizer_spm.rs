//! SentencePiece `tokenizer.model` (a `ModelProto` protobuf, sentencepiece_model.proto) turned
//! into a `tokenizers` tokenizer in memory, as transformers' `SpmConverter` does: BPE models become
//! a byte-fallback `BPE` with merges recovered from the piece scores (shared with the GGUF import,
//! `gguf::spm`), unigram models a `Unigram`; the normaliser reproduces sentencepiece's
//! `precompiled_charsmap`, `remove_extra_whitespaces`, `add_dummy_prefix` and whitespace escaping.
//!
//! ChatGLM2/3 keep their specials outside the SentencePiece model: `SPTokenizer` appends
//! `[MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>` after the
//! vocabulary and `build_inputs_with_special_tokens` prefixes `[gMASK] sop`
//! (THUDM tokenization_chatglm.py).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::LoadError;
use crate::gguf::spm;

/// ChatGLM3's specials, in id order after the SentencePiece vocabulary.
pub const CHATGLM_SPECIALS: [&str; 9] = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// sentencepiece_model.proto `SentencePiece.Type`.
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: u64,
}

/// The parts of a `ModelProto` a tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE.
    pub model_type: u64,
    pub byte_fallback: bool,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

/// A protobuf wire-format reader over one message.
struct Wire<'a> {
    buf: &'a [u8],
    at: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    /// Skipped: no field we read is a fixed64.
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    /// The next `(field number, value)`, `None` at the end; `Err` on malformed input.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        let bad = |what: &str, at: usize| format!("malformed protobuf: {what} at byte {at}");
        let key = self.varint().ok_or_else(|| bad("truncated key", self.at))?;
        let field = match key & 7 {
            0 => Field::Varint(
                self.varint()
                    .ok_or_else(|| bad("truncated varint", self.at))?,
            ),
            1 => {
                self.take(8)
                    .ok_or_else(|| bad("truncated fixed64", self.at))?;
                Field::Fixed64
            }
            2 => {
                let n = self
                    .varint()
                    .ok_or_else(|| bad("truncated length", self.at))?
                    as usize;
                Field::Bytes(
                    self.take(n)
                        .ok_or_else(|| bad("length past the end", self.at))?,
                )
            }
            5 => {
                let b = self
                    .take(4)
                    .ok_or_else(|| bad("truncated fixed32", self.at))?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(bad(&format!("unsupported wire type {t}"), self.at)),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn fields(
    buf: &[u8],
    mut visit: impl FnMut(u64, Field) -> Result<(), String>,
) -> Result<(), String> {
    let mut wire = Wire { buf, at: 0 };
    while let Some((number, field)) = wire.field()? {
        visit(number, field)?;
    }
    Ok(())
}

fn piece(buf: &[u8]) -> Result<Piece, String> {
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    fields(buf, |n, f| {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                p.piece =
                    String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8".to_string())?
            }
            (2, Field::Fixed32(bits)) => p.score = f32::from_bits(bits),
            (3, Field::Varint(t)) => p.kind = t,
            _ => {}
        }
        Ok(())
    })?;
    Ok(p)
}

impl SpModel {
    /// Parses a serialized `ModelProto`.
    pub fn parse(buf: &[u8]) -> Result<Self, String> {
        let mut m = SpModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        fields(buf, |n, f| {
            match (n, f) {
                (1, Field::Bytes(b)) => m.pieces.push(piece(b)?),
                (2, Field::Bytes(trainer)) => fields(trainer, |n, f| {
                    match (n, f) {
                        (3, Field::Varint(t)) => m.model_type = t,
                        (35, Field::Varint(b)) => m.byte_fallback = b != 0,
                        _ => {}
                    }
                    Ok(())
                })?,
                (3, Field::Bytes(normalizer)) => fields(normalizer, |n, f| {
                    match (n, f) {
                        (2, Field::Bytes(b)) => m.precompiled_charsmap = b.to_vec(),
                        (3, Field::Varint(b)) => m.add_dummy_prefix = b != 0,
                        (4, Field::Varint(b)) => m.remove_extra_whitespaces = b != 0,
                        (5, Field::Varint(b)) => m.escape_whitespaces = b != 0,
                        _ => {}
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })?;
        if m.pieces.is_empty() {
            return Err("no pieces (is this a SentencePiece model?)".into());
        }
        Ok(m)
    }

    fn normalizer(&self) -> Value {
        let mut steps = Vec::new();
        if !self.precompiled_charsmap.is_empty() {
            steps.push(json!({"type": "Precompiled", "precompiled_charsmap": base64(&self.precompiled_charsmap)}));
        }
        if self.remove_extra_whitespaces {
            steps.push(json!({"type": "Strip", "strip_left": true, "strip_right": true}));
            steps.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
        }
        if self.add_dummy_prefix {
            steps.push(json!({"type": "Prepend", "prepend": " "}));
        }
        if self.escape_whitespaces {
            steps.push(
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            );
        }
        json!({"type": "Sequence", "normalizers": steps})
    }

    fn model(&self) -> Result<Value, String> {
        let unk = self.pieces.iter().position(|p| p.kind == UNKNOWN);
        match self.model_type {
            1 => {
                let vocab: Vec<Value> = self
                    .pieces
                    .iter()
                    .map(|p| json!([p.piece, p.score]))
                    .collect();
                Ok(
                    json!({"type": "Unigram", "unk_id": unk, "vocab": vocab, "byte_fallback": self.byte_fallback}),
                )
            }
            2 => {
                let tokens: Vec<String> = self.pieces.iter().map(|p| p.piece.clone()).collect();
                let scores: Vec<f32> = self.pieces.iter().map(|p| p.score).collect();
                let mut model = spm::model(&tokens, &spm::merges_from_scores(&tokens, &scores));
                model["unk_token"] = unk.map_or(Value::Null, |i| json!(tokens[i]));
                model["byte_fallback"] = json!(self.byte_fallback);
                Ok(model)
            }
            t => Err(format!(
                "SentencePiece model_type {t} is not supported (supported: unigram, BPE)"
            )),
        }
    }

    /// `tokenizer.json` for this model; `chatglm` appends ChatGLM3's specials and adds the
    /// `[gMASK] sop` prefix when encoding with special tokens.
    pub fn tokenizer_json(&self, chatglm: bool) -> Result<Value, String> {
        let entry = |id: usize, content: &str, special: bool| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special});
        let mut added: Vec<Value> = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, UNKNOWN | CONTROL | USER_DEFINED))
            .map(|(id, p)| entry(id, &p.piece, p.kind != USER_DEFINED))
            .collect();
        let mut post_processor = Value::Null;
        if chatglm {
            let n = self.pieces.len();
            added.extend(
                CHATGLM_SPECIALS
                    .iter()
                    .enumerate()
                    .map(|(i, s)| entry(n + i, s, true)),
            );
            let special = |s: &str| json!({"SpecialToken": {"id": s, "type_id": 0}});
            let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
            let tokens: Map<String, Value> = ["[gMASK]", "sop"]
                .iter()
                .map(|s| (s.to_string(), json!({"id": s, "ids": [n + CHATGLM_SPECIALS.iter().position(|x| x == s).unwrap_or(0)], "tokens": [s]})))
                .collect();
            post_processor = json!({
                "type": "TemplateProcessing",
                "single": [special("[gMASK]"), special("sop"), seq("A")],
                "pair": [special("[gMASK]"), special("sop"), seq("A"), seq("B")],
                "special_tokens": tokens,
            });
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": self.normalizer(),
            "pre_tokenizer": null,
            "post_processor": post_processor,
            "decoder": spm::decoder(),
            "model": self.model()?,
        }))
    }
}

/// Loads `tokenizer.model` into a `tokenizers` tokenizer.
pub fn load(path: &Path, chatglm: bool) -> Result<tokenizers::Tokenizer, LoadError> {
    let err = |message: String| LoadError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json = SpModel::parse(&bytes)
        .and_then(|m| m.tokenizer_json(chatglm))
        .map_err(err)?;
    let text = serde_json::to_string(&json).map_err(|e| err(e.to_string()))?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| err(e.to_string()))
}

/// Standard base64 with padding (the encoding `tokenizers` expects for `precompiled_charsmap`).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_truncated_model_is_an_error_not_a_panic() {
        // Field 1, length 10, but only 2 bytes follow.
        assert!(SpModel::parse(&[0x0a, 10, 1, 2]).is_err());
        assert!(SpModel::parse(&[]).is_err());
    }
}
