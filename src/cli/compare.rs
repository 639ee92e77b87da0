//! `peft compare`: every method on the same task, data order, seeds, optimizer and budget. This
//! file parses and validates; the comparison itself (children, rows, sweep, resume) is
//! `peft::compare::run`. Results go to `--out`: `results.json`, `results.md`, the plots, and
//! per-method runs, configs, logs and predictions. They are rewritten after every row, so an
//! interrupted comparison keeps the rows it finished and `--resume` continues it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use peft::compare::output::OUTPUT_FILES;
use peft::compare::{Budget, ComparePlan, MethodResult, Override, Presets, Progress, Results};
use peft::data::{self, BatchConfig};
use peft::tokenizer::TextTokenizer;
use peft::train::ScheduleKind;
use serde_json::{json, Value};

use super::data_options::DataOptions;

const DEFAULT_METHODS: &str =
    "lora,rslora,dora,adalora,ia3,prompt,ptuning,prefix,ptuning-v2,llama-adapter";

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Hugging Face model folder (required).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataOptions,
    /// Methods to compare, by their names in the presets file (`adapters/compare.toml`).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_METHODS)]
    pub methods: Vec<String>,
    /// The same budget for every method: steps=N, tokens=N (real training tokens) or minutes=N
    /// (required).
    #[arg(long)]
    pub budget: Budget,
    /// Output folder, refused if it holds results unless --overwrite (required).
    #[arg(long)]
    pub out: PathBuf,
    /// Override a preset: METHOD.KEY=VALUE (an adapter_config.json key, or `lr`). Repeatable
    /// (default: none).
    #[arg(long = "set", value_name = "METHOD.KEY=VALUE")]
    pub sets: Vec<Override>,
    /// The presets file (default: adapters/compare.toml).
    #[arg(long)]
    pub presets: Option<PathBuf>,
    /// Records per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Seed of initialisation, data order and dropout, the same for every method.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train every method once per seed (e.g. 1,2,3); the table shows mean ± sd. Needs
    /// --eval-data (an --eval-split would change with the seed); default: --seed.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// General text (JSONL `{"text": ...}`) whose cross-entropy rise over the base model is the
    /// forgetting column (default: the bundled datasets/general_text.jsonl, English and Chinese).
    #[arg(long)]
    pub forgetting_data: Option<PathBuf>,
    /// Do not measure forgetting.
    #[arg(long, conflicts_with = "forgetting_data")]
    pub no_forgetting: bool,
    /// Try N learning rates per method (a half-decade grid around the preset's) on a quarter of
    /// the budget against a validation split of the training data, and keep the best. Needs
    /// --eval-data (default: the presets' rates).
    #[arg(long, value_name = "N")]
    pub lr_sweep: Option<usize>,
    /// With --lr-sweep: write the presets with the chosen rates to FILE (read it back with
    /// --presets FILE; default: none).
    #[arg(long, value_name = "FILE", requires = "lr_sweep")]
    pub save_preset: Option<PathBuf>,
    /// Continue the comparison in --out: finished rows are kept, a method cut short continues
    /// from its last checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Learning-rate schedule (a minutes budget always uses constant_with_warmup: its end is not
    /// known).
    #[arg(long, value_enum, default_value = "linear")]
    pub lr_scheduler: ScheduleKind,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Train every method on the file's order (as `peft train --no-shuffle`), e.g. a file whose
    /// batches hold both labels alike (default: shuffle every epoch).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Score only the first N held-out records; generation is the slow part on a CPU
    /// (default: all).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// auto (exact-match when the responses are labels, ROUGE-L otherwise), exact-match,
    /// rouge-l or none.
    #[arg(long, default_value = "auto")]
    pub task_metric: String,
    /// New tokens per generated free-text answer (default: the longest reference plus a few).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Compute device: cpu, flex, ndarray or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replace an output folder that already holds results (default: refuse).
    #[arg(long)]
    pub overwrite: bool,
}

/// The validated comparison.
pub struct Plan {
    pub args: CompareArgs,
    pub presets: Presets,
    /// Steps per method (`None`: a minutes budget).
    pub steps: Option<usize>,
    /// config.json's `model_type`: picks family variants of the presets.
    pub model_type: String,
}

fn bundled(path: &str) -> PathBuf {
    let local = PathBuf::from(path);
    if local.is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The forgetting set: the flag's file, else the bundled one where it exists.
fn forgetting_data(a: &CompareArgs) -> anyhow::Result<Option<PathBuf>> {
    match (&a.forgetting_data, a.no_forgetting) {
        (_, true) => Ok(None),
        (Some(f), false) if f.is_file() => Ok(Some(f.clone())),
        (Some(f), false) => bail!("--forgetting-data {}: no such file", f.display()),
        (None, false) => Ok(Some(bundled("datasets/general_text.jsonl")).filter(|f| f.is_file())),
    }
}

impl TryFrom<CompareArgs> for Plan {
    type Error = anyhow::Error;
    fn try_from(mut args: CompareArgs) -> anyhow::Result<Self> {
        let presets = Presets::load(
            &args
                .presets
                .clone()
                .unwrap_or_else(|| bundled("adapters/compare.toml")),
        )?;
        let mut seen = std::collections::HashSet::new();
        args.methods.retain(|m| seen.insert(m.clone()));
        if args.methods.is_empty() {
            bail!("--methods is empty");
        }
        for m in &args.methods {
            presets.get(m)?;
        }
        if let Some(o) = args.sets.iter().find(|o| !args.methods.contains(&o.method)) {
            bail!(
                "--set {}.{}: {} is not in --methods",
                o.method,
                o.key,
                o.method
            );
        }
        if args.data.eval_data.is_none() && args.data.eval_split.is_none() {
            bail!("peft compare needs held-out data: --eval-data FILE or --eval-split F");
        }
        let mut seen = std::collections::HashSet::new();
        args.seeds.retain(|s| seen.insert(*s));
        if args.seeds.is_empty() {
            args.seeds.push(args.seed);
        }
        if args.data.eval_data.is_none() && args.seeds.len() > 1 {
            bail!("--seeds with several seeds needs --eval-data FILE: an --eval-split would hold out different records for each seed");
        }
        match args.lr_sweep {
            Some(0) => bail!("--lr-sweep must be at least 1"),
            Some(_) if args.data.eval_data.is_none() => bail!(
                "--lr-sweep needs --eval-data FILE: the sweep carves its validation split from --data, which must not overlap an --eval-split test set"
            ),
            _ => {}
        }
        args.data.to_config(args.seed)?;
        if !["auto", "none"].contains(&args.task_metric.as_str()) {
            args.task_metric
                .parse::<peft::compare::TaskMetric>()
                .map_err(|e| anyhow::anyhow!("--task-metric: {e}, or auto, or none"))?;
        }
        if args.batch_size == 0 || args.grad_accum == 0 {
            bail!("--batch-size and --grad-accum must be at least 1");
        }
        // Every method would fail on it: refuse before the first child starts.
        if args.data.balance_labels {
            let tokenizer = TextTokenizer::load(&args.model)?;
            let prepared = data::prepare(&args.data.to_config(args.seed)?, &tokenizer)?;
            data::balance::check(&prepared.train, args.batch_size)?;
        }
        let model_type = peft::models::ModelDir::open(&args.model)?
            .model_type()
            .to_string();
        let steps = match args.budget {
            Budget::Steps(n) => Some(n),
            Budget::Tokens(n) => Some(steps_for_tokens(&args, n)?),
            Budget::Minutes(_) => None,
        };
        Ok(Self {
            args,
            presets,
            steps,
            model_type,
        })
    }
}

/// Steps that consume `tokens` real tokens in the shared data order (the batches `peft train`
/// builds from the same data, seed and batch size).
fn steps_for_tokens(args: &CompareArgs, tokens: usize) -> anyhow::Result<usize> {
    let tokenizer = TextTokenizer::load(&args.model)?;
    let config = args.data.to_config(args.seed)?;
    let prepared = data::prepare(&config, &tokenizer)?;
    let batch_config = BatchConfig {
        batch_size: args.batch_size,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        group_by_length: args.data.group_by_length,
        balance_labels: args.data.balance_labels,
        pack: args.data.pack,
        pad_id: prepared.pad_id,
    };
    let mut epoch = |e: usize| {
        data::batches(&prepared.train, &batch_config, e as u64)
            .iter()
            .map(|b| b.tokens())
            .collect()
    };
    let micro = peft::compare::plan::steps_for_tokens(&mut epoch, tokens)
        .context("--budget tokens=N: the training data holds no tokens")?;
    Ok(micro.div_ceil(args.grad_accum))
}

/// The schedule every method uses (a minutes budget: constant_with_warmup, its end is unknown).
fn scheduler(a: &CompareArgs) -> ScheduleKind {
    match a.budget {
        Budget::Minutes(_) => ScheduleKind::ConstantWithWarmup,
        _ => a.lr_scheduler,
    }
}

/// What every method shares, for results.json.
fn common(plan: &Plan) -> Value {
    let a = &plan.args;
    let name = scheduler(a)
        .to_possible_value()
        .map(|v| v.get_name().to_string());
    json!({"seeds": a.seeds, "batch_size": a.batch_size, "grad_accum": a.grad_accum,
        "steps": plan.steps, "optimizer": "AdamW (betas 0.9, 0.999; eps 1e-8; no weight decay), gradient norm clipped at 1.0",
        "lr_scheduler": name, "warmup_steps": a.warmup_steps, "shuffle": !a.no_shuffle,
        "balance_labels": a.data.balance_labels, "group_by_length": a.data.group_by_length, "max_len": a.data.max_len.unwrap_or(1024),
        "eval_limit": a.eval_limit, "lr_sweep": a.lr_sweep, "device": a.device,
        "forgetting_data": forgetting_data(a).ok().flatten().map(|p| p.display().to_string())})
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_string())
    });
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{}, {cores} cores, {}",
        cpu.unwrap_or_else(|| "unknown CPU".into()),
        mem.map_or("unknown memory".into(), |kb| format!(
            "{:.0} GiB RAM",
            kb / 1024.0 / 1024.0
        ))
    )
}

fn command_line() -> String {
    let quote = |a: String| {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:+".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    let mut args: Vec<String> = std::env::args().skip(1).map(quote).collect();
    args.insert(0, "peft".into());
    args.join(" ")
}

/// `--out` must not hold results (unless --overwrite: each result file and method run is then
/// replaced as the new comparison writes it; nothing else in the folder is deleted, or --resume:
/// they are continued), nor be, contain or lie inside an input.
fn prepare_out(a: &CompareArgs) -> anyhow::Result<()> {
    let out = &a.out;
    let mut inputs: Vec<(&str, &Path)> = vec![("--model folder", &a.model)];
    for (what, file) in [
        ("--data file", &a.data.data),
        ("--eval-data file", &a.data.eval_data),
        ("--forgetting-data file", &a.forgetting_data),
    ] {
        if let Some(f) = file {
            inputs.push((what, f));
        }
    }
    if let Some(p) = &a.presets {
        inputs.push(("--presets file", p));
    }
    peft::io::paths::check_out_against_inputs(out, &inputs)?;
    if out.join("results.json").exists() && !a.overwrite && !a.resume {
        bail!(
            "{} already holds results (results.json); pass --resume to continue them or --overwrite to replace them",
            out.display()
        );
    }
    for sub in ["runs", "logs", "configs"] {
        std::fs::create_dir_all(out.join(sub))
            .with_context(|| format!("creating {}", out.join(sub).display()))?;
    }
    Ok(())
}

/// The data flags of the children: training data only (`--eval-data` is for evaluation, as
/// the second list; training never sees it).
fn data_flags(d: &DataOptions) -> (Vec<OsString>, Vec<OsString>) {
    let mut f: Vec<OsString> = Vec::new();
    let mut opt = |name: &str, v: Option<OsString>| {
        if let Some(v) = v {
            f.extend([name.into(), v]);
        }
    };
    opt("--data", d.data.clone().map(Into::into));
    opt("--format", d.format.clone().map(Into::into));
    opt("--template", d.template.clone().map(Into::into));
    opt("--eval-split", d.eval_split.map(|s| s.to_string().into()));
    opt("--max-len", d.max_len.map(|n| n.to_string().into()));
    opt("--pack", d.pack.map(|n| n.to_string().into()));
    for (on, flag) in [
        (d.train_on_prompt, "--train-on-prompt"),
        (d.append_eos, "--append-eos"),
        (d.skip_bad_records, "--skip-bad-records"),
        (d.group_by_length, "--group-by-length"),
        (d.balance_labels, "--balance-labels"),
    ] {
        if on {
            f.push(flag.into());
        }
    }
    let eval = d
        .eval_data
        .iter()
        .flat_map(|p| [OsString::from("--eval-data"), p.clone().into()])
        .collect();
    (f, eval)
}

impl Plan {
    fn into_library(self) -> anyhow::Result<ComparePlan> {
        let a = &self.args;
        let (data_flags, eval_data_flags) = data_flags(&a.data);
        Ok(ComparePlan {
            exe: std::env::current_exe().context("locating the peft binary")?,
            model: a.model.clone(),
            model_type: self.model_type.clone(),
            out: a.out.clone(),
            methods: a.methods.clone(),
            presets: self.presets.clone(),
            sets: a.sets.clone(),
            budget: a.budget,
            steps: self.steps,
            seeds: a.seeds.clone(),
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            scheduler: scheduler(a),
            warmup_steps: a.warmup_steps,
            shuffle: !a.no_shuffle,
            device: a.device.clone(),
            eval_limit: a.eval_limit,
            task_metric: a.task_metric.clone(),
            max_new_tokens: a.max_new_tokens,
            forgetting_data: forgetting_data(a)?,
            data_flags,
            eval_data_flags,
            lr_sweep: a.lr_sweep,
            save_preset: a.save_preset.clone(),
            resume: a.resume,
        })
    }
}

/// Progress on the terminal: an overall bar over the rows and one for the current run.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    run: ProgressBar,
}

impl Bars {
    fn new(rows: usize) -> Self {
        let multi = MultiProgress::new();
        let style = |t: &str| {
            ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar())
        };
        let overall = multi.add(ProgressBar::new(rows as u64));
        overall.set_style(style(
            "compare {bar:30} {pos}/{len} runs [{elapsed_precise}] {msg}",
        ));
        let run = multi.add(ProgressBar::new(0));
        run.set_style(style(
            "{prefix:>13} {bar:30} {pos}/{len} steps [{elapsed_precise}] {msg}",
        ));
        Self {
            multi,
            overall,
            run,
        }
    }
}

impl Progress for Bars {
    fn start(&self, run: &str, steps: Option<usize>) {
        self.overall.set_message(run.to_string());
        self.run.set_prefix(run.to_string());
        self.run.reset();
        self.run.set_length(steps.unwrap_or(0) as u64);
    }
    fn step(&self, step: usize, message: &str) {
        self.run.set_position(step as u64);
        self.run.set_message(message.to_string());
    }
    fn message(&self, message: &str) {
        self.run.set_message(message.to_string());
    }
    fn finished(&self, row: &MethodResult, kept: bool) {
        let line = summary(row)
            + if kept {
                " (kept from the earlier run)"
            } else {
                ""
            };
        self.multi.suspend(|| eprintln!("{line}"));
        self.overall.inc(1);
    }
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let plan = Plan::try_from(args)?;
    let a = &plan.args;
    prepare_out(a)?;
    let _lock = peft::io::lock::lock_dir(&a.out)?;
    let results = Results {
        command: command_line(),
        machine: machine(),
        model: a.model.display().to_string(),
        data: a
            .data
            .data
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string()),
        eval: eval_description(a),
        budget: a.budget.to_string(),
        common: common(&plan),
        task_metric: None,
        majority_share: None,
        methods: Vec::new(),
    };
    let out = a.out.clone();
    let rows = 1 + a.methods.len() * a.seeds.len();
    let plan = plan.into_library()?;
    let bars = Bars::new(rows);
    peft::compare::run::run(&plan, results, &bars)?;
    bars.overall.finish_with_message("done");
    bars.run.finish_and_clear();
    eprintln!("results in {} ({})", out.display(), OUTPUT_FILES.join(", "));
    Ok(())
}
/// "`eval.jsonl` (first 24 records)" or "0.1 of the data held out".
fn eval_description(a: &CompareArgs) -> String {
    let data = match (&a.data.eval_data, a.data.eval_split) {
        (Some(p), _) => format!("`{}`", p.display()),
        (None, s) => format!("{} of the data held out", s.unwrap_or(0.0)),
    };
    let limit = a
        .eval_limit
        .map_or(String::new(), |n| format!(" (first {n} records)"));
    data + &limit
}

fn summary(r: &MethodResult) -> String {
    match &r.error {
        Some(e) => format!("{}: error: {e}", r.method),
        None => format!(
            "{}: task {} | eval loss {} | {} trainable | {:.0} s",
            r.method,
            r.metrics
                .task_score
                .map_or("–".into(), |s| format!("{s:.3}")),
            r.metrics
                .eval_loss
                .map_or("–".into(), |l| format!("{l:.4}")),
            r.metrics
                .trainable_params
                .map_or("?".into(), peft::compare::results::human_count),
            r.metrics.train_seconds.unwrap_or(0.0) + r.metrics.eval_seconds.unwrap_or(0.0)
        ),
    }
}
