//! `peft convert gguf FILE --out DIR [--dtype f32|bf16|f16] [--force]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use peft::gguf::{convert_gguf, ConvertOptions};
use peft::io::dtype::parse_float_dtype;

#[derive(Subcommand, Debug)]
pub enum ConvertCommand {
    /// Convert a llama.cpp GGUF file (`llama` or `chatglm` architecture) into a Hugging Face
    /// model folder: config.json, model.safetensors, tokenizer.json (ChatGLM3's SentencePiece
    /// vocabulary: tokenizer.model), tokenizer_config.json.
    Gguf {
        /// The .gguf file (required).
        file: PathBuf,
        /// Output folder, written under a temporary name, renamed into place when complete
        /// (required).
        #[arg(long)]
        out: PathBuf,
        /// dtype of model.safetensors: f32 keeps the dequantized values exactly.
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
        dtype: String,
        /// Replace the output folder if it exists and is not empty (default: refuse).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: ConvertCommand) -> anyhow::Result<()> {
    match cmd {
        ConvertCommand::Gguf {
            file,
            out,
            dtype,
            force,
        } => {
            let dtype =
                parse_float_dtype(&dtype).with_context(|| format!("unknown dtype `{dtype}`"))?;
            peft::io::leftovers::clean_siblings(&out);
            // Library errors already name the file, tensor or key.
            let report = convert_gguf(&file, &out, ConvertOptions { dtype, force })?;
            let types: Vec<String> = report
                .source_types
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect();
            println!(
                "wrote {}: {} ({} tensors: {}; {:.1}M parameters; tokenizer `{}`)",
                report.out.display(),
                report.architecture,
                report.tensors,
                types.join(", "),
                report.parameters as f64 / 1e6,
                report.tokenizer,
            );
            Ok(())
        }
    }
}
