//! `peft merge`: fold adapters into a base checkpoint, streaming one tensor at a time.
//!
//! - [`plan`]: options -> validated [`MergePlan`]; every check happens before any output.
//! - [`adapter`]: an adapter folder and its keys grouped by module.
//! - [`patches`]: which fold applies to which base tensor (shapes, ranks, scales).
//! - [`delta`]: the math (LoRA, rsLoRA, DoRA, AdaLoRA, IA3) over f32 slices.
//! - [`layout`]: output shards, tied embeddings, `--max-shard-size`.
//! - [`stream`] / [`apply`]: writing shards tensor by tensor.
//!
//! Output goes to a hidden temporary folder beside `--out`, renamed into place only when every
//! file is written and synced; on any error the temporary folder is removed, so a failed merge
//! (a full disk included) leaves nothing behind and never touches the input.
//!
//! ```no_run
//! # fn main() -> Result<(), peft::error::MergeError> {
//! use peft::merge::{MergeOptions, MergePlan, FileSink, NoProgress};
//! let plan = MergePlan::build(MergeOptions {
//!     base: "llama".into(), adapters: vec!["lora".into()], out: "merged".into(),
//!     dtype: None, max_shard_size: None, force: false, scale: 1.0,
//! })?;
//! let report = plan.execute(&mut FileSink, &mut NoProgress)?;
//! # Ok(()) }
//! ```

pub mod adapter;
pub mod apply;
pub mod delta;
mod files;
pub mod layout;
pub mod patches;
pub mod plan;
pub mod stream;

use std::path::PathBuf;

pub use layout::parse_size;
pub use plan::{MergeOptions, MergePlan};
pub use stream::{FileSink, OutFile, Sink};

/// Progress callbacks (the CLI draws a bar; the library prints nothing).
pub trait Progress {
    fn start(&mut self, _total_bytes: u64) {}
    fn tensor(&mut self, _name: &str, _bytes: u64) {}
    fn finish(&mut self) {}
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub out: PathBuf,
    pub tensors: usize,
    /// Base tensors an adapter changed.
    pub merged: Vec<String>,
    pub shards: usize,
    pub bytes: u64,
    /// `Some((input embedding, output head))` when tied embeddings were untied.
    pub untied: Option<(String, String)>,
    /// Auxiliary files copied from the base folder.
    pub copied: Vec<String>,
}
