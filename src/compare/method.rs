//! One row of `peft compare`: a method trained by a `peft compare-train` child and scored by a
//! `peft compare-eval` child (or the base model, scored only), with the children's arguments
//! built from the shared plan.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::child::{self, Finished, Watch};
use super::plan::{Budget, MethodSpec};
use super::results::{MethodResult, RunMetrics};
use super::run::{ComparePlan, Progress};
use super::CompareError;

fn os(items: &[&str]) -> Vec<OsString> {
    items.iter().map(Into::into).collect()
}

fn flag(args: &mut Vec<OsString>, name: &str, value: impl Into<OsString>) {
    args.extend([OsString::from(name), value.into()]);
}

/// Which held-out records a `compare-eval` child scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalOn {
    /// The test set (`--eval-data` or the plan's `--eval-split`), and the forgetting set.
    Test,
    /// A validation split carved from the training data (`--lr-sweep`): never the test set.
    Validation(f64),
}

/// One `compare-eval` child: where it reads and writes.
pub struct EvalJob<'a> {
    /// File stem under `logs/`.
    pub name: &'a str,
    pub adapter: Option<&'a Path>,
    pub on: EvalOn,
    pub seed: u64,
}

/// `peft compare-eval` on the model (with the job's adapter), into logs/NAME.*; its JSON output.
pub fn evaluate(
    plan: &ComparePlan,
    job: &EvalJob,
    progress: &dyn Progress,
) -> Result<(Value, Finished), String> {
    let logs = plan.out.join("logs");
    let mut args = os(&[
        "compare-eval",
        "--device",
        &plan.device,
        "--task-metric",
        &plan.task_metric,
    ]);
    flag(&mut args, "--model", &plan.model);
    args.extend(plan.data_flags.iter().cloned());
    match job.on {
        EvalOn::Test => {
            args.extend(plan.eval_data_flags.iter().cloned());
            if let Some(f) = &plan.forgetting_data {
                flag(&mut args, "--forgetting-data", f);
            }
        }
        EvalOn::Validation(split) => flag(&mut args, "--eval-split", split.to_string()),
    }
    flag(&mut args, "--seed", job.seed.to_string());
    let predictions = logs.join(format!("{}.predictions.jsonl", job.name));
    flag(&mut args, "--predictions", predictions);
    if let Some(dir) = job.adapter {
        flag(&mut args, "--adapter", dir);
    }
    if let Some(n) = plan.eval_limit {
        flag(&mut args, "--limit", n.to_string());
    }
    if let Some(n) = plan.max_new_tokens {
        flag(&mut args, "--max-new-tokens", n.to_string());
    }
    let stdout = logs.join(format!("{}.eval.json", job.name));
    let log = logs.join(format!("{}.eval.log", job.name));
    progress.message("evaluating");
    let watch = Watch {
        progress,
        metrics: None,
    };
    let done = child::run(&plan.exe, &args, (&stdout, &log), &watch).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !done.success {
        return Err(format!("evaluation: {}", child::error_message(&text, &log)));
    }
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let value: Value = serde_json::from_str(out.trim())
        .map_err(|e| format!("evaluation output {}: {e}", stdout.display()))?;
    Ok((value, done))
}

/// Eval numbers into the metrics.
fn eval_metrics(m: &mut RunMetrics, v: &Value, done: &Finished) {
    m.eval_loss = v["eval_loss"].as_f64();
    m.eval_perplexity = v["eval_perplexity"].as_f64();
    m.task_metric = v["task_metric"].as_str().map(String::from);
    m.task_score = v["task_score"].as_f64();
    m.task_examples = v["task_examples"].as_u64().map(|n| n as usize);
    m.task_score_sd = v["task_score_sd"].as_f64();
    m.right_per_label = serde_json::from_value(v["right_per_label"].clone()).unwrap_or_default();
    m.general_ce = v["general_ce"].as_f64();
    m.eval_seconds = Some(done.seconds);
    m.eval_peak_rss_mib = done.memory.peak;
}

fn row(method: &str, seed: Option<u64>, config: Value, metrics: RunMetrics) -> MethodResult {
    MethodResult {
        method: method.to_string(),
        seed,
        status: "ok".into(),
        error: None,
        config,
        metrics,
        curve: vec![],
        sweep: vec![],
    }
}

fn failed(mut r: MethodResult, error: String) -> MethodResult {
    r.status = "error".into();
    r.error = Some(error);
    r
}

/// The base model zero-shot, and the majority-label share of the eval set.
pub fn run_base(plan: &ComparePlan, progress: &dyn Progress) -> (MethodResult, Option<f64>) {
    let metrics = RunMetrics {
        trainable_params: Some(0),
        trainable_percent: Some(0.0),
        ..Default::default()
    };
    let mut r = row("base", None, Value::Null, metrics);
    let job = EvalJob {
        name: "base",
        adapter: None,
        on: EvalOn::Test,
        seed: plan.seeds[0],
    };
    match evaluate(plan, &job, progress) {
        Ok((v, done)) => {
            eval_metrics(&mut r.metrics, &v, &done);
            (r, v["majority_share"].as_f64())
        }
        Err(e) => (failed(r, e), None),
    }
}

/// One `compare-train` child: what it trains and where.
pub struct TrainJob<'a> {
    pub run_dir: PathBuf,
    /// File stem under `logs/`.
    pub log_name: String,
    pub lr: f64,
    pub seed: u64,
    pub adapter: &'a [OsString],
    /// `None`: the minutes budget of the plan.
    pub steps: Option<usize>,
    pub minutes: Option<f64>,
    /// Extra data flags (a validation split for the sweep).
    pub extra: Vec<OsString>,
}

/// The `peft compare-train` arguments of a job; under `--resume` a run folder holding a
/// checkpoint is resumed from it (`peft train --resume` restores weights, optimizer, schedule and
/// data position).
fn train_args(plan: &ComparePlan, job: &TrainJob) -> Vec<OsString> {
    let steps = job.steps.unwrap_or(usize::MAX / 2);
    let mut args = os(&[
        "compare-train",
        "--device",
        &plan.device,
        "--lr-scheduler",
        plan.schedule_name(),
        "--logging-steps",
        "1",
        "--save-total-limit",
        "1",
    ]);
    // Only `--resume` continues a checkpoint: with `--overwrite` a leftover one of an earlier
    // comparison in the same `--out` was resumed, so the method trained only its last steps.
    match child::latest_checkpoint(&job.run_dir).filter(|_| plan.resume) {
        Some(_) => flag(&mut args, "--resume", &job.run_dir),
        None => args.push("--overwrite".into()),
    }
    flag(&mut args, "--model", &plan.model);
    flag(&mut args, "--out", &job.run_dir);
    args.extend(plan.data_flags.iter().cloned());
    args.extend(job.extra.iter().cloned());
    // A checkpoint about every fifth of the run (every 50 steps under a minutes budget), so a
    // killed comparison loses little of the method it was training.
    let save = job.steps.map_or(50, |s| (s / 5).max(1));
    for (name, v) in [
        ("--batch-size", plan.batch_size.to_string()),
        ("--grad-accum", plan.grad_accum.to_string()),
        ("--seed", job.seed.to_string()),
        ("--warmup-steps", plan.warmup_steps.to_string()),
        ("--max-steps", steps.to_string()),
        ("--save-steps", save.to_string()),
        ("--lr", format!("{:e}", job.lr)),
    ] {
        flag(&mut args, name, v);
    }
    if let Some(minutes) = job.minutes {
        flag(&mut args, "--max-train-minutes", minutes.to_string());
    }
    if !plan.shuffle {
        args.push("--no-shuffle".into());
    }
    args.extend(job.adapter.iter().cloned());
    args
}

/// What a training child reported: its log (trainable parameters) and `metrics.jsonl` (curve of
/// the cross-entropy, steps, tokens, tokens/s of step time).
fn train_metrics(done: &Finished, log: &str, metrics: &Path) -> (RunMetrics, Vec<(usize, f64)>) {
    let entries = child::train_entries(&std::fs::read_to_string(metrics).unwrap_or_default());
    let mut m = RunMetrics {
        peak_rss_mib: done.memory.peak,
        mean_rss_mib: done.memory.mean,
        p99_rss_mib: done.memory.p99,
        train_seconds: Some(done.seconds),
        ..Default::default()
    };
    if let Some((trainable, total)) = child::trainable_params(log) {
        m.trainable_params = Some(trainable);
        m.total_params = Some(total);
        m.trainable_percent = Some(100.0 * trainable as f64 / total.max(1) as f64);
    }
    let curve: Vec<(usize, f64)> = entries.iter().map(|e| (e.step, e.ce)).collect();
    m.steps = entries.last().map(|e| e.step);
    m.final_train_loss = entries.last().map(|e| e.ce);
    let tokens: usize = entries.iter().map(|e| e.tokens).sum();
    let step_seconds: f64 = entries
        .iter()
        .map(|e| e.tokens as f64 / e.tokens_per_s.max(1e-12))
        .sum();
    m.train_tokens = Some(tokens);
    m.tokens_per_s = (step_seconds > 0.0).then(|| tokens as f64 / step_seconds);
    (m, curve)
}

/// Decoder layers of the model (`num_hidden_layers`, ChatGLM's `num_layers`); `usize::MAX` when
/// config.json does not say (nothing is clamped; training reports the problem).
fn model_layers(model: &Path) -> usize {
    let config = std::fs::read_to_string(model.join("config.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
    ["num_hidden_layers", "num_layers"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .map_or(usize::MAX, |n| n as usize)
}

/// A trained job and its adapter folder (the run's, where it finished).
pub struct Trained {
    pub done: Finished,
    pub log: String,
    pub log_path: PathBuf,
    pub adapter: Option<PathBuf>,
}

/// Runs one training child.
pub fn train(
    plan: &ComparePlan,
    job: &TrainJob,
    progress: &dyn Progress,
) -> Result<Trained, CompareError> {
    let logs = plan.out.join("logs");
    let log_path = logs.join(format!("{}.train.log", job.log_name));
    let stdout = logs.join(format!("{}.train.out", job.log_name));
    progress.message("training");
    let watch = Watch {
        progress,
        metrics: Some(job.run_dir.join("metrics.jsonl")),
    };
    let done = child::run(
        &plan.exe,
        &train_args(plan, job),
        (&stdout, &log_path),
        &watch,
    )?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let adapter = done.success.then(|| job.run_dir.clone());
    Ok(Trained {
        done,
        log,
        log_path,
        adapter,
    })
}

/// The method's preset with overrides, clamped to the model, and the flags that select it.
pub fn resolve(
    plan: &ComparePlan,
    name: &str,
) -> Result<(MethodSpec, Vec<String>, Vec<OsString>), CompareError> {
    let mut spec = plan.presets.spec(name, &plan.model_type, &plan.sets)?;
    let notes = spec.fit_to_model(model_layers(&plan.model));
    let flags = match &spec.adapter_config {
        Some(map) => {
            let path = plan.out.join("configs").join(format!("{name}.json"));
            let text = serde_json::to_string_pretty(map).unwrap_or_else(|_| "{}".into());
            crate::io::write_atomic(&path, text.as_bytes())?;
            vec![OsString::from("--adapter-config"), path.into()]
        }
        None => os(&["--method", name]),
    };
    Ok((spec, notes, flags))
}

/// One method at one seed, with its learning rate chosen already; every failure becomes the
/// row's error.
pub struct MethodRun<'a> {
    pub name: &'a str,
    pub seed: u64,
    /// Folder under `runs/` and file stem under `logs/`.
    pub run_name: String,
    pub lr: f64,
    pub notes: Vec<String>,
    pub adapter_config: Option<&'a serde_json::Map<String, Value>>,
    pub flags: &'a [OsString],
}

/// Trains and evaluates one method at one seed.
pub fn run_method(
    plan: &ComparePlan,
    r: &MethodRun,
    progress: &dyn Progress,
) -> Result<MethodResult, CompareError> {
    let config = json!({"lr": r.lr, "adapter_config": r.adapter_config, "notes": r.notes});
    let mut result = row(r.name, Some(r.seed), config, RunMetrics::default());
    let run_dir = plan.out.join("runs").join(&r.run_name);
    let job = TrainJob {
        run_dir: run_dir.clone(),
        log_name: r.run_name.clone(),
        lr: r.lr,
        seed: r.seed,
        adapter: r.flags,
        steps: plan.steps,
        minutes: match plan.budget {
            Budget::Minutes(m) => Some(m),
            _ => None,
        },
        extra: vec![],
    };
    let trained = train(plan, &job, progress)?;
    let (m, curve) = train_metrics(&trained.done, &trained.log, &run_dir.join("metrics.jsonl"));
    (result.metrics, result.curve) = (m, curve);
    let Some(adapter_dir) = trained.adapter else {
        let e = child::error_message(&trained.log, &trained.log_path);
        return Ok(failed(result, e));
    };
    result.metrics.adapter_bytes = std::fs::metadata(adapter_dir.join("adapter_model.safetensors"))
        .ok()
        .map(|md| md.len());
    let eval = EvalJob {
        name: &r.run_name,
        adapter: Some(&adapter_dir),
        on: EvalOn::Test,
        seed: r.seed,
    };
    match evaluate(plan, &eval, progress) {
        Ok((v, done)) => {
            eval_metrics(&mut result.metrics, &v, &done);
            Ok(result)
        }
        Err(e) => Ok(failed(result, e)),
    }
}
