//! `peft compare`: every method trained on the same task, data order, seed, optimizer and budget,
//! then measured the same way. This module is the pure part: the plan (budget, per-method presets
//! and `--set` overrides), the task metrics (exact match, ROUGE-L), the results (JSON and Markdown)
//! and hand-written SVG plots. The CLI (`src/cli/compare.rs`) runs each method as a child process of
//! the same binary, so a failing method becomes a row with its error and peak RSS is per method.

pub mod output;
pub mod plan;
pub mod results;
pub mod svg;
pub mod task;

use std::path::PathBuf;

pub use plan::{Budget, MethodPreset, MethodSpec, Override, Presets};
pub use results::{MethodResult, Results, RunMetrics};
pub use task::TaskMetric;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("--budget `{0}`: expected steps=N, tokens=N or minutes=N with N > 0")]
    Budget(String),
    #[error("--set `{0}`: expected METHOD.KEY=VALUE, e.g. lora.r=16")]
    Override(String),
    #[error("{}: {message}", path.display())]
    Presets { path: PathBuf, message: String },
    #[error("unknown method `{name}` (the presets in {} name: {known})", presets.display())]
    UnknownMethod {
        name: String,
        presets: PathBuf,
        known: String,
    },
    #[error("{0}")]
    Method(String),
}
