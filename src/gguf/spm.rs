//! SentencePiece BPE vocabularies (`tokenizer.ggml.model = llama`): the file stores pieces with
//! scores and byte-fallback tokens `<0x00>`..`<0xFF>`, but no merges. As transformers'
//! `sentencepiece_tokenizer` (integrations/gguf/gguf_tokenizer_mapping.py) and `LlamaTokenizer`:
//! merges are recovered from the scores (`generate_merges` in tokenization_utils_base.py), the
//! model is a byte-fallback BPE, and a Metaspace pre-tokenizer prepends `▁` to the first word.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

/// Merges implied by the vocabulary, exactly as transformers' `generate_merges(vocab, scores)`:
/// every split `(l, r)` of every piece with both halves in the vocabulary, ordered by the piece's
/// score (best first), then by the halves' lengths (longest first); ties keep vocabulary order,
/// and the splits of one piece are ordered by the ids of their halves.
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    // Python dicts: `vocab` maps a token to its last id; `vocab_scores` iterates tokens in
    // first-appearance order with the last score.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f32> = HashMap::new();
    for (id, (tok, &score)) in tokens.iter().zip(scores).enumerate() {
        if ids.insert(tok, id).is_none() {
            order.push(tok);
        }
        score_of.insert(tok, score);
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for piece in order {
        let score = score_of[piece];
        let mut local: Vec<(&str, &str, f32)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
    // A stable sort, descending: Python's `sorted(..., reverse=True)` keeps ties in order too.
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
            .then(Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// `LlamaTokenizer`'s pre-tokenizer with `add_prefix_space=True, legacy=False`.
pub fn pre_tokenizer() -> Json {
    json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false})
}

/// `LlamaTokenizer`'s decoder: `▁` back to spaces, byte tokens back to bytes, drop the first space.
pub fn decoder() -> Json {
    json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]})
}

/// The byte-fallback `BPE` model (`BPE(vocab, merges, fuse_unk=True, byte_fallback=True)`).
pub fn model(tokens: &[String], merges: &[(String, String)]) -> Json {
    let mut ids = Map::new();
    for (id, tok) in tokens.iter().enumerate() {
        ids.insert(tok.clone(), json!(id));
    }
    json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": null,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": true,
        "byte_fallback": true,
        "ignore_merges": false,
        "vocab": ids,
        "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merges(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
        merges_from_scores(
            &tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            scores,
        )
    }

    #[test]
    fn merges_follow_the_score_of_the_merged_piece() {
        // "ab" (score -1) merges before "abc" (score -2), which splits as ab + c (a + bc is absent).
        let got = merges(&["a", "b", "c", "ab", "abc"], &[0.0, 0.0, 0.0, -1.0, -2.0]);
        assert_eq!(got, [("a".into(), "b".into()), ("ab".into(), "c".into())]);
    }

    #[test]
    fn equal_scores_put_longer_left_halves_first() {
        // "abc" splits as a + bc and ab + c at one score: (ab, c) has the longer left half.
        let got = merges(
            &["a", "b", "c", "ab", "bc", "abc"],
            &[0.0, 0.0, 0.0, -5.0, -5.0, -1.0],
        );
        assert_eq!(
            got[..2],
            [("ab".into(), "c".into()), ("a".into(), "bc".into())]
        );
    }
}
