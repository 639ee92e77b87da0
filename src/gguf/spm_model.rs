//! ChatGLM3's SentencePiece vocabulary (`tokenizer.ggml.pre = chatglm-spm`, written by
//! convert_hf_to_gguf.py's `set_vocab_chatglm3` and by our export) back into the
//! `tokenizer.model` that THUDM's `SPTokenizer` and our [`crate::tokenizer_spm`] read.
//!
//! `set_vocab_chatglm3` lists the SentencePiece pieces (0/1/2 renamed `<unk>`/`<bos>`/`<eos>`),
//! then THUDM's nine specials (`[MASK]` … `<|observation|>`, which `SPTokenizer` appends after
//! the model rather than keeping in it), then `[PAD{id}]` up to `padded_vocab_size`. So the model
//! is the pieces before the specials, with sentencepiece's own `<s>`/`</s>` names given back.
//! The file does not say how SentencePiece was trained; ChatGLM2/3's model is BPE with byte
//! fallback, identity normalisation and whitespace kept (tests/fixtures/spm-tiny/make_spm.py), and
//! that is what llama.cpp runs on this vocabulary too, so that is what is written.

use super::reader::{Gguf, Value};
use super::tokenizer::{strings, tok_err};
use crate::error::GgufError;
use crate::tokenizer_spm::CHATGLM_SPECIALS;

/// sentencepiece_model.proto `SentencePiece.Type` (gguf-py's `TokenType` uses the same numbers).
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;
const BYTE: i64 = 6;
/// `TrainerSpec.model_type` BPE.
const BPE: u64 = 2;

/// The serialized `ModelProto`, and the names our tokenizer gives ids `0..` (the pieces as
/// written, then THUDM's specials).
pub fn chatglm3_model(gguf: &Gguf) -> Result<(Vec<u8>, Vec<String>), GgufError> {
    let raw = gguf
        .get_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| tok_err(gguf, "no tokenizer.ggml.tokens".into()))?;
    let tokens = strings(gguf, raw, "tokenizer.ggml.tokens")?;
    let numbers = |key: &str| -> Result<Vec<f64>, GgufError> {
        let values = gguf
            .get_array(key)?
            .ok_or_else(|| tok_err(gguf, format!("a chatglm-spm vocabulary needs {key}")))?;
        match values
            .iter()
            .map(Value::as_f64)
            .collect::<Option<Vec<f64>>>()
        {
            Some(v) if v.len() == tokens.len() => Ok(v),
            _ => Err(tok_err(
                gguf,
                format!("{key} must hold {} numbers", tokens.len()),
            )),
        }
    };
    let scores = numbers("tokenizer.ggml.scores")?;
    let types: Vec<i64> = numbers("tokenizer.ggml.token_type")?
        .into_iter()
        .map(|t| t as i64)
        .collect();
    let n = tokens
        .windows(CHATGLM_SPECIALS.len())
        .position(|w| w.iter().zip(CHATGLM_SPECIALS).all(|(a, b)| a == b))
        .ok_or_else(|| {
            tok_err(
                gguf,
                format!(
                    "a chatglm-spm vocabulary must list THUDM's specials ({}) after its SentencePiece pieces",
                    CHATGLM_SPECIALS.join(" ")
                ),
            )
        })?;
    let after = n + CHATGLM_SPECIALS.len();
    if let Some(i) = (after..tokens.len()).find(|&i| types[i] == USER_DEFINED) {
        return Err(tok_err(
            gguf,
            format!(
                "token {i} `{}` is a user-defined token after THUDM's specials, which tokenizer.model cannot hold",
                tokens[i]
            ),
        ));
    }
    if let Some(i) = (after..tokens.len()).find(|&i| types[i] != UNUSED) {
        return Err(tok_err(
            gguf,
            format!(
                "token {i} `{}` after THUDM's specials is not padding",
                tokens[i]
            ),
        ));
    }
    let add_dummy_prefix = gguf
        .get_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let mut proto = Vec::new();
    let mut names = Vec::with_capacity(after);
    for (i, token) in tokens[..n].iter().enumerate() {
        // `set_vocab_chatglm3` renames sentencepiece's `<s>`/`</s>`; give their names back.
        let piece = match (i, token.as_str()) {
            (1, "<bos>") => "<s>",
            (2, "<eos>") => "</s>",
            _ => token.as_str(),
        };
        names.push(piece.to_string());
        let mut p = Vec::new();
        bytes_field(&mut p, 1, piece.as_bytes());
        fixed32_field(&mut p, 2, (scores[i] as f32).to_bits());
        varint_field(&mut p, 3, types[i].max(1) as u64);
        bytes_field(&mut proto, 1, &p);
    }
    let mut trainer = Vec::new();
    varint_field(&mut trainer, 3, BPE);
    varint_field(
        &mut trainer,
        35,
        u64::from(types[..n].iter().any(|&t| t == BYTE)),
    );
    bytes_field(&mut proto, 2, &trainer);
    let mut normalizer = Vec::new();
    bytes_field(&mut normalizer, 1, b"identity");
    varint_field(&mut normalizer, 3, u64::from(add_dummy_prefix));
    varint_field(&mut normalizer, 4, 0);
    varint_field(&mut normalizer, 5, 1);
    bytes_field(&mut proto, 3, &normalizer);
    names.extend(CHATGLM_SPECIALS.iter().map(|s| s.to_string()));
    Ok((proto, names))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn fixed32_field(out: &mut Vec<u8>, field: u64, v: u32) {
    varint(out, (field << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut out = Vec::new();
        varint_field(&mut out, 35, 1);
        // Field 35, wire type 0: key 280 = 0b1_0001_1000 → 0x98 0x02.
        assert_eq!(out, [0x98, 0x02, 0x01]);
    }
}
