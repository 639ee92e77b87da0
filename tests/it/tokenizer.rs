//! Tokenizer and chat template against the transformers fixtures.

use peft::tokenizer::{Message, TextTokenizer};

use crate::common::*;

#[test]
fn tokenizer_encodes_the_fixture_prompts_to_the_fixture_ids() {
    let tokenizer = TextTokenizer::load(&fixture("llama-tiny")).unwrap();
    let reference = reference("llama-tiny");
    let prompts = [
        "LoRA 原理与使用技巧有那些？",
        "The quick brown fox jumps over the lazy dog.",
        "Hello",
    ];
    for (row, prompt) in prompts.iter().enumerate() {
        let ids = tokenizer.encode(prompt, true).unwrap();
        let expected: Vec<u32> = (0..reference.seq)
            .filter(|&t| reference.mask[row * reference.seq + t] == 1)
            .map(|t| reference.ids[row * reference.seq + t] as u32)
            .collect();
        assert_eq!(ids, expected, "prompt {row}: {prompt}");
    }
}

#[test]
fn chat_template_renders_chatml_with_the_generation_prompt() {
    let tokenizer = TextTokenizer::load(&fixture("tokenizer")).unwrap();
    let text = tokenizer
        .apply_chat_template(
            &[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn decoding_inverts_encoding_of_mixed_text() {
    let tokenizer = TextTokenizer::load(&fixture("tokenizer")).unwrap();
    let text = "混合 text, 123 and code: fn main() {}";
    let ids = tokenizer.encode(text, false).unwrap();
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
}
