//! `peft merge --model DIR --adapter DIR [--adapter DIR ...] --out DIR`: arguments -> validated
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
    /// Base model folder (model.safetensors or sharded with model.safetensors.index.json;
    /// required), or a GGUF file (dequantized, merged in f32, written as f32 safetensors or
    /// --dtype). `--base` is accepted too.
    #[arg(long = "model", visible_alias = "base")]
    pub base: PathBuf,
    /// PEFT adapter folder (LoRA, rsLoRA, DoRA, AdaLoRA or IA3); repeat to fold several, in order.
    #[arg(long = "adapter", required = true)]
    pub adapters: Vec<PathBuf>,
    /// Output folder, written to a temporary folder beside it, then renamed into place (required).
    #[arg(long)]
    pub out: PathBuf,
    /// Output dtype of float tensors; `keep` keeps each tensor's own.
    #[arg(long, value_enum, default_value_t = DtypeArg::Keep)]
    pub dtype: DtypeArg,
    /// Repack into shards of at most this size, e.g. 5GB, 500MB, 2GiB (default: keep the input's
    /// shards).
    #[arg(long)]
    pub max_shard_size: Option<String>,
    /// Replace --out if it exists (default: refuse).
    #[arg(long)]
    pub force: bool,
    /// Weight of each adapter's change (1 = full merge, 0.5 = half the update).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f32,
    /// Reload the merged model and check that its logits on a few inputs equal base + adapters
    /// (within 1e-3 for f32 output; 5% of the logit range for bf16/f16) (default: off).
    #[arg(long)]
    pub verify: bool,
}

/// Logits of base + adapters vs. the merged folder on fixed token rows; returns the max abs diff
/// and the tolerance it is held to.
fn verify(
    base: &std::path::Path,
    adapters: &[PathBuf],
    out: &std::path::Path,
    scale: f32,
) -> anyhow::Result<(f32, f32)> {
    use peft::models::tensor_util::to_vec;
    use peft::models::{Inputs, ModelDir};
    if scale != 1.0 {
        anyhow::bail!("--verify compares against the adapters at full strength; it cannot check --scale {scale}");
    }
    let reference = super::common::ModelArgs {
        model: base.to_path_buf(),
        adapter: adapters.to_vec(),
        device: "cpu".into(),
        base_dtype: super::common::BaseDtype::F32,
        quantize_base: None,
        compute_dtype: super::common::ComputeDtypeArg::F32,
    }
    .load()?;
    let merged = ModelDir::open(out)?.load(&peft::device::parse_device("cpu")?)?;
    let vocab = reference.model.vocab_size() as i64;
    let (batch, seq) = (2, 24);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|i| (i as i64 * 7919 + 13) % vocab)
        .collect();
    let inputs = Inputs::new(ids, batch, seq);
    let a = to_vec(reference.model.forward(&inputs, None));
    let b = to_vec(merged.forward(&inputs, None));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let range = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let half = peft::io::Checkpoint::open_dir(out)?
        .entries()
        .any(|e| e.dtype != safetensors::Dtype::F32);
    let tol = if half { 0.05 * range.max(1.0) } else { 1e-3 };
    Ok((diff, tol))
}

/// indicatif bar over bytes written.
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total_bytes: u64) {
        let bar = ProgressBar::new(total_bytes);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} merging [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
        ) {
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
        Some(s) => Some(parse_size(s).with_context(|| {
            format!("--max-shard-size `{s}`: expected a size such as 5GB, 500MB or 2GiB")
        })?),
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
    // Contradictions are refused before any work, not after the output is written.
    if args.verify && args.scale != 1.0 {
        anyhow::bail!("--verify compares against the adapters at full strength; it cannot check --scale {}: drop one of them", args.scale);
    }
    let check = args.verify.then(|| {
        (
            args.base.clone(),
            args.adapters.clone(),
            args.out.clone(),
            args.scale,
        )
    });
    let plan = MergePlan::build(options(args)?).context("merge refused; nothing was written")?;
    peft::io::leftovers::clean_siblings(&plan.options.out);
    if let Some(tie) = &plan.untied {
        eprintln!(
            "note: an adapter changes the tied embedding; untying: writing `{}` as its own tensor and setting tie_word_embeddings = false in config.json",
            tie.output
        );
    }
    let report = plan
        .execute(&mut FileSink, &mut Bar(None))
        .context("merge failed; no output was left behind")?;
    eprintln!(
        "merged {} adapter(s) into {} of {} tensors; wrote {} shard(s), {:.1} MiB, to {}",
        plan.adapters.len(),
        report.merged.len(),
        report.tensors,
        report.shards,
        report.bytes as f64 / (1024.0 * 1024.0),
        report.out.display()
    );
    if let Some((base, adapters, out, scale)) = check {
        let (diff, tol) = verify(&base, &adapters, &out, scale).context("--verify")?;
        if !(diff <= tol) {
            anyhow::bail!("--verify: merged logits differ from base + adapters by {diff:.3e} (tolerance {tol:.1e}); the output is kept at {} for inspection", out.display());
        }
        eprintln!(
            "verified: merged logits equal base + adapters within {diff:.2e} (tolerance {tol:.1e})"
        );
    }
    Ok(())
}
