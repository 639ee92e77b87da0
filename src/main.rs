//! The `peft` binary: parse, run, map errors to an exit code. Nothing else.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = peft_cli::Cli::parse();
    peft_cli::init_logging(cli.verbose);
    match peft_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[path = "cli/mod.rs"]
mod peft_cli;
