//! `peft train`'s memory check before loading and `--gradient-checkpointing`'s limits; the
//! estimate itself is `peft::train::memory`.

use anyhow::bail;
use burn::tensor::Device;
use peft::data::Prepared;
use peft::models::ModelDir;
use peft::peft::prompt::PromptKind;
use peft::peft::{AdapterConfig, Method};
use peft::train::memory::{adapter_footprint, gib, MemoryPlan, ModelShape, WeightStorage};

use super::adapter_options::{adapter_config, AdapterOptions};
use super::common::{BaseDtype, QuantizeBase};
use super::train::TrainOptions;

/// `peft inspect --memory`: the run to estimate, with `peft train`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Print the memory a `peft train` run would need (with the adapter flags below,
    /// --batch-size, --max-len, --gradient-checkpointing, --base-dtype) and whether it fits,
    /// without loading anything but config.json (default: off).
    #[arg(long)]
    pub memory: bool,
    #[command(flatten)]
    pub adapter: AdapterOptions,
    /// Records per micro-batch (default: 4).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per record (default: 1024, as `peft train`'s --max-len).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Estimate with activation checkpointing (default: off).
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

/// Prints the estimate of the run `args` describes (stdout: this is the command's output).
pub fn print_estimate(
    dir: &ModelDir,
    base: BaseDtype,
    quant: Option<QuantizeBase>,
    args: &MemoryArgs,
) -> anyhow::Result<()> {
    let adapter = adapter_config(&args.adapter, dir.model_type())?;
    let rows = args.batch_size.unwrap_or(4);
    let seq = args.max_len.unwrap_or(1024);
    let plan = plan(
        dir,
        &adapter,
        base,
        quant,
        (rows, seq),
        args.gradient_checkpointing,
    )?;
    let estimate = plan.estimate();
    println!(
        "memory estimate (batch {rows} × {seq} tokens, base {}): {estimate}",
        plan.linear_storage.name()
    );
    println!(
        "activations: {} with --gradient-checkpointing, {} without",
        gib(plan.activations(true)),
        gib(plan.activations(false))
    );
    match peft::io::budget::ram_available() {
        Some(available) => match plan.check(available) {
            Ok(_) => println!("fits: {} available", gib(available)),
            Err(e) => println!("{e}"),
        },
        None => println!("available memory unknown (no /proc/meminfo)"),
    }
    Ok(())
}

/// The storage of the frozen projections and embedding for `--base-dtype`.
pub fn storage(base: BaseDtype) -> WeightStorage {
    match base {
        BaseDtype::F32 => WeightStorage::F32,
        BaseDtype::Bf16 => WeightStorage::Bf16,
        BaseDtype::F16 => WeightStorage::F16,
    }
}

/// `--gradient-checkpointing` recomputes a layer from its input alone: methods that feed every
/// layer tensors of their own (prefix tuning / P-tuning v2's key/value prefixes, LLaMA-Adapter's
/// adaption prompts) and backends without our custom op are refused.
pub fn check_checkpointing(adapter: &AdapterConfig, device: &Device) -> anyhow::Result<()> {
    if let Method::PromptLearning(p) = &adapter.method {
        let per_layer = match p.kind {
            PromptKind::Prefix { .. } => Some("prefix tuning / P-tuning v2"),
            PromptKind::Adaption { .. } => Some("LLaMA-Adapter"),
            _ => None,
        };
        if let Some(name) = per_layer {
            bail!("--gradient-checkpointing does not support {name} (its per-layer prompt tensors enter every decoder layer); train without --gradient-checkpointing, or use LoRA, IA3, AdaLoRA, prompt tuning or P-tuning");
        }
    }
    if !peft::kernels::is_flex(device) {
        bail!("--gradient-checkpointing runs on the CPU device (--device cpu or flex) only");
    }
    Ok(())
}

/// The storage of the frozen projections: `--quantize-base`'s blocks, a GGUF file's own blocks
/// (measured from the file; counted as int8, the widest type kept in place, if it cannot be read
/// here, so the estimate errs high), else `--base-dtype`.
pub fn linear_storage(
    dir: &ModelDir,
    base: BaseDtype,
    quant: Option<QuantizeBase>,
) -> WeightStorage {
    match (quant, dir.gguf_file()) {
        (Some(QuantizeBase::Int8), _) => WeightStorage::Int8,
        (Some(QuantizeBase::Int4), _) => WeightStorage::Int4,
        (Some(QuantizeBase::Nf4), _) => WeightStorage::Nf4,
        (None, Some(file)) => match peft::gguf::base::block_density(&file) {
            Ok(Some((bytes, values))) => WeightStorage::Blocks { bytes, values },
            Ok(None) => storage(base),
            Err(_) => WeightStorage::Int8,
        },
        (None, None) => storage(base),
    }
}

/// The estimate's inputs for a run of `rows × seq` tokens.
pub fn plan(
    dir: &ModelDir,
    adapter: &AdapterConfig,
    base: BaseDtype,
    quant: Option<QuantizeBase>,
    (rows, seq): (usize, usize),
    checkpointing: bool,
) -> anyhow::Result<MemoryPlan> {
    Ok(MemoryPlan {
        shape: ModelShape::from_dir(dir),
        linear_storage: linear_storage(dir, base, quant),
        embedding_storage: storage(base),
        adapter: adapter_footprint(dir, adapter)?,
        batch: rows as u64,
        seq: seq as u64,
        checkpointing,
    })
}

/// Prints the estimate and refuses, before loading, a run that would not fit (unless
/// `--ignore-memory-estimate`).
pub fn check_before_loading(
    o: &TrainOptions,
    dir: &ModelDir,
    adapter: &AdapterConfig,
    prepared: &Prepared,
    device: &Device,
) -> anyhow::Result<()> {
    if o.gradient_checkpointing {
        check_checkpointing(adapter, device)?;
    }
    let virtual_tokens = match &adapter.method {
        Method::PromptLearning(p) => match p.kind {
            PromptKind::PromptTuning { .. } | PromptKind::PTuning { .. } => p.num_virtual_tokens,
            _ => 0,
        },
        _ => 0,
    };
    let longest = match o.data.pack {
        Some(n) => n,
        None => prepared.train.iter().map(|r| r.len()).max().unwrap_or(0),
    };
    let rows = o.batch_size.unwrap_or(4).min(prepared.train.len().max(1));
    let base = o.base_dtype.unwrap_or_default();
    let plan = plan(
        dir,
        adapter,
        base,
        o.quantize_base,
        (rows, longest + virtual_tokens),
        o.gradient_checkpointing,
    )?;
    let estimate = plan.estimate();
    let other = plan.activations(!o.gradient_checkpointing);
    eprintln!(
        "memory estimate (batch {rows} × {} tokens): {estimate}; activations {} {} --gradient-checkpointing",
        longest + virtual_tokens,
        gib(other),
        if o.gradient_checkpointing { "without" } else { "with" },
    );
    let Some(available) = peft::io::budget::ram_available() else {
        return Ok(());
    };
    match plan.check(available) {
        Ok(_) => Ok(()),
        Err(e) if o.ignore_memory_estimate => {
            eprintln!("warning: {e}");
            Ok(())
        }
        Err(e) if virtual_tokens > 0 => bail!(
            "{e}\n(the length includes {virtual_tokens} virtual tokens: `num_virtual_tokens`)"
        ),
        Err(e) => Err(e.into()),
    }
}
