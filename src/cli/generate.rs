//! `peft generate`: stream a continuation of a prompt (or a chat turn) to stdout.

use std::io::Write;

use anyhow::{bail, Context};
use peft::generate::{generate, SamplingConfig};
use peft::tokenizer::{Message, TextTokenizer};

use super::common::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw text, encoded with the tokenizer's special tokens (e.g. BOS).
    #[arg(long, conflicts_with = "chat")]
    pub prompt: Option<String>,
    /// One user message, rendered through the chat template with the generation prompt.
    #[arg(long)]
    pub chat: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Arg-max decoding (otherwise sample).
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop at the end-of-sequence token.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub stop_at_eos: bool,
    /// Print one JSON object {"prompt_ids", "new_ids", "text"} instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Storage dtype of the frozen weights while decoding: f32 (exact), or bf16 (half the
    /// memory traffic per token, about twice as fast; logits move by ~1e-2, products stay f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub decode_dtype: String,
}

impl GenerateArgs {
    fn sampling(&self, eos_ids: Vec<u32>) -> anyhow::Result<SamplingConfig> {
        if !(self.temperature > 0.0) {
            bail!("--temperature must be > 0 (use --greedy for arg-max decoding)");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("--top-p must be in (0, 1]");
            }
        }
        if !(self.repetition_penalty > 0.0) {
            bail!("--repetition-penalty must be > 0");
        }
        Ok(SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            greedy: self.greedy,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            eos_ids,
            stop_at_eos: self.stop_at_eos,
        })
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let prompt_ids = match (&args.prompt, &args.chat) {
        (Some(text), None) => tokenizer.encode(text, true)?,
        (None, Some(text)) => {
            let rendered = tokenizer.apply_chat_template(&[Message::new("user", text)], true)?;
            tokenizer.encode(&rendered, false)?
        }
        _ => bail!("give exactly one of --prompt TEXT or --chat TEXT"),
    };
    let mut loaded = args.model.load()?;
    if args.decode_dtype == "bf16" {
        loaded.model.cast_decode_weights(burn::tensor::DType::BF16);
    }
    let mut eos_ids = loaded.dir.eos_token_ids();
    eos_ids.extend(tokenizer.eos_id());
    let cfg = args.sampling(eos_ids)?;
    let stdout = std::io::stdout();
    let mut printed = String::new();
    let mut so_far: Vec<u32> = Vec::new();
    let mut stream_error = None;
    let new_ids = generate(&loaded.model, &prompt_ids, &cfg, &mut |id| {
        if args.json {
            return;
        }
        // Decode everything so far and print the new suffix: multi-byte characters split over
        // several tokens appear once complete.
        so_far.push(id);
        if let Ok(text) = tokenizer.decode(&so_far, true) {
            if text.len() > printed.len()
                && text.is_char_boundary(printed.len())
                && !text.ends_with('\u{FFFD}')
            {
                let mut out = stdout.lock();
                if let Err(e) = out
                    .write_all(text[printed.len()..].as_bytes())
                    .and_then(|_| out.flush())
                {
                    stream_error.get_or_insert(e);
                }
                printed = text;
            }
        }
    })
    .context("generation failed")?;
    if let Some(e) = stream_error {
        return Err(e).context("writing to stdout");
    }
    let text = tokenizer.decode(&new_ids, true)?;
    if args.json {
        let out = serde_json::json!({ "prompt_ids": prompt_ids, "new_ids": new_ids, "text": text });
        println!("{out}");
    } else {
        if text.len() > printed.len() && text.is_char_boundary(printed.len()) {
            print!("{}", &text[printed.len()..]);
        }
        println!();
    }
    Ok(())
}
