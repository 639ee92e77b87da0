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
use peft::peft::model_card::{record_base_model, write_model_card};
use peft::peft::rank_allocator::RankAllocator;
use peft::peft::{AdapterConfig, Method};
use peft::tokenizer::TextTokenizer;
use peft::train::checkpoint;
use peft::train::run::{run, total_steps, Run, RunConfig};
use peft::train::{AdamW, AdamWConfig, ScheduleKind, StepHook};
use serde::{Deserialize, Serialize};

use super::adapter_options::{adapter_config, tokenize_init_text, AdapterOptions};
use super::data_options::DataOptions;
use super::train_config::{adam_betas, card_settings, merge, resolved, write_run_file};

#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainOptions {
    /// Hugging Face model folder (required, here or in --config), or a Llama or ChatGLM GGUF
    /// file trained on in place: its Q8_0/Q4_0/Q4_1/k-quant weights stay quantized as the frozen base.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder: the adapter (PEFT format), README.md, trainer_state.json, run.toml,
    /// metrics.jsonl, checkpoints (required, here or in --config).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute device: cpu, flex, ndarray or wgpu (default: cpu).
    #[arg(long)]
    pub device: Option<String>,
    /// Frozen base weights stored as f32 (default), bf16 or f16: bf16 halves the memory of the
    /// frozen base; adapters, norms and optimizer state stay f32.
    #[arg(long, value_enum)]
    pub base_dtype: Option<super::common::BaseDtype>,
    /// Recompute each decoder layer's forward in the backward instead of keeping its
    /// activations (transformers' gradient_checkpointing): activations drop to one layer input
    /// per layer, for about one more forward of compute (default: off).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Train even when the memory estimate exceeds the memory available (default: refuse).
    #[arg(long)]
    pub ignore_memory_estimate: bool,
    /// Quantize the frozen base's linear weights as they load (QLoRA-style): int8 (ggml Q8_0
    /// blocks), int4 (Q4_0) or nf4 (bitsandbytes NF4); the adapter trains in f32 on top and is
    /// saved as a plain PEFT adapter (default: none, the base as stored).
    #[arg(long, value_enum)]
    pub quantize_base: Option<super::common::QuantizeBase>,
    /// Arithmetic of the frozen-weight products: f32 (default), or bf16 (inputs and gradients
    /// rounded to bf16 and multiplied by the bf16 weights with AVX512-BF16, accumulated in f32,
    /// as PyTorch's CPU bf16 autocast: faster, less exact; adapters, norms and the optimizer stay
    /// f32). bf16 implies --base-dtype bf16 and needs a CPU with avx512_bf16.
    #[arg(long, value_enum)]
    pub compute_dtype: Option<super::common::ComputeDtypeArg>,
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub adapter: AdapterOptions,
    /// Records per micro-batch (default: 4).
    #[arg(long, visible_alias = "per-device-train-batch-size")]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default: 1).
    #[arg(long, visible_alias = "gradient-accumulation-steps")]
    pub grad_accum: Option<usize>,
    /// Peak learning rate (default: 2e-4).
    #[arg(long, visible_alias = "learning-rate")]
    pub lr: Option<f64>,
    /// AdamW betas as one value, e.g. `0.9,0.999` (default: 0.9,0.999; or --adam-beta1/2).
    #[arg(long)]
    pub betas: Option<String>,
    /// AdamW beta1, as HF's `adam_beta1` (default: 0.9). Not AdaLoRA's --beta1.
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// AdamW beta2, as HF's `adam_beta2` (default: 0.999). Not AdaLoRA's --beta2.
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// AdamW epsilon (default: 1e-8).
    #[arg(long, visible_alias = "adam-epsilon")]
    pub eps: Option<f64>,
    /// AdamW decoupled weight decay (default: 0).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule after warm-up (default: linear).
    #[arg(long, value_enum, visible_alias = "lr-scheduler-type")]
    pub lr_scheduler: Option<ScheduleKind>,
    /// Linear warm-up steps; wins over --warmup-ratio (default: 0).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Warm-up as a fraction of all steps, rounded up (default: 0).
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Clip the global gradient norm (torch's clip_grad_norm_); 0 disables (default: 1.0).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Passes over the training data (default: 1; --max-steps wins).
    #[arg(long, visible_alias = "num-train-epochs")]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps (default: none: whole epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Also stop once the optimizer steps have taken this many minutes (loading, evaluation and
    /// checkpoints not counted; a resumed run has what its checkpoint left). The schedule still
    /// runs to --max-steps, so pair it with a constant one (default: no time limit).
    #[arg(long, value_name = "MINUTES")]
    pub max_train_minutes: Option<f64>,
    /// Log every N steps: the mean loss of those steps, as HF (default: 1).
    #[arg(long)]
    pub logging_steps: Option<usize>,
    /// Save a checkpoint (OUT/checkpoint-N) every N steps (default: none).
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Keep only the newest N checkpoints, deleting older ones (default: keep all).
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Evaluate every N steps; the eval set is also scored at the end (default: only at the end).
    #[arg(long)]
    pub eval_steps: Option<usize>,
    /// Seed of initialisation, shuffling and dropout (default: 42).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the file order (default: shuffle every epoch).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Replace an output folder that already holds a run (default: refuse).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue from a checkpoint folder (`OUT/checkpoint-N`), or the latest checkpoint of a run
    /// (default: none).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub options: TrainOptions,
    /// Read options from a TOML file (keys as the flags or snake_case, e.g. a run's run.toml);
    /// flags override it (default: none).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn run_config(o: &TrainOptions) -> anyhow::Result<RunConfig> {
    let (beta1, beta2) = adam_betas(o)?;
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
        save_total_limit: o.save_total_limit,
        train_batch_size: Some(o.batch_size.unwrap_or(4)),
        max_train_seconds: o.max_train_minutes.map(|m| m * 60.0),
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
/// `--overwrite` deletes nothing here: the new run replaces the files it writes as it writes
/// them, and the previous run's checkpoints only once it has finished (see
/// [`remove_stale_checkpoints`]); anything else in the folder is never touched (as HF's
/// `overwrite_output_dir`).
fn prepare_out(out: &Path, o: &TrainOptions) -> anyhow::Result<()> {
    let holds_run = ["trainer_state.json", "adapter_config.json", "metrics.jsonl"]
        .iter()
        .any(|f| out.join(f).exists())
        || !run_checkpoints(out).is_empty();
    if holds_run && o.resume.is_none() && !o.overwrite {
        return Err(peft::error::TrainError::OutputExists {
            path: out.to_path_buf(),
        }
        .into());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// The `checkpoint-N` folders in `out` that hold a checkpoint of ours (a `trainer_state.json`).
fn run_checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")?
                .parse::<usize>()
                .ok()?;
            let path = e.path();
            path.join(checkpoint::STATE_FILE)
                .is_file()
                .then_some((n, path))
        })
        .collect()
}

/// After an `--overwrite` run has finished: the previous run's checkpoints that this run did
/// not replace (they would make `--resume OUT` continue the old run).
fn remove_stale_checkpoints(
    before: &[(usize, PathBuf)],
    config: &RunConfig,
    steps: usize,
) -> anyhow::Result<()> {
    let saved_now = |n: usize| {
        config
            .save_steps
            .is_some_and(|s| s > 0 && n % s == 0 && n < steps)
    };
    for (n, path) in before {
        if !saved_now(*n) {
            std::fs::remove_dir_all(path)
                .with_context(|| format!("removing the previous run's {}", path.display()))?;
        }
    }
    Ok(())
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
    let mut o = merge(&args.options, args.config.as_deref())?;
    // Every option is checked before the first file is read (ripgrep's args -> plan).
    super::validate::train_options(&o)?;
    let (base, compute) = super::common::resolve_compute(
        o.compute_dtype.unwrap_or_default(),
        o.base_dtype.unwrap_or_default(),
        o.quantize_base,
        o.device.as_deref().unwrap_or("cpu"),
    )?;
    if compute != peft::models::linear::ComputeDtype::F32 {
        // bf16 compute implies a bf16 base: the memory estimate and run.toml say so too.
        o.base_dtype = Some(base);
    }
    let model_path = o.model.clone().context("--model is required")?;
    let out = o.out.clone().context("--out is required")?;
    let config = run_config(&o)?;
    super::validate::train_out(&o, &out)?;
    let device = peft::device::parse_device(o.device.as_deref().unwrap_or("cpu"))?.autodiff();
    let dir = ModelDir::open(&model_path)?;
    let tokenizer = TextTokenizer::load(&model_path)?;
    let data_config: DataConfig = o.data.to_config(config.seed)?;
    let resume_dir = o.resume.as_deref().map(resolve_checkpoint).transpose()?;
    let mut adapter = match &resume_dir {
        Some(ckpt) => {
            let saved = AdapterConfig::load_dir(ckpt)?;
            super::validate::resume_matches(&o.adapter, dir.model_type(), &saved, ckpt)?;
            saved
        }
        None => adapter_config(&o.adapter, dir.model_type())?,
    };
    tokenize_init_text(&mut adapter, &tokenizer, &model_path)?;
    // As PEFT: the model path as given, so AutoPeftModelForCausalLM finds the base.
    record_base_model(&mut adapter, &model_path.to_string_lossy());
    prepare_out(&out, &o)?;
    // One run per --out at a time; held until this function returns.
    let _lock = peft::io::lock::lock_dir(&out)?;
    peft::io::leftovers::clean_locked_dir(&out);
    let previous_checkpoints = if o.overwrite && resume_dir.is_none() {
        run_checkpoints(&out)
    } else {
        Vec::new()
    };
    let prepared = data::prepare(&data_config, &tokenizer)?;
    eprintln!(
        "data: {} ({} train, {} eval records)",
        prepared.stats,
        prepared.train.len(),
        prepared.eval.len()
    );
    let batch_size = o.batch_size.unwrap_or(4);
    if o.data.balance_labels {
        data::balance::check(&prepared.train, batch_size)?;
    }
    let run_options = resolved(&o, &config, batch_size, data_config.max_len);
    write_run_file(&run_options, &out)?;
    let base_dtype = o.base_dtype.unwrap_or_default().dtype();
    super::train_memory::check_before_loading(&o, &dir, &adapter, &prepared, &device)?;
    let mut model = dir
        .load_base(
            &device,
            base_dtype,
            o.quantize_base.map(super::common::QuantizeBase::scheme),
        )
        .with_context(|| format!("loading {}", model_path.display()))?;
    model.set_gradient_checkpointing(o.gradient_checkpointing);
    let start = resume_dir.as_ref().or(o.adapter.init_adapter.as_ref());
    let report = match start {
        Some(from) => load_adapter(&mut model, dir.model_type(), from, &device)?.1,
        None => inject_new(&mut model, dir.model_type(), &adapter, config.seed, &device)?,
    };
    eprintln!("{report}");
    model.set_compute_dtype(compute);
    let batch_config = BatchConfig {
        batch_size,
        seed: config.seed,
        shuffle: !o.no_shuffle,
        group_by_length: o.data.group_by_length,
        balance_labels: o.data.balance_labels,
        pack: o.data.pack,
        pad_id: prepared.pad_id,
    };
    let train = |epoch: usize| data::batches(&prepared.train, &batch_config, epoch as u64);
    let per_epoch = train(0).len();
    if config.grad_accum > per_epoch.max(1) {
        bail!("--grad-accum {} exceeds the {per_epoch} micro-batches of one epoch: one optimizer step would span the whole data set more than once; lower --grad-accum or --batch-size", config.grad_accum);
    }
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
    let rows = o.batch_size.unwrap_or(4).min(prepared.train.len().max(1));
    super::validate::batch_budget(&dir, rows, longest + virtual_positions)?;
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
        balance_labels: false,
        ..batch_config.clone()
    };
    let eval = data::batches(&prepared.eval, &eval_config, 0);
    let summary = run(Run {
        model,
        adapter_config: adapter,
        out: out.clone(),
        config: config.clone(),
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
            checkpoint::checkpoint_dir(&out, summary.steps).display()
        );
    }
    remove_stale_checkpoints(&previous_checkpoints, &config, summary.steps)?;
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "trained {} steps in {:.1} s ({:.0} tokens/s): loss {first:.4} -> {last:.4}{}",
        summary.steps_run,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9),
        summary
            .eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default()
    );
    let results = [
        ("global_step", summary.steps.to_string()),
        ("train_loss (last step)", format!("{last:.4}")),
        (
            "eval_loss",
            summary
                .eval_loss
                .map_or("none".into(), |l| format!("{l:.4}")),
        ),
    ];
    let mut settings = card_settings(&run_options)?;
    settings.extend(results.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let base = model_path.to_string_lossy();
    let final_config = peft::peft::AdapterConfig::load_dir(&out)?;
    write_model_card(&out, &final_config, &base, &settings)?;
    eprintln!("adapter written to {}", out.display());
    Ok(())
}
