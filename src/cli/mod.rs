//! Command-line interface: clap definitions, one file per subcommand. Each subcommand turns its
//! raw arguments into a validated plan once, then runs it. `anyhow` lives here, not in the library.

use clap::{Parser, Subcommand};

mod adapter_options;
mod chat;
mod common;
mod compare;
mod compare_eval;
mod convert;
mod data_options;
mod eval;
mod export;
mod generate;
#[cfg(test)]
mod help_tests;
mod inspect;
mod merge;
mod train;
mod train_config;
mod train_memory;
mod validate;

#[derive(Parser, Debug)]
#[command(
    name = "peft",
    version,
    about = "Parameter-efficient fine-tuning of Llama and ChatGLM models"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// CPU threads for the tensor work (gemm, kernels) [default: every core].
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt or a chat message.
    Generate(generate::GenerateArgs),
    /// Chat with a model (and adapters): a multi-turn conversation on stdin, replies streamed.
    Chat(chat::ChatArgs),
    /// Show a model's config, parameter count and module paths (the names `target_modules` uses).
    Inspect(inspect::InspectArgs),
    /// Fine-tune an adapter on instruction data.
    Train(train::TrainArgs),
    /// Mean token loss and perplexity over a dataset.
    Eval(eval::EvalArgs),
    /// Convert a model from another format (GGUF) into a Hugging Face folder.
    #[command(subcommand)]
    Convert(convert::ConvertCommand),
    /// Fold adapters into a base checkpoint and write a merged model.
    Merge(merge::MergeArgs),
    /// Export a model (adapters folded in) or a LoRA adapter to another format (GGUF).
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Train and score several methods on the same task and budget: a table and plots.
    Compare(compare::CompareArgs),
    /// `train`, reporting peak memory, for `peft compare` (internal).
    #[command(hide = true)]
    CompareTrain(train::TrainArgs),
    /// Eval loss and the task metric of one model, for `peft compare` (internal).
    #[command(hide = true)]
    CompareEval(compare_eval::CompareEvalArgs),
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file (nohup, tee, Slurm).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = peft::device::set_threads(cli.threads)?;
    tracing::debug!("{threads} compute threads");
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Train(args) => train::run_cmd(args),
        Command::Eval(args) => eval::run(args),
        Command::Convert(cmd) => convert::run(cmd),
        Command::Merge(args) => merge::run(args),
        Command::Export(cmd) => export::run(cmd),
        Command::Compare(args) => compare::run(args),
        Command::CompareTrain(args) => compare_eval::train(args),
        Command::CompareEval(args) => compare_eval::run(args),
    }
}
