//! ChatGLM's SentencePiece tokenizer against the Python `sentencepiece` library on the tiny models
//! of `tests/fixtures/spm-tiny` (made by its `make_spm.py`), and the built-in chatglm3 template.

use std::fs;

use peft::tokenizer::{render_template, Message, TextTokenizer};
use rstest::rstest;

use crate::common::*;

fn expected(model: &str) -> serde_json::Value {
    let text = fs::read_to_string(fixture("spm-tiny/expected.json")).expect("expected.json");
    serde_json::from_str::<serde_json::Value>(&text).expect("valid JSON")[model].clone()
}

/// A ChatGLM-style tokenizer folder: `tokenizer.model` + `tokenizer_config.json`, no tokenizer.json.
fn chatglm_folder(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        fixture(&format!("spm-tiny/{model}.model")),
        dir.path().join("tokenizer.model"),
    )
    .unwrap();
    fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "ChatGLMTokenizer", "eos_token": "</s>"}"#,
    )
    .unwrap();
    dir
}

#[rstest]
#[case::bpe_like_chatglm("bpe")]
#[case::unigram_with_nfkc_charsmap("unigram")]
fn sentencepiece_model_encodes_as_the_python_library(#[case] model: &str) {
    let dir = chatglm_folder(model);
    let tokenizer = TextTokenizer::load(dir.path()).expect("tokenizer.model loads");
    let expected = expected(model);
    let n = expected["vocab_size"].as_u64().unwrap() as u32;
    let mut compared = 0;
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer.encode(text, false).unwrap(),
            ids,
            "{model}: {text:?}"
        );
        compared += 1;
    }
    assert!(compared >= 8);
    // ChatGLM3's specials follow the vocabulary, and encoding with specials prefixes [gMASK] sop.
    for (i, s) in [
        "[MASK]",
        "[gMASK]",
        "[sMASK]",
        "sop",
        "eop",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|observation|>",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(tokenizer.token_id(s), Some(n + i as u32), "{s}");
    }
    let with_prefix = tokenizer.encode("Hello", true).unwrap();
    assert_eq!(with_prefix[..2], [n + 1, n + 3]);
    assert_eq!(tokenizer.eos_id(), tokenizer.token_id("</s>"));
}

#[rstest]
#[case::bpe_like_chatglm("bpe")]
#[case::unigram_with_nfkc_charsmap("unigram")]
fn sentencepiece_decoding_matches_the_python_library(#[case] model: &str) {
    let dir = chatglm_folder(model);
    let tokenizer = TextTokenizer::load(dir.path()).unwrap();
    let mut compared = 0;
    for case in expected(model)["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        if text.contains("<|") || text.contains("[gMASK]") {
            continue;
        }
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(
            tokenizer.decode(&ids, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{model}: {text:?}"
        );
        compared += 1;
    }
    assert!(compared >= 5);
}

#[test]
fn a_chatglm_folder_without_a_template_gets_the_builtin_chatglm3_one() {
    let dir = chatglm_folder("bpe");
    let tokenizer = TextTokenizer::load(dir.path()).unwrap();
    let text = tokenizer
        .apply_chat_template(&[Message::new("user", "你好")], true)
        .unwrap();
    assert_eq!(text, "[gMASK]sop<|user|>\n 你好<|assistant|>");
}

#[test]
fn chatglm3_template_renders_every_turn_with_one_prefix() {
    let messages = [
        Message::new("system", "You are ChatGLM3."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "1+1?"),
    ];
    let template = peft::chat_templates::builtin("chatglm3").expect("built in");
    let text = render_template(template, &messages, true, None, None).unwrap();
    assert_eq!(text, "[gMASK]sop<|system|>\n You are ChatGLM3.<|user|>\n Hi<|assistant|>\n Hello!<|user|>\n 1+1?<|assistant|>");
    let no_prompt = render_template(template, &messages[..3], false, None, None).unwrap();
    assert!(no_prompt.ends_with("<|assistant|>\n Hello!"), "{no_prompt}");
}

#[test]
fn a_corrupt_tokenizer_model_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("tokenizer.model"), [0x0a, 0x40, 0x01]).unwrap();
    let err = TextTokenizer::load(dir.path())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("tokenizer.model") && err.contains("protobuf"),
        "{err}"
    );
}
