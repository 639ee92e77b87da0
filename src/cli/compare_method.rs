//! One row of `peft compare`: a method trained by a `peft compare-train` child and scored by a
//! `peft compare-eval` child (or the base model, scored only), with the children's arguments
//! built from the shared plan.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;
use indicatif::ProgressBar;
use peft::compare::{Budget, MethodResult, RunMetrics};
use peft::train::ScheduleKind;
use serde_json::{json, Value};

use super::compare::Plan;
use super::compare_child::{self as child, Watch};
use super::data_options::DataOptions;

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

pub fn scheduler(plan: &Plan) -> ScheduleKind {
    match plan.args.budget {
        Budget::Minutes(_) => ScheduleKind::ConstantWithWarmup,
        _ => plan.args.lr_scheduler,
    }
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
pub fn run_base(plan: &Plan, bar: &ProgressBar) -> (MethodResult, Option<f64>) {
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

/// What the training child reported: its log (trainable parameters) and `metrics.jsonl`
/// (curve, steps, tokens, tokens/s of step time).
fn train_metrics(
    done: &child::Finished,
    log: &str,
    metrics: &Path,
) -> (RunMetrics, Vec<(usize, f64)>) {
    let entries = child::train_entries(&std::fs::read_to_string(metrics).unwrap_or_default());
    let mut m = RunMetrics {
        peak_rss_mib: done.peak_rss_mib,
        train_seconds: Some(done.seconds),
        ..Default::default()
    };
    if let Some((trainable, total)) = child::trainable_params(log) {
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
    (m, curve)
}

/// Decoder layers of the model (`num_hidden_layers`, ChatGLM's `num_layers`); `usize::MAX` when
/// config.json does not say (nothing is clamped; training reports the problem).
fn model_layers(model: &std::path::Path) -> usize {
    let config = std::fs::read_to_string(model.join("config.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
    ["num_hidden_layers", "num_layers"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .map_or(usize::MAX, |n| n as usize)
}

/// Trains and evaluates one method; every failure becomes the row's error.
pub fn run_method(plan: &Plan, name: &str, bar: &ProgressBar) -> anyhow::Result<MethodResult> {
    let a = &plan.args;
    let mut spec = match plan.presets.spec(name, &plan.model_type, &a.sets) {
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
    let notes = spec.fit_to_model(model_layers(&a.model));
    let config = json!({"lr": spec.lr, "adapter_config": spec.adapter_config, "notes": notes});
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
    let (mut m, curve) = train_metrics(&done, &text, &run_dir.join("metrics.jsonl"));
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
