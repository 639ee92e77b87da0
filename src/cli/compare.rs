//! `peft compare`: every method on the same task, data order, seed, optimizer and budget. Each
//! method trains in a `peft train` child process and is scored by a `peft compare-eval` child;
//! the base model zero-shot is the first row. Results go to `--out`: `results.json`,
//! `results.md`, `loss_curves.svg`, `metric_vs_params.svg`, and per-method runs, configs, logs
//! and predictions. They are rewritten after every method, so an interrupted comparison keeps the
//! rows it finished.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use peft::compare::output::write_outputs;
use peft::compare::{Budget, MethodResult, Override, Presets, Results, RunMetrics};
use peft::data::{self, BatchConfig};
use peft::tokenizer::TextTokenizer;
use peft::train::ScheduleKind;
use serde_json::{json, Value};

use super::compare_child::{self as child, Watch};
use super::data_options::DataOptions;

const DEFAULT_METHODS: &str =
    "lora,rslora,dora,adalora,ia3,prompt,ptuning,prefix,ptuning-v2,llama-adapter";

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataOptions,
    /// Methods to compare, by their names in the presets file (`adapters/compare.toml`).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_METHODS)]
    pub methods: Vec<String>,
    /// The same budget for every method: steps=N, tokens=N (real training tokens) or minutes=N.
    #[arg(long)]
    pub budget: Budget,
    /// Output folder (refused if it holds results, unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Override a preset: METHOD.KEY=VALUE (an adapter_config.json key, or `lr`). Repeatable.
    #[arg(long = "set", value_name = "METHOD.KEY=VALUE")]
    pub sets: Vec<Override>,
    /// The presets file (default: adapters/compare.toml).
    #[arg(long)]
    pub presets: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Learning-rate schedule (a minutes budget always uses constant: its end is not known).
    #[arg(long, value_enum, default_value = "linear")]
    pub lr_scheduler: ScheduleKind,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Score only the first N held-out records (generation is the slow part on a CPU).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// auto (exact-match when the responses are labels, ROUGE-L otherwise), exact-match,
    /// rouge-l or none.
    #[arg(long, default_value = "auto")]
    pub task_metric: String,
    /// New tokens per generated answer (default: the longest reference plus a few).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Compute device: cpu, flex, ndarray or wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replace an output folder that already holds results.
    #[arg(long)]
    pub overwrite: bool,
}

/// The validated comparison.
pub struct Plan {
    pub args: CompareArgs,
    pub presets: Presets,
    /// Steps per method (`None`: a minutes budget).
    pub steps: Option<usize>,
}

fn default_presets() -> PathBuf {
    let local = PathBuf::from("adapters/compare.toml");
    if local.is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/compare.toml")
}

impl TryFrom<CompareArgs> for Plan {
    type Error = anyhow::Error;
    fn try_from(mut args: CompareArgs) -> anyhow::Result<Self> {
        let presets = Presets::load(&args.presets.clone().unwrap_or_else(default_presets))?;
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
        if args.batch_size == 0 || args.grad_accum == 0 {
            bail!("--batch-size and --grad-accum must be at least 1");
        }
        peft::models::ModelDir::open(&args.model)?;
        let steps = match args.budget {
            Budget::Steps(n) => Some(n),
            Budget::Tokens(n) => Some(steps_for_tokens(&args, n)?),
            Budget::Minutes(_) => None,
        };
        Ok(Self {
            args,
            presets,
            steps,
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
        shuffle: true,
        group_by_length: args.data.group_by_length,
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

/// The data flags of the children (`--eval-data` only for evaluation: training never sees it).
fn data_flags(d: &DataOptions, eval: bool) -> Vec<OsString> {
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
    if eval {
        opt("--eval-data", d.eval_data.clone().map(Into::into));
    }
    for (on, flag) in [
        (d.train_on_prompt, "--train-on-prompt"),
        (d.append_eos, "--append-eos"),
        (d.skip_bad_records, "--skip-bad-records"),
        (d.group_by_length, "--group-by-length"),
    ] {
        if on {
            f.push(flag.into());
        }
    }
    f
}

fn os(items: &[&str]) -> Vec<OsString> {
    items.iter().map(Into::into).collect()
}

fn scheduler(plan: &Plan) -> ScheduleKind {
    match plan.args.budget {
        Budget::Minutes(_) => ScheduleKind::Constant,
        _ => plan.args.lr_scheduler,
    }
}

/// What every method shares, for results.json.
fn common(plan: &Plan) -> Value {
    let a = &plan.args;
    let name = scheduler(plan)
        .to_possible_value()
        .map(|v| v.get_name().to_string());
    json!({"seed": a.seed, "batch_size": a.batch_size, "grad_accum": a.grad_accum,
        "steps": plan.steps, "optimizer": "AdamW (betas 0.9, 0.999; eps 1e-8; no weight decay), gradient norm clipped at 1.0",
        "lr_scheduler": name, "warmup_steps": a.warmup_steps, "max_len": a.data.max_len.unwrap_or(1024),
        "eval_limit": a.eval_limit, "device": a.device})
}

/// `peft compare-eval` on the model (with `adapter`), into logs/NAME.*; its JSON output.
fn evaluate(
    plan: &Plan,
    name: &str,
    adapter: Option<&Path>,
    bar: &ProgressBar,
) -> Result<(Value, f64, Option<f64>), String> {
    let a = &plan.args;
    let logs = a.out.join("logs");
    let mut args = os(&[
        "compare-eval",
        "--device",
        &a.device,
        "--task-metric",
        &a.task_metric,
    ]);
    args.extend([OsString::from("--model"), a.model.clone().into()]);
    args.extend(data_flags(&a.data, true));
    args.extend([OsString::from("--seed"), a.seed.to_string().into()]);
    args.extend([
        OsString::from("--predictions"),
        logs.join(format!("{name}.predictions.jsonl")).into(),
    ]);
    if let Some(dir) = adapter {
        args.extend([OsString::from("--adapter"), dir.into()]);
    }
    if let Some(n) = a.eval_limit {
        args.extend([OsString::from("--limit"), n.to_string().into()]);
    }
    if let Some(n) = a.max_new_tokens {
        args.extend([OsString::from("--max-new-tokens"), n.to_string().into()]);
    }
    let (stdout, log) = (
        logs.join(format!("{name}.eval.json")),
        logs.join(format!("{name}.eval.log")),
    );
    bar.set_message("evaluating");
    let watch = Watch {
        bar,
        metrics: None,
        deadline: None,
    };
    let done = child::run(&args, &stdout, &log, &watch).map_err(|e| format!("{e:#}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !done.success {
        return Err(format!("evaluation: {}", child::error_message(&text, &log)));
    }
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let value: Value = serde_json::from_str(out.trim())
        .map_err(|e| format!("evaluation output {}: {e}", stdout.display()))?;
    Ok((value, done.seconds, done.peak_rss_mib))
}

/// Eval numbers into the metrics.
fn eval_metrics(m: &mut RunMetrics, v: &Value, seconds: f64, rss: Option<f64>) {
    m.eval_loss = v["eval_loss"].as_f64();
    m.eval_perplexity = v["eval_perplexity"].as_f64();
    m.task_metric = v["task_metric"].as_str().map(String::from);
    m.task_score = v["task_score"].as_f64();
    m.task_examples = v["task_examples"].as_u64().map(|n| n as usize);
    m.eval_seconds = Some(seconds);
    m.eval_peak_rss_mib = rss;
}

fn row(
    method: &str,
    config: Value,
    metrics: RunMetrics,
    curve: Vec<(usize, f64)>,
    error: Option<String>,
) -> MethodResult {
    MethodResult {
        method: method.to_string(),
        status: if error.is_some() { "error" } else { "ok" }.into(),
        error,
        config,
        metrics,
        curve,
    }
}

/// The base model zero-shot, and the majority-label share of the eval set.
fn run_base(plan: &Plan, bar: &ProgressBar) -> (MethodResult, Option<f64>) {
    let mut metrics = RunMetrics {
        trainable_params: Some(0),
        trainable_percent: Some(0.0),
        ..Default::default()
    };
    match evaluate(plan, "base", None, bar) {
        Ok((v, s, rss)) => {
            eval_metrics(&mut metrics, &v, s, rss);
            let share = v["majority_share"].as_f64();
            (row("base", Value::Null, metrics, vec![], None), share)
        }
        Err(e) => (row("base", Value::Null, metrics, vec![], Some(e)), None),
    }
}

/// The `peft train` arguments of one method.
fn train_args(plan: &Plan, name: &str, lr: f64, adapter: &[OsString]) -> Vec<OsString> {
    let a = &plan.args;
    let schedule = scheduler(plan)
        .to_possible_value()
        .map_or("linear".to_string(), |v| v.get_name().to_string());
    let steps = plan.steps.unwrap_or(usize::MAX / 2).to_string();
    let mut args = os(&[
        "compare-train",
        "--device",
        &a.device,
        "--lr-scheduler",
        &schedule,
        "--logging-steps",
        "1",
        "--overwrite",
    ]);
    args.extend([OsString::from("--model"), a.model.clone().into()]);
    args.extend([
        OsString::from("--out"),
        a.out.join("runs").join(name).into(),
    ]);
    args.extend(data_flags(&a.data, false));
    for (flag, v) in [
        ("--batch-size", a.batch_size.to_string()),
        ("--grad-accum", a.grad_accum.to_string()),
        ("--seed", a.seed.to_string()),
        ("--warmup-steps", a.warmup_steps.to_string()),
        ("--max-steps", steps),
        ("--lr", format!("{lr:e}")),
    ] {
        args.extend([OsString::from(flag), v.into()]);
    }
    args.extend(adapter.iter().cloned());
    args
}

/// Trains and evaluates one method; every failure becomes the row's error.
fn run_method(plan: &Plan, name: &str, bar: &ProgressBar) -> anyhow::Result<MethodResult> {
    let a = &plan.args;
    let spec = match plan.presets.spec(name, &a.sets) {
        Ok(spec) => spec,
        Err(e) => {
            return Ok(row(
                name,
                Value::Null,
                RunMetrics::default(),
                vec![],
                Some(e.to_string()),
            ))
        }
    };
    let config = json!({"lr": spec.lr, "adapter_config": spec.adapter_config});
    let adapter_flags = match &spec.adapter_config {
        Some(map) => {
            let path = a.out.join("configs").join(format!("{name}.json"));
            peft::io::write_atomic(&path, serde_json::to_string_pretty(map)?.as_bytes())?;
            vec![OsString::from("--adapter-config"), path.into()]
        }
        None => os(&["--method", name]),
    };
    let run_dir = a.out.join("runs").join(name);
    let log = a.out.join("logs").join(format!("{name}.train.log"));
    bar.set_message("training");
    let watch = Watch {
        bar,
        metrics: Some(run_dir.join("metrics.jsonl")),
        deadline: match a.budget {
            Budget::Minutes(m) => Some(Duration::from_secs_f64(m * 60.0)),
            _ => None,
        },
    };
    let args = train_args(plan, name, spec.lr, &adapter_flags);
    let done = child::run(
        &args,
        &a.out.join("logs").join(format!("{name}.train.out")),
        &log,
        &watch,
    )?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let entries = child::train_entries(
        &std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default(),
    );
    let mut m = RunMetrics {
        peak_rss_mib: done.peak_rss_mib,
        train_seconds: Some(done.seconds),
        ..Default::default()
    };
    if let Some((trainable, total)) = child::trainable_params(&text) {
        m.trainable_params = Some(trainable);
        m.total_params = Some(total);
        m.trainable_percent = Some(100.0 * trainable as f64 / total.max(1) as f64);
    }
    let curve: Vec<(usize, f64)> = entries.iter().map(|e| (e.0, e.1)).collect();
    m.steps = entries.last().map(|e| e.0);
    m.final_train_loss = entries.last().map(|e| e.1);
    let tokens: usize = entries.iter().map(|e| e.2).sum();
    let step_seconds: f64 = entries.iter().map(|e| e.2 as f64 / e.3.max(1e-12)).sum();
    m.train_tokens = Some(tokens);
    m.tokens_per_s = (step_seconds > 0.0).then(|| tokens as f64 / step_seconds);
    let adapter_dir = match (done.success, done.interrupted) {
        (true, _) => Some(run_dir.clone()),
        (false, true) => child::latest_checkpoint(&run_dir),
        (false, false) => None,
    };
    let Some(adapter_dir) = adapter_dir else {
        return Ok(row(
            name,
            config,
            m,
            curve,
            Some(child::error_message(&text, &log)),
        ));
    };
    m.adapter_bytes = std::fs::metadata(adapter_dir.join("adapter_model.safetensors"))
        .ok()
        .map(|md| md.len());
    let error = match evaluate(plan, name, Some(&adapter_dir), bar) {
        Ok((v, s, rss)) => {
            eval_metrics(&mut m, &v, s, rss);
            None
        }
        Err(e) => Some(e),
    };
    Ok(row(name, config, m, curve, error))
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

/// `--out` must not hold results (unless --overwrite, which clears it).
fn prepare_out(out: &Path, overwrite: bool) -> anyhow::Result<()> {
    if out.join("results.json").exists() {
        if !overwrite {
            bail!(
                "{} already holds results (results.json); pass --overwrite to replace them",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    for sub in ["runs", "logs", "configs"] {
        std::fs::create_dir_all(out.join(sub))
            .with_context(|| format!("creating {}", out.join(sub).display()))?;
    }
    Ok(())
}

fn bars(plan: &Plan) -> (MultiProgress, ProgressBar, ProgressBar) {
    let multi = MultiProgress::new();
    let style =
        |t: &str| ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar());
    let overall = multi.add(ProgressBar::new(plan.args.methods.len() as u64 + 1));
    overall.set_style(style(
        "compare {bar:30} {pos}/{len} runs [{elapsed_precise}] {msg}",
    ));
    let method = multi.add(ProgressBar::new(plan.steps.unwrap_or(0) as u64));
    method.set_style(style(
        "{prefix:>13} {bar:30} {pos}/{len} steps [{elapsed_precise}] {msg}",
    ));
    (multi, overall, method)
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let plan = Plan::try_from(args)?;
    let a = &plan.args;
    prepare_out(&a.out, a.overwrite)?;
    let mut results = Results {
        command: command_line(),
        machine: machine(),
        model: a.model.display().to_string(),
        data: a
            .data
            .data
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string()),
        eval: match (&a.data.eval_data, a.data.eval_split) {
            (Some(p), _) => format!(
                "`{}`{}",
                p.display(),
                a.eval_limit
                    .map_or(String::new(), |n| format!(" (first {n} records)"))
            ),
            (None, s) => format!("{} of the data held out", s.unwrap_or(0.0)),
        },
        budget: a.budget.to_string(),
        common: common(&plan),
        task_metric: None,
        majority_share: None,
        methods: Vec::new(),
    };
    let (multi, overall, bar) = bars(&plan);
    for name in std::iter::once("base").chain(a.methods.iter().map(String::as_str)) {
        overall.set_message(name.to_string());
        bar.set_prefix(name.to_string());
        bar.reset();
        let result = if name == "base" {
            let (result, share) = run_base(&plan, &bar);
            results.majority_share = share;
            result
        } else {
            run_method(&plan, name, &bar)?
        };
        multi.suspend(|| eprintln!("{}", summary(&result)));
        results.task_metric = results
            .task_metric
            .or_else(|| result.metrics.task_metric.clone());
        results.methods.push(result);
        write_outputs(&a.out, &results)?;
        overall.inc(1);
    }
    overall.finish_with_message("done");
    bar.finish_and_clear();
    eprintln!(
        "results in {} (results.md, results.json, loss_curves.svg, metric_vs_params.svg)",
        a.out.display()
    );
    Ok(())
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
