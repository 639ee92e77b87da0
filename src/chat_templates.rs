//! Built-in chat templates, by name, for checkpoints whose tokenizer files carry none (ChatGLM's
//! remote-code tokenizers build prompts in Python instead).

/// ChatGLM3's format, as the `chat_template` of THUDM/chatglm3-6b's tokenizer_config.json and
/// `ChatGLMTokenizer.build_chat_input`: `[gMASK]sop` once, then `<|role|>\n content` per message;
/// the generation prompt is `<|assistant|>` alone (the model writes the newline itself).
/// Assistant turns are the ones to train on: everything a `<|assistant|>` tag opens, up to the
/// next role tag.
pub const CHATGLM3: &str = "{% for message in messages %}{% if loop.first %}[gMASK]sop{% endif %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// Names accepted by [`builtin`].
pub const NAMES: &str = "chatglm3";

/// The template called `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        "chatglm3" => Some(CHATGLM3),
        _ => None,
    }
}
