//! The comparison loop: the base model zero-shot, then every method at every seed, each a
//! `peft compare-train` child scored by a `peft compare-eval` child (see `child.rs`). The result
//! files are rewritten after every row, so an interrupted comparison keeps what it finished, and
//! `--resume` runs only the rows it lacks (a method cut short continues from its checkpoint).

use std::ffi::OsString;
use std::path::PathBuf;

use super::method::{resolve, run_base, run_method, MethodRun};
use super::output::{write_outputs, RESULTS_JSON};
use super::plan::{Budget, Override, Presets};
use super::results::{MethodResult, Results};
use super::sweep::{best, preset_file, sweep};
use super::CompareError;
use crate::train::ScheduleKind;

/// Where a comparison reports what it is doing (a progress bar, log lines, or nothing).
pub trait Progress {
    /// A new row starts: `run` is its name, `steps` its training steps if known.
    fn start(&self, run: &str, steps: Option<usize>);
    fn step(&self, step: usize, message: &str);
    fn message(&self, message: &str);
    /// A row is finished (or kept from an earlier run with `--resume`).
    fn finished(&self, row: &MethodResult, kept: bool);
}

/// A validated comparison: everything the children need.
pub struct ComparePlan {
    /// The `peft` binary the children run.
    pub exe: PathBuf,
    pub model: PathBuf,
    /// config.json's `model_type`: picks family variants of the presets.
    pub model_type: String,
    pub out: PathBuf,
    pub methods: Vec<String>,
    pub presets: Presets,
    pub sets: Vec<Override>,
    pub budget: Budget,
    /// Steps per method (`None`: a minutes budget).
    pub steps: Option<usize>,
    /// Every method trains once per seed (the first also seeds the base row and the sweep).
    pub seeds: Vec<u64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub scheduler: ScheduleKind,
    pub warmup_steps: usize,
    /// Shuffle the training data every epoch (`false`: `--no-shuffle`, the file's order, e.g.
    /// one whose batches alternate the labels).
    pub shuffle: bool,
    pub device: String,
    pub eval_limit: Option<usize>,
    pub task_metric: String,
    pub max_new_tokens: Option<usize>,
    /// General text for the forgetting metric (`None`: not measured).
    pub forgetting_data: Option<PathBuf>,
    /// Data flags of every child (`--data`, `--format`, ...); never the test set.
    pub data_flags: Vec<OsString>,
    /// Flags that select the test set, for evaluation only (`--eval-data FILE`).
    pub eval_data_flags: Vec<OsString>,
    /// Rates tried per method (`None`: the presets' rates).
    pub lr_sweep: Option<usize>,
    /// Write the swept rates as a presets file here.
    pub save_preset: Option<PathBuf>,
    /// Keep the rows of `out/results.json` that finished.
    pub resume: bool,
}

impl ComparePlan {
    pub fn schedule_name(&self) -> &'static str {
        match self.scheduler {
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Constant => "constant",
            ScheduleKind::ConstantWithWarmup => "constant_with_warmup",
        }
    }

    /// The run folder of a method at a seed: `NAME`, or `NAME-seedS` with several seeds.
    pub fn run_name(&self, method: &str, seed: u64) -> String {
        if self.seeds.len() > 1 {
            format!("{method}-seed{seed}")
        } else {
            method.to_string()
        }
    }
}

/// The rows of an earlier comparison in `out` that succeeded.
fn finished_rows(plan: &ComparePlan) -> Vec<MethodResult> {
    if !plan.resume {
        return vec![];
    }
    std::fs::read_to_string(plan.out.join(RESULTS_JSON))
        .ok()
        .and_then(|t| serde_json::from_str::<Results>(&t).ok())
        .map(|r| r.methods.into_iter().filter(MethodResult::ok).collect())
        .unwrap_or_default()
}

fn kept(
    rows: &[MethodResult],
    method: &str,
    seed: Option<u64>,
    progress: &dyn Progress,
) -> Option<MethodResult> {
    let row = rows
        .iter()
        .find(|r| r.method == method && r.seed == seed)?
        .clone();
    progress.finished(&row, true);
    Some(row)
}

/// The base row (kept or evaluated).
fn base_row(
    plan: &ComparePlan,
    earlier: &[MethodResult],
    results: &mut Results,
    progress: &dyn Progress,
) {
    progress.start("base", None);
    if let Some(row) = kept(earlier, "base", None, progress) {
        results.methods.push(row);
        return;
    }
    let (row, share) = run_base(plan, progress);
    results.majority_share = share;
    progress.finished(&row, false);
    results.methods.push(row);
}

/// What every method's rows share.
struct Context<'a> {
    earlier: &'a [MethodResult],
    base_ce: Option<f64>,
    progress: &'a dyn Progress,
}

/// Every seed's row of one method (its sweep first, with `--lr-sweep`), each written as it
/// finishes; the swept rate when there was a sweep.
fn method_rows(
    plan: &ComparePlan,
    name: &str,
    cx: &Context,
    results: &mut Results,
) -> Result<Option<f64>, CompareError> {
    let progress = cx.progress;
    let (mut spec, notes, flags) = match resolve(plan, name) {
        Ok(r) => r,
        Err(e) => {
            for &seed in &plan.seeds {
                progress.start(name, plan.steps);
                let row = MethodResult::failed(name, Some(seed), e.to_string());
                progress.finished(&row, false);
                results.methods.push(row);
            }
            write_outputs(&plan.out, results)?;
            return Ok(None);
        }
    };
    let swept = cx
        .earlier
        .iter()
        .find(|r| r.method == name && !r.sweep.is_empty());
    let points = match (plan.lr_sweep, swept) {
        (None, _) => vec![],
        (Some(_), Some(r)) => r.sweep.clone(),
        (Some(_), None) => {
            progress.start(&format!("{name} (lr sweep)"), None);
            sweep(plan, &spec, &flags, progress)?
        }
    };
    let chosen = best(&points).map(|b| b.lr);
    spec.lr = chosen.unwrap_or(spec.lr);
    for &seed in &plan.seeds {
        progress.start(&plan.run_name(name, seed), plan.steps);
        let row = match kept(cx.earlier, name, Some(seed), progress) {
            Some(row) => row,
            None => {
                let run = MethodRun {
                    name,
                    seed,
                    run_name: plan.run_name(name, seed),
                    lr: spec.lr,
                    notes: notes.clone(),
                    adapter_config: spec.adapter_config.as_ref(),
                    flags: &flags,
                };
                let mut row = run_method(plan, &run, progress)?;
                row.sweep = points.clone();
                row.metrics.forgetting = row.metrics.general_ce.zip(cx.base_ce).map(|(a, b)| a - b);
                progress.finished(&row, false);
                row
            }
        };
        results.methods.push(row);
        results.task_metric = results
            .task_metric
            .clone()
            .or_else(|| results.methods.last()?.metrics.task_metric.clone());
        write_outputs(&plan.out, results)?;
    }
    Ok(chosen)
}

/// Runs the comparison, writing the result files in `plan.out` after every row. `results`
/// holds the header (command, machine, ...) and receives the rows.
pub fn run(
    plan: &ComparePlan,
    mut results: Results,
    progress: &dyn Progress,
) -> Result<Results, CompareError> {
    for sub in ["runs/sweep", "logs/sweep", "configs"] {
        let dir = plan.out.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| CompareError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
    }
    let earlier = finished_rows(plan);
    if let Some(previous) = std::fs::read_to_string(plan.out.join(RESULTS_JSON))
        .ok()
        .filter(|_| plan.resume)
        .and_then(|t| serde_json::from_str::<Results>(&t).ok())
    {
        results.majority_share = previous.majority_share;
    }
    base_row(plan, &earlier, &mut results, progress);
    results.task_metric = results.methods[0].metrics.task_metric.clone();
    let base_ce = results.methods[0].metrics.general_ce;
    write_outputs(&plan.out, &results)?;
    let mut chosen = Vec::new();
    for name in &plan.methods {
        let context = Context {
            earlier: &earlier,
            base_ce,
            progress,
        };
        if let Some(lr) = method_rows(plan, name, &context, &mut results)? {
            chosen.push((name.clone(), lr));
        }
    }
    if let Some(path) = &plan.save_preset {
        crate::io::write_atomic(path, preset_file(&plan.presets, &chosen).as_bytes())?;
    }
    Ok(results)
}
