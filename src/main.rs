//! The `peft` binary: parse, run, map errors to an exit code (and the default SIGPIPE action).

use std::process::ExitCode;

use clap::Parser;

/// Rust ignores SIGPIPE, so a `println!` into a closed pipe (`peft inspect | head -1`) panics.
/// The default action ends the process quietly, as `cat` or `grep` do.
fn quiet_on_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: called first in main, before any other thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
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
