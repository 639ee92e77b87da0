//! `peft convert gguf FILE --out DIR`.

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ConvertCommand {
    /// Convert a llama.cpp GGUF file into a Hugging Face model folder.
    Gguf {
        /// The .gguf file.
        file: std::path::PathBuf,
        /// Output folder.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(_cmd: ConvertCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
