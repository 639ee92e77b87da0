//! `peft train`: fine-tune an adapter on an instruction JSONL file.
//!
//! Options come from flags, or from a TOML file (`--config run.toml`, keys spelled as the flags:
//! `lr = 2e-4`, `target-modules = "q_proj,v_proj"`); flags override the file. They are merged once
//! into [`TrainOptions`], then validated into a plan.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use peft::data::{self, BatchConfig, DataConfig};
use peft::models::ModelDir;
use peft::peft::format::{inject_new, load_adapter};
use peft::peft::rank_allocator::RankAllocator;
use peft::peft::{AdapterConfig, Method};
use peft::tokenizer::TextTokenizer;
use peft::train::checkpoint;
use peft::train::run::{run, total_steps, Run, RunConfig};
use peft::train::{AdamW, AdamWConfig, ScheduleKind, StepHook};
use serde::{Deserialize, Serialize};

use super::adapter_options::{adapter_config, tokenize_init_text, AdapterOptions};
use super::data_options::DataOptions;

#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainOptions {
    /// Hugging Face model folder.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder: the adapter (PEFT format), trainer_state.json, metrics.jsonl, checkpoints.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute device: cpu, flex, ndarray or wgpu.
    #[arg(long)]
    pub device: Option<String>,
    /// Frozen base weights stored as f32 (default), bf16 or f16: bf16 halves the memory of the
    /// frozen base; adapters, norms and optimizer state stay f32.
    #[arg(long, value_enum)]
    pub base_dtype: Option<super::common::BaseDtype>,
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub adapter: AdapterOptions,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW betas, e.g. `0.9,0.999`.
    #[arg(long)]
    pub betas: Option<String>,
    #[arg(long)]
    pub eps: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    pub lr_scheduler: Option<ScheduleKind>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Clip the global gradient norm (torch's clip_grad_norm_); 0 disables.
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub logging_steps: Option<usize>,
    #[arg(long)]
    pub save_steps: Option<usize>,
    #[arg(long)]
    pub eval_steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the file order (no shuffling).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Replace an output folder that already holds a run.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue from a checkpoint folder (`OUT/checkpoint-N`), or the latest checkpoint of a run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub options: TrainOptions,
    /// Read options from a TOML file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Flags over file: every flag given on the command line replaces the file's value.
fn merge(cli: &TrainOptions, file: Option<&Path>) -> anyhow::Result<TrainOptions> {
    let Some(path) = file else {
        return Ok(cli.clone());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let from_file: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
    let mut merged = serde_json::to_value(&from_file)?;
    let cli_json = serde_json::to_value(cli)?;
    if let (Some(m), Some(c)) = (merged.as_object_mut(), cli_json.as_object()) {
        for (k, v) in c {
            if !(v.is_null() || *v == serde_json::Value::Bool(false)) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(merged)
        .with_context(|| format!("{}: unknown or invalid option", path.display()))
}

fn parse_betas(s: &str) -> anyhow::Result<(f64, f64)> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("--betas must be two numbers, e.g. 0.9,0.999")?;
    match parts[..] {
        [b1, b2] if (0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2) => Ok((b1, b2)),
        _ => bail!("--betas must be two numbers in [0, 1), e.g. 0.9,0.999"),
    }
}

fn run_config(o: &TrainOptions) -> anyhow::Result<RunConfig> {
    let (beta1, beta2) = parse_betas(o.betas.as_deref().unwrap_or("0.9,0.999"))?;
    let config = RunConfig {
        lr: o.lr.unwrap_or(2e-4),
        adamw: AdamWConfig {
            beta1,
            beta2,
            eps: o.eps.unwrap_or(1e-8),
            weight_decay: o.weight_decay.unwrap_or(0.0),
        },
        scheduler: o.lr_scheduler.unwrap_or(ScheduleKind::Linear),
        warmup_steps: o.warmup_steps.unwrap_or(0),
        warmup_ratio: o.warmup_ratio.unwrap_or(0.0),
        grad_accum: o.grad_accum.unwrap_or(1),
        max_grad_norm: o.max_grad_norm.or(Some(1.0)).filter(|&n| n > 0.0),
        epochs: o.epochs.unwrap_or(1),
        max_steps: o.max_steps,
        logging_steps: o.logging_steps.unwrap_or(1),
        save_steps: o.save_steps,
        eval_steps: o.eval_steps,
        seed: o.seed.unwrap_or(42),
    };
    if !(config.lr > 0.0 && config.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    if config.grad_accum == 0 || o.batch_size == Some(0) {
        bail!("--batch-size and --grad-accum must be at least 1");
    }
    if !(0.0..1.0).contains(&config.warmup_ratio) {
        bail!("--warmup-ratio must be in [0, 1)");
    }
    if config.max_steps.is_none() && config.epochs == 0 {
        bail!("--epochs must be at least 1 (or give --max-steps)");
    }
    Ok(config)
}

/// An output folder that already holds a run is refused unless `--overwrite` or `--resume`.
fn prepare_out(out: &Path, o: &TrainOptions) -> anyhow::Result<()> {
    let holds_run = ["trainer_state.json", "adapter_config.json", "metrics.jsonl"]
        .iter()
        .any(|f| out.join(f).exists())
        || std::fs::read_dir(out)
            .map(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
                })
            })
            .unwrap_or(false);
    if holds_run && o.resume.is_none() {
        if !o.overwrite {
            return Err(peft::error::TrainError::OutputExists {
                path: out.to_path_buf(),
            }
            .into());
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// A checkpoint folder, or the latest `checkpoint-N` inside a run folder.
fn resolve_checkpoint(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(checkpoint::STATE_FILE).is_file()
        && path.join(checkpoint::OPTIMIZER_FILE).is_file()
    {
        return Ok(path.to_path_buf());
    }
    let latest = std::fs::read_dir(path)
        .with_context(|| format!("--resume {}", path.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    match latest {
        Some((_, p)) => Ok(p),
        None => bail!("--resume {}: no checkpoint there (expected trainer_state.json + optimizer.safetensors, or checkpoint-N folders)", path.display()),
    }
}

pub fn run_cmd(args: TrainArgs) -> anyhow::Result<()> {
    let o = merge(&args.options, args.config.as_deref())?;
    let model_path = o.model.clone().context("--model is required")?;
    let out = o.out.clone().context("--out is required")?;
    let config = run_config(&o)?;
    let device = peft::device::parse_device(o.device.as_deref().unwrap_or("cpu"))?.autodiff();
    let dir = ModelDir::open(&model_path)?;
    let tokenizer = TextTokenizer::load(&model_path)?;
    let data_config: DataConfig = o.data.to_config(config.seed)?;
    let prepared = data::prepare(&data_config, &tokenizer)?;
    eprintln!(
        "data: {} ({} train, {} eval records)",
        prepared.stats,
        prepared.train.len(),
        prepared.eval.len()
    );
    let resume_dir = o.resume.as_deref().map(resolve_checkpoint).transpose()?;
    let mut adapter = match &resume_dir {
        Some(ckpt) => AdapterConfig::load_dir(ckpt)?,
        None => adapter_config(&o.adapter, dir.model_type())?,
    };
    tokenize_init_text(&mut adapter, &tokenizer, &model_path)?;
    prepare_out(&out, &o)?;
    let base_dtype = o.base_dtype.unwrap_or_default().dtype();
    let mut model = dir
        .load_with_base_dtype(&device, base_dtype)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let start = resume_dir.as_ref().or(o.adapter.init_adapter.as_ref());
    let report = match start {
        Some(from) => load_adapter(&mut model, dir.model_type(), from, &device)?.1,
        None => inject_new(&mut model, dir.model_type(), &adapter, config.seed, &device)?,
    };
    eprintln!("{report}");
    let batch_config = BatchConfig {
        batch_size: o.batch_size.unwrap_or(4),
        seed: config.seed,
        shuffle: !o.no_shuffle,
        group_by_length: o.data.group_by_length,
        pack: o.data.pack,
        pad_id: prepared.pad_id,
    };
    let train = |epoch: usize| data::batches(&prepared.train, &batch_config, epoch as u64);
    let mut adapter = adapter;
    let mut hook = StepHook::None;
    if let Method::AdaLora(_, ada) = &adapter.method {
        // `total_step` is the run's length unless given (PEFT requires it; we can derive it).
        let total = match ada.total_step {
            Some(t) => t,
            None => total_steps(&config, train(0).len()),
        };
        let allocator = RankAllocator::new(&mut model, ada.clone(), total)?;
        adapter.raw.insert("total_step".into(), total.into());
        if let Method::AdaLora(_, ada) = &mut adapter.method {
            ada.total_step = Some(total);
        }
        hook = StepHook::AdaLora(allocator);
    }
    if let Some(ckpt) = &resume_dir {
        hook.restore(&mut model, ckpt)?;
    }
    // Virtual tokens / prefixes take context positions in front of every sequence.
    let (virtual_positions, context) = (model.prompt_positions(), model.max_positions());
    let longest = match o.data.pack {
        Some(n) => n,
        None => prepared
            .train
            .iter()
            .chain(&prepared.eval)
            .map(|r| r.len())
            .max()
            .unwrap_or(0),
    };
    if virtual_positions > 0 && longest + virtual_positions > context {
        bail!("the longest sequence ({longest} tokens) plus {virtual_positions} virtual tokens exceeds the model's context of {context} positions; lower --max-len or --num-virtual-tokens");
    }
    let resume = match &resume_dir {
        Some(ckpt) => {
            let mut optim = AdamW::new(config.adamw);
            checkpoint::load_optimizer(ckpt, &mut model, &mut optim, &device)?;
            let state = checkpoint::load_state(ckpt)?;
            eprintln!("resuming {} at step {}", ckpt.display(), state.global_step);
            Some((state, optim))
        }
        None => None,
    };
    let eval_config = BatchConfig {
        shuffle: false,
        pack: None,
        ..batch_config.clone()
    };
    let eval = data::batches(&prepared.eval, &eval_config, 0);
    let summary = run(Run {
        model,
        adapter_config: adapter,
        out: out.clone(),
        config,
        train: &train,
        eval,
        device,
        resume,
        hook,
    })?;
    if summary.interrupted {
        bail!(
            "interrupted after step {}; continue with --resume {}",
            summary.steps,
            out.display()
        );
    }
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "trained {} steps in {:.1} s ({:.0} tokens/s): loss {first:.4} -> {last:.4}{}",
        summary.steps,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9),
        summary
            .eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default()
    );
    eprintln!("adapter written to {}", out.display());
    Ok(())
}
