//! `peft merge --base DIR --adapter DIR [--adapter DIR ...] --out DIR`: arguments -> validated
//! plan (nothing written if any check fails) -> streaming merge with a progress bar on stderr.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use peft::merge::{parse_size, FileSink, MergeOptions, MergePlan, Progress};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum DtypeArg {
    /// Keep each tensor's dtype.
    #[default]
    Keep,
    F32,
    Bf16,
    F16,
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Base model folder (model.safetensors or sharded with model.safetensors.index.json).
    #[arg(long)]
    pub base: PathBuf,
    /// PEFT adapter folder (LoRA, rsLoRA, DoRA, AdaLoRA or IA3); repeat to fold several, in order.
    #[arg(long = "adapter", required = true)]
    pub adapters: Vec<PathBuf>,
    /// Output folder (written to a temporary folder beside it, then renamed into place).
    #[arg(long)]
    pub out: PathBuf,
    /// Output dtype of float tensors; `keep` keeps each tensor's own.
    #[arg(long, value_enum, default_value_t = DtypeArg::Keep)]
    pub dtype: DtypeArg,
    /// Repack into shards of at most this size (e.g. 5GB, 500MB, 2GiB); default: keep the input's shards.
    #[arg(long)]
    pub max_shard_size: Option<String>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Weight of each adapter's change (1 = full merge, 0.5 = half the update).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f32,
}

/// indicatif bar over bytes written.
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total_bytes: u64) {
        let bar = ProgressBar::new(total_bytes);
        if let Ok(style) = ProgressStyle::with_template("{spinner} merging [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        self.0 = Some(bar);
    }
    fn tensor(&mut self, name: &str, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_message(name.to_string());
            bar.inc(bytes);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

fn options(args: MergeArgs) -> anyhow::Result<MergeOptions> {
    let dtype = match args.dtype {
        DtypeArg::Keep => None,
        DtypeArg::F32 => Some(safetensors::Dtype::F32),
        DtypeArg::Bf16 => Some(safetensors::Dtype::BF16),
        DtypeArg::F16 => Some(safetensors::Dtype::F16),
    };
    let max_shard_size = match &args.max_shard_size {
        Some(s) => Some(parse_size(s).with_context(|| format!("--max-shard-size `{s}`: expected a size such as 5GB, 500MB or 2GiB"))?),
        None => None,
    };
    Ok(MergeOptions {
        base: args.base,
        adapters: args.adapters,
        out: args.out,
        dtype,
        max_shard_size,
        force: args.force,
        scale: args.scale,
    })
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let plan = MergePlan::build(options(args)?).context("merge refused; nothing was written")?;
    if let Some(tie) = &plan.untied {
        eprintln!(
            "note: an adapter changes the tied embedding; untying: writing `{}` as its own tensor and setting tie_word_embeddings = false in config.json",
            tie.output
        );
    }
    let report = plan.execute(&mut FileSink, &mut Bar(None)).context("merge failed; no output was left behind")?;
    eprintln!(
        "merged {} adapter(s) into {} of {} tensors; wrote {} shard(s), {:.1} MiB, to {}",
        plan.adapters.len(),
        report.merged.len(),
        report.tensors,
        report.shards,
        report.bytes as f64 / (1024.0 * 1024.0),
        report.out.display()
    );
    Ok(())
}
