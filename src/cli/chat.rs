//! `peft chat --model M [--adapter A]`: a multi-turn conversation on stdin/stdout, the reply
//! streamed as it is generated. `/reset` forgets the conversation (the system prompt stays),
//! `/exit` or end of input quits. Sampling defaults come from the model's
//! `generation_config.json` (`do_sample`, `temperature`, `top_k`, `top_p`,
//! `repetition_penalty`, `max_new_tokens`), as transformers' `generate` takes them; a flag wins.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context};
use peft::data::{Builtin, Template};
use peft::generate::{generate, SamplingConfig};
use peft::models::CausalLm;
use peft::tokenizer::{Message, TextTokenizer};
use serde_json::Value;

use super::common::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Tokens per reply at most (default: generation_config.json's `max_new_tokens`, else 256).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Arg-max decoding (default: sample when generation_config.json says `do_sample: true`).
    #[arg(long, conflicts_with = "sample")]
    pub greedy: bool,
    /// Sample (default: as generation_config.json's `do_sample`, else greedy, as transformers).
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature (default: generation_config.json's, else 1.0).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample from the k most likely tokens (default: generation_config.json's, else all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass (default: generation_config.json's, else 1.0).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Repetition penalty (default: generation_config.json's, else 1.0).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How a conversation becomes a prompt: shared by `chat` and `generate --chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct PromptArgs {
    /// A system prompt put before the conversation (default: none, or the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// A built-in chat template (alpaca, chatml, llama2, llama3, chatglm3, qwen), as in training
    /// (default: the tokenizer's chat_template).
    #[arg(long)]
    pub template: Option<String>,
}

impl PromptArgs {
    pub fn template(&self) -> anyhow::Result<Template> {
        Ok(match self.template.as_deref() {
            None => Template::Tokenizer,
            Some(name) => Template::Builtin(name.parse::<Builtin>().map_err(anyhow::Error::msg)?),
        })
    }

    /// `history` with the system prompt in front.
    pub fn messages(&self, history: &[Message]) -> Vec<Message> {
        let system = self.system.iter().map(|s| Message::new("system", s));
        system.chain(history.iter().cloned()).collect()
    }
}

/// Prompt ids of `messages` ending with the assistant's turn to speak: the tokenizer's template
/// with `add_generation_prompt`, or a built-in one encoded segment by segment as in training.
pub fn prompt_ids(
    tokenizer: &TextTokenizer,
    template: Template,
    messages: &[Message],
) -> anyhow::Result<Vec<u32>> {
    match template {
        Template::Tokenizer => {
            let rendered = tokenizer.apply_chat_template(messages, true)?;
            Ok(tokenizer.encode(&rendered, false)?)
        }
        Template::Builtin(_) => {
            let segments = peft::data::template::segments(template, tokenizer, messages)
                .map_err(|p| anyhow::anyhow!("{p}"))?;
            let mut ids = Vec::new();
            for s in segments {
                ids.extend(tokenizer.encode(&s.text, false)?);
            }
            Ok(ids)
        }
    }
}

/// `generation_config.json` of the model folder, if any.
fn generation_config(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Value::Null);
    }
    let text = std::fs::read_to_string(&path)?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

impl ChatArgs {
    fn sampling(&self, eos_ids: Vec<u32>) -> anyhow::Result<SamplingConfig> {
        let g = generation_config(&self.model.model)?;
        let f = |k: &str| g.get(k).and_then(Value::as_f64);
        let greedy = match (self.greedy, self.sample) {
            (true, _) => true,
            (_, true) => false,
            _ => !g.get("do_sample").and_then(Value::as_bool).unwrap_or(false),
        };
        let cfg = SamplingConfig {
            max_new_tokens: self
                .max_new_tokens
                .or(f("max_new_tokens").map(|v| v as usize))
                .unwrap_or(256),
            greedy,
            temperature: self
                .temperature
                .or(f("temperature").map(|v| v as f32))
                .unwrap_or(1.0),
            top_k: self
                .top_k
                .or(f("top_k").map(|v| v as usize))
                .filter(|&k| k > 0),
            top_p: self.top_p.or(f("top_p").map(|v| v as f32)),
            repetition_penalty: self
                .repetition_penalty
                .or(f("repetition_penalty").map(|v| v as f32))
                .unwrap_or(1.0),
            seed: self.seed,
            eos_ids,
            stop_at_eos: true,
        };
        if !(cfg.temperature > 0.0 && cfg.repetition_penalty > 0.0) {
            bail!("--temperature and --repetition-penalty must be > 0");
        }
        if cfg.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            bail!("--top-p must be in (0, 1]");
        }
        Ok(cfg)
    }
}

/// Generates a reply to `prompt`, writing its text to `out` as it grows; returns the text.
pub fn stream_reply(
    model: &CausalLm,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    cfg: &SamplingConfig,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let (mut so_far, mut printed, mut error) = (Vec::new(), String::new(), None);
    let new_ids = generate(model, prompt, cfg, &mut |id| {
        // Decode all so far and print the new suffix: a character split over tokens appears once
        // complete.
        so_far.push(id);
        if let Ok(text) = tokenizer.decode(&so_far, true) {
            if text.len() > printed.len()
                && text.is_char_boundary(printed.len())
                && !text.ends_with('\u{FFFD}')
            {
                let written = out.write_all(text[printed.len()..].as_bytes());
                if let Err(e) = written.and_then(|_| out.flush()) {
                    error.get_or_insert(e);
                }
                printed = text;
            }
        }
    })
    .context("generation failed")?;
    if let Some(e) = error {
        return Err(e).context("writing to stdout");
    }
    let text = tokenizer.decode(&new_ids, true)?;
    if text.len() > printed.len() && text.is_char_boundary(printed.len()) {
        out.write_all(text[printed.len()..].as_bytes())?;
    }
    writeln!(out)?;
    Ok(text.trim().to_string())
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let template = args.prompt.template()?;
    let loaded = args.model.load()?;
    let mut eos_ids = loaded.dir.eos_token_ids();
    eos_ids.extend(tokenizer.eos_id());
    let cfg = args.sampling(eos_ids)?;
    let context = loaded
        .model
        .max_positions()
        .saturating_sub(loaded.model.prompt_positions());
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chat with {}: /reset forgets the conversation, /exit (or Ctrl-D) quits",
            args.model.model.display()
        );
    }
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next().transpose()? else {
            break;
        };
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                eprintln!("(conversation reset)");
                continue;
            }
            text => history.push(Message::new("user", text)),
        }
        // Forget the oldest exchanges while the prompt leaves no room for a reply.
        let mut ids = prompt_ids(&tokenizer, template, &args.prompt.messages(&history))?;
        while ids.len() + cfg.max_new_tokens.min(64) > context && history.len() > 1 {
            history.drain(..2.min(history.len() - 1));
            eprintln!("(context full: the oldest exchange is forgotten)");
            ids = prompt_ids(&tokenizer, template, &args.prompt.messages(&history))?;
        }
        let mut stdout = std::io::stdout();
        let reply = stream_reply(&loaded.model, &tokenizer, &ids, &cfg, &mut stdout)?;
        history.push(Message::new("assistant", &reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn sampling(dir: &std::path::Path, flags: &[&str]) -> peft::generate::SamplingConfig {
        let args = [&["peft", "chat", "--model", dir.to_str().unwrap()], flags].concat();
        let Command::Chat(chat) = Cli::try_parse_from(args).unwrap().command else {
            panic!("not chat")
        };
        chat.sampling(vec![2]).unwrap()
    }

    #[test]
    fn sampling_defaults_come_from_generation_config_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let g = r#"{"do_sample": true, "temperature": 0.5, "top_p": 0.9, "max_new_tokens": 7}"#;
        std::fs::write(dir.path().join("generation_config.json"), g).unwrap();
        let c = sampling(dir.path(), &[]);
        assert!(!c.greedy);
        assert_eq!(
            (c.temperature, c.top_p, c.max_new_tokens),
            (0.5, Some(0.9), 7)
        );
        let c = sampling(dir.path(), &["--greedy", "--temperature", "0.8"]);
        assert!(c.greedy);
        assert_eq!(c.temperature, 0.8);
        let bare = tempfile::tempdir().unwrap();
        let c = sampling(bare.path(), &[]);
        assert!(c.greedy, "transformers' default is greedy");
        assert_eq!(c.max_new_tokens, 256);
    }
}
