//! Chat templates: a conversation → text segments, each marked learned (assistant turns) or not.
//!
//! The tokenizer's own Jinja template is the default. Its assistant turns are found by the prefix
//! difference: render `messages[..i]` with the generation prompt and `messages[..=i]` without; what
//! the second adds is turn `i`, including its end-of-turn/EOS text. The built-in templates follow
//! LLaMA-Factory's `data/template.py` for models whose tokenizer has no template.

use std::fmt;
use std::str::FromStr;

use crate::error::RecordProblem;
use crate::tokenizer::{Message, TextTokenizer};

/// A piece of rendered text and whether its tokens are learned.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub text: String,
    pub learn: bool,
}

impl Segment {
    fn new(text: impl Into<String>, learn: bool) -> Self {
        Self {
            text: text.into(),
            learn,
        }
    }
}

/// Which template renders conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Template {
    /// The tokenizer's `chat_template` (Jinja).
    #[default]
    Tokenizer,
    Builtin(Builtin),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Alpaca,
    ChatMl,
    Llama2,
    Llama3,
    ChatGlm3,
    Qwen,
}

impl Builtin {
    pub const NAMES: &'static str = "alpaca, chatml, llama2, llama3, chatglm3, qwen";

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Alpaca => "alpaca",
            Builtin::ChatMl => "chatml",
            Builtin::Llama2 => "llama2",
            Builtin::Llama3 => "llama3",
            Builtin::ChatGlm3 => "chatglm3",
            Builtin::Qwen => "qwen",
        }
    }

    /// The slots of each template, copied from LLaMA-Factory's `register_template` calls.
    fn spec(self) -> Spec {
        const CHATML: Spec = Spec {
            prefix: "",
            system: "<|im_start|>system\n{content}<|im_end|>\n",
            user: "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
            assistant: "{content}<|im_end|>\n",
            default_system: None,
            system_in_first_user: false,
            efficient_eos: None,
        };
        match self {
            Builtin::ChatMl => CHATML,
            Builtin::Qwen => Spec {
                default_system: Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
                ..CHATML
            },
            Builtin::Alpaca => Spec {
                system: "{content}\n\n",
                user: "### Instruction:\n{content}\n\n### Response:\n",
                assistant: "{content}{eos}\n\n",
                default_system: Some(
                    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
                ),
                ..CHATML
            },
            Builtin::Llama2 => Spec {
                system: "<<SYS>>\n{content}\n<</SYS>>\n\n",
                user: "{bos}[INST] {content} [/INST]",
                assistant: "{content}{eos}",
                system_in_first_user: true,
                ..CHATML
            },
            Builtin::Llama3 => Spec {
                prefix: "{bos}",
                system: "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
                user: "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                assistant: "{content}<|eot_id|>",
                ..CHATML
            },
            // ChatGLM3 ends a reply by starting the next turn: LLaMA-Factory's `efficient_eos`
            // learns that `<|user|>` (its stop word) between turns and EOS after the last one.
            Builtin::ChatGlm3 => Spec {
                prefix: "[gMASK]sop",
                system: "<|system|>\n{content}",
                user: "<|user|>\n{content}<|assistant|>",
                assistant: "\n{content}",
                efficient_eos: Some("<|user|>"),
                ..CHATML
            },
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Builtin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "alpaca" => Ok(Builtin::Alpaca),
            "chatml" => Ok(Builtin::ChatMl),
            "llama2" => Ok(Builtin::Llama2),
            "llama3" => Ok(Builtin::Llama3),
            "chatglm3" => Ok(Builtin::ChatGlm3),
            "qwen" => Ok(Builtin::Qwen),
            _ => Err(format!(
                "unknown chat template `{s}` (expected one of {})",
                Builtin::NAMES
            )),
        }
    }
}

/// Format strings with `{content}`, `{bos}` and `{eos}` placeholders.
struct Spec {
    prefix: &'static str,
    system: &'static str,
    user: &'static str,
    assistant: &'static str,
    default_system: Option<&'static str>,
    /// Llama 2 puts the `<<SYS>>` block inside the first `[INST]`.
    system_in_first_user: bool,
    /// The stop word that opens a user turn and is learned after an assistant turn; EOS is then
    /// learned only after the last turn.
    efficient_eos: Option<&'static str>,
}

/// Renders `messages` into learned / not learned segments.
pub fn segments(
    template: Template,
    tokenizer: &TextTokenizer,
    messages: &[Message],
) -> Result<Vec<Segment>, RecordProblem> {
    match template {
        Template::Tokenizer => jinja_segments(tokenizer, messages),
        Template::Builtin(builtin) => {
            let specials = Specials {
                bos: tokenizer.bos_token.as_deref().unwrap_or(""),
                eos: tokenizer.eos_token.as_deref().unwrap_or(""),
            };
            builtin_segments(&builtin.spec(), specials, messages)
        }
    }
}

/// The prefix-difference method over the tokenizer's Jinja template.
fn jinja_segments(
    tokenizer: &TextTokenizer,
    messages: &[Message],
) -> Result<Vec<Segment>, RecordProblem> {
    let render = |upto: usize, generation: bool| {
        tokenizer
            .apply_chat_template(&messages[..upto], generation)
            .map_err(|e| RecordProblem::Template(e.to_string()))
    };
    let mut segments = Vec::new();
    let mut rendered = String::new();
    for (i, _) in messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "assistant")
    {
        let prompt = render(i, true)?;
        let full = render(i + 1, false)?;
        segments.push(Segment::new(suffix_after(&prompt, &rendered, i)?, false));
        segments.push(Segment::new(suffix_after(&full, &prompt, i)?, true));
        rendered = full;
    }
    let all = render(messages.len(), false)?;
    let tail = suffix_after(&all, &rendered, messages.len())?;
    if !tail.is_empty() {
        segments.push(Segment::new(tail, false));
    }
    segments.retain(|s| !s.text.is_empty() || s.learn);
    Ok(segments)
}

/// `text` minus `prefix`; a template that rewrites earlier turns cannot be split into turns.
fn suffix_after<'a>(text: &'a str, prefix: &str, turn: usize) -> Result<&'a str, RecordProblem> {
    text.strip_prefix(prefix).ok_or_else(|| {
        RecordProblem::Template(format!(
            "the rendering up to message {turn} does not extend the rendering before it, so assistant turns cannot be \
             located (the template rewrites earlier turns); use a built-in --template"
        ))
    })
}

#[derive(Clone, Copy)]
struct Specials<'a> {
    bos: &'a str,
    eos: &'a str,
}

/// Fills a slot: specials first, then the content, so content is never re-interpreted.
fn fill(slot: &str, specials: Specials, content: &str) -> String {
    slot.replace("{bos}", specials.bos)
        .replace("{eos}", specials.eos)
        .replace("{content}", content)
}

fn builtin_segments(
    spec: &Spec,
    specials: Specials,
    messages: &[Message],
) -> Result<Vec<Segment>, RecordProblem> {
    let (system, turns) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (Some(first.content.as_str()), rest),
        _ => (None, messages),
    };
    if let Some(index) = turns.iter().position(|m| m.role == "system") {
        return Err(RecordProblem::Template(format!(
            "message {index}: a system message must come first"
        )));
    }
    let system = system
        .or(spec.default_system)
        .map(|s| fill(spec.system, specials, s));
    let mut segments = vec![Segment::new(fill(spec.prefix, specials, ""), false)];
    if let (Some(system), false) = (&system, spec.system_in_first_user) {
        segments.push(Segment::new(system.clone(), false));
    }
    let mut after_assistant = false;
    for (index, message) in turns.iter().enumerate() {
        if message.role == "assistant" {
            segments.push(Segment::new(
                fill(spec.assistant, specials, &message.content),
                true,
            ));
            after_assistant = true;
            continue;
        }
        let content = match (&system, spec.system_in_first_user && index == 0) {
            (Some(system), true) => format!("{system}{}", message.content),
            _ => message.content.clone(),
        };
        let user = fill(spec.user, specials, &content);
        match spec
            .efficient_eos
            .and_then(|stop| user.strip_prefix(stop).map(|rest| (stop, rest)))
        {
            Some((stop, rest)) if after_assistant => {
                segments.push(Segment::new(stop, true));
                segments.push(Segment::new(rest, false));
            }
            _ => segments.push(Segment::new(user, false)),
        }
        after_assistant = false;
    }
    if spec.efficient_eos.is_some() && after_assistant {
        segments.push(Segment::new(specials.eos, true));
    }
    segments.retain(|s| !s.text.is_empty());
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const SPECIALS: Specials = Specials {
        bos: "<s>",
        eos: "</s>",
    };

    fn chat() -> Vec<Message> {
        vec![
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
            Message::new("user", "q"),
            Message::new("assistant", "a"),
        ]
    }

    fn learned(segments: &[Segment]) -> Vec<&str> {
        segments
            .iter()
            .filter(|s| s.learn)
            .map(|s| s.text.as_str())
            .collect()
    }

    #[rstest]
    #[case::chatml(Builtin::ChatMl, &["hello<|im_end|>\n", "a<|im_end|>\n"])]
    #[case::alpaca(Builtin::Alpaca, &["hello</s>\n\n", "a</s>\n\n"])]
    #[case::llama2(Builtin::Llama2, &["hello</s>", "a</s>"])]
    #[case::llama3(Builtin::Llama3, &["hello<|eot_id|>", "a<|eot_id|>"])]
    #[case::chatglm3(Builtin::ChatGlm3, &["\nhello", "<|user|>", "\na", "</s>"])]
    fn builtin_templates_learn_every_assistant_turn_with_its_end(
        #[case] builtin: Builtin,
        #[case] expected: &[&str],
    ) {
        let segments = builtin_segments(&builtin.spec(), SPECIALS, &chat()).unwrap();
        assert_eq!(learned(&segments), expected);
    }

    #[test]
    fn the_chatml_builtin_renders_as_the_chatml_jinja_template_does() {
        let messages = [
            Message::new("system", "S"),
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
        ];
        let text: String = builtin_segments(&Builtin::ChatMl.spec(), SPECIALS, &messages)
            .unwrap()
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        assert_eq!(text, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n");
    }

    #[test]
    fn llama2_puts_the_system_prompt_inside_the_first_instruction() {
        let messages = [
            Message::new("system", "S"),
            Message::new("user", "hi"),
            Message::new("assistant", "yo"),
        ];
        let text: String = builtin_segments(&Builtin::Llama2.spec(), SPECIALS, &messages)
            .unwrap()
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        assert_eq!(text, "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST]yo</s>");
    }

    #[test]
    fn a_system_message_after_the_first_turn_is_an_error() {
        let messages = [
            Message::new("user", "hi"),
            Message::new("system", "S"),
            Message::new("assistant", "yo"),
        ];
        assert!(builtin_segments(&Builtin::ChatMl.spec(), SPECIALS, &messages).is_err());
    }

    #[test]
    fn content_that_looks_like_a_placeholder_is_kept_verbatim() {
        assert_eq!(fill("{content}{eos}", SPECIALS, "{eos}"), "{eos}</s>");
    }

    #[test]
    fn template_names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!("llama3".parse::<Builtin>(), Ok(Builtin::Llama3));
        assert!("vicuna"
            .parse::<Builtin>()
            .unwrap_err()
            .contains(Builtin::NAMES));
    }
}
