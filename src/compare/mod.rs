//! `peft compare`: every method trained on the same task, data order, seeds, optimizer and
//! budget, then measured the same way (HF PEFT's `method_comparison` protocol at CPU scale): test
//! accuracy with its 95% interval, train loss, time, memory (peak / mean / p99), trainable
//! parameters, adapter size and forgetting. `run` is the loop; each method trains and is scored
//! in a child process of the same binary (`child`, `method`, `eval`), so a failing method becomes
//! a row with its error and memory is per method. `sweep` chooses learning rates on a validation
//! split; the plan (budget, presets, `--set` overrides), task metrics, statistics, results (JSON
//! and Markdown) and hand-written SVG plots are pure. `src/cli/compare*.rs` only parse.

pub mod child;
pub mod eval;
pub mod method;
pub mod output;
pub mod plan;
pub mod results;
pub mod run;
pub mod stats;
pub mod svg;
pub mod sweep;
pub mod task;

use std::path::PathBuf;

pub use plan::{Budget, MethodPreset, MethodSpec, Override, Presets};
pub use results::{MethodResult, Results, RunMetrics};
pub use run::{ComparePlan, Progress};
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
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::error::WriteError),
    #[error(transparent)]
    Load(#[from] crate::error::LoadError),
}
