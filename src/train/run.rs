//! The training loop, explicit and readable (torchtune style): for each optimizer step, take
//! `grad_accum` micro-batches in data order, run `train_step`, log, evaluate, checkpoint.
//! Data order is a pure function of (seed, epoch), so a resumed run skips the micro-batches
//! already consumed and continues exactly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;

use crate::error::TrainError;
use crate::models::CausalLm;
use crate::peft::format::save_adapter;
use crate::peft::AdapterConfig;
use crate::train::checkpoint::{self, StateSettings, TrainerState};
use crate::train::eval::evaluate_with;
use crate::train::log::StepLine;
use crate::train::metrics::{EvalLine, Metrics};
use crate::train::{train_step_with, AdamW, AdamWConfig, Batch, Schedule, ScheduleKind, StepHook};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    pub lr: f64,
    pub adamw: AdamWConfig,
    pub scheduler: ScheduleKind,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub grad_accum: usize,
    pub max_grad_norm: Option<f64>,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub logging_steps: usize,
    pub save_steps: Option<usize>,
    pub eval_steps: Option<usize>,
    pub seed: u64,
    /// Keep at most this many `checkpoint-N` folders (HF's `save_total_limit`); None keeps all.
    #[serde(default)]
    pub save_total_limit: Option<usize>,
    /// Micro-batch size, recorded in `trainer_state.json` (`train_batch_size`).
    #[serde(default)]
    pub train_batch_size: Option<usize>,
    /// Stop after the step at which the run's step time ([`TrainerState::train_seconds`])
    /// reaches this, as well as at `max_steps` or the last epoch; None: no time limit.
    #[serde(default)]
    pub max_train_seconds: Option<f64>,
}

/// Whether the run has used its time budget (`max_train_seconds`).
fn out_of_time(config: &RunConfig, state: &TrainerState) -> bool {
    config
        .max_train_seconds
        .is_some_and(|limit| state.train_seconds >= limit)
}

/// Everything one run needs.
pub struct Run<'a> {
    pub model: CausalLm,
    pub adapter_config: AdapterConfig,
    pub out: PathBuf,
    pub config: RunConfig,
    /// Micro-batches of epoch `e`, in training order.
    pub train: &'a dyn Fn(usize) -> Vec<Batch>,
    pub eval: Vec<Batch>,
    pub device: Device,
    /// A checkpoint to continue from: its state and optimizer.
    pub resume: Option<(TrainerState, AdamW)>,
    /// Method-specific work around each step (AdaLoRA's rank allocation), restored already when
    /// resuming.
    pub hook: StepHook,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The step the run is at (counting the steps of a run resumed from).
    pub steps: usize,
    /// Steps run by this process.
    pub steps_run: usize,
    pub interrupted: bool,
    pub losses: Vec<f64>,
    pub eval_loss: Option<f64>,
    pub tokens: usize,
    /// Seconds of training in this process (the final eval not counted).
    pub seconds: f64,
}

/// Steps a run will take: `max_steps`, or whole epochs of accumulated batches.
pub fn total_steps(config: &RunConfig, batches_per_epoch: usize) -> usize {
    config
        .max_steps
        .unwrap_or_else(|| config.epochs * batches_per_epoch.div_ceil(config.grad_accum.max(1)))
}

/// Takes the next `n` micro-batches, moving to the next epoch when one runs out.
fn next_micro_batches(
    train: &dyn Fn(usize) -> Vec<Batch>,
    state: &mut TrainerState,
    epoch_batches: &mut Vec<Batch>,
    n: usize,
) -> Vec<Batch> {
    // Capacity from what exists, not from the request (`n` is a user's --grad-accum).
    let mut out = Vec::with_capacity(n.min(epoch_batches.len()));
    while out.len() < n {
        if state.position >= epoch_batches.len() {
            state.epoch += 1;
            state.position = 0;
            *epoch_batches = train(state.epoch);
            if epoch_batches.is_empty() {
                break;
            }
        }
        out.push(epoch_batches[state.position].clone());
        state.position += 1;
    }
    out
}

/// Whether a save failed because the weights are NaN or infinite (the writer refuses them).
fn non_finite_weights(e: &TrainError) -> bool {
    use crate::error::{AdapterError, WriteError};
    matches!(
        e,
        TrainError::Write(WriteError::NonFinite { .. })
            | TrainError::Adapter(AdapterError::Write(WriteError::NonFinite { .. }))
    )
}

/// Losses, tokens and time since the last log line: HF Trainer logs the window's mean loss.
#[derive(Debug, Default)]
struct Window {
    loss_sum: f64,
    extra_sum: f64,
    steps: usize,
    tokens: usize,
    seconds: f64,
}

impl Window {
    fn add(&mut self, loss: f64, extra: f64, tokens: usize, seconds: f64) {
        self.loss_sum += loss;
        self.extra_sum += extra;
        self.steps += 1;
        self.tokens += tokens;
        self.seconds += seconds;
    }

    /// `(mean loss, mean cross-entropy if the loss holds an extra term, tokens, tokens/s)` of
    /// the window, which starts again empty.
    fn take(&mut self) -> (f64, Option<f64>, usize, f64) {
        let w = std::mem::take(self);
        let steps = w.steps.max(1) as f64;
        (
            w.loss_sum / steps,
            (w.extra_sum != 0.0).then(|| (w.loss_sum - w.extra_sum) / steps),
            w.tokens,
            w.tokens as f64 / w.seconds.max(1e-9),
        )
    }
}

/// HF's fractional epoch: whole epochs done plus the share of this one consumed.
fn epoch_progress(state: &TrainerState, epoch_len: usize) -> f64 {
    state.epoch as f64 + state.position as f64 / epoch_len.max(1) as f64
}

/// Keeps the newest `limit` `checkpoint-N` folders of `out`, deleting older ones, as HF's
/// `save_total_limit` (`Trainer._rotate_checkpoints`, oldest first by step).
fn rotate_checkpoints(out: &std::path::Path, limit: usize, saved: &mut Vec<(usize, PathBuf)>) {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
                    Some((step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let excess = found.len().saturating_sub(limit);
    for (_, dir) in found.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("could not remove {}: {e}", dir.display());
        }
        saved.retain(|(_, d)| *d != dir);
    }
}

/// Runs training to the end (or to Ctrl-C, which saves a checkpoint first).
pub fn run(mut run: Run) -> Result<RunSummary, TrainError> {
    let first = (run.train)(0);
    if first.is_empty() {
        return Err(TrainError::NoData(
            "the training set produced no batches".into(),
        ));
    }
    let c = run.config.clone();
    let total = total_steps(&c, first.len());
    let warmup = if c.warmup_steps > 0 {
        c.warmup_steps
    } else {
        (c.warmup_ratio * total as f64).ceil() as usize
    };
    let schedule = Schedule {
        kind: c.scheduler,
        base_lr: c.lr,
        warmup_steps: warmup,
        total_steps: total,
    };
    let (mut state, mut optim) = match run.resume.take() {
        Some((s, o)) => (s, o),
        None => (
            TrainerState {
                global_step: 0,
                max_steps: total,
                epoch: 0,
                position: 0,
                seed: c.seed,
                log_history: Vec::new(),
                epoch_progress: 0.0,
                tokens_seen: 0,
                train_seconds: 0.0,
                settings: Default::default(),
            },
            AdamW::new(c.adamw),
        ),
    };
    state.settings = StateSettings {
        logging_steps: c.logging_steps.max(1),
        eval_steps: c.eval_steps,
        save_steps: c.save_steps,
        train_batch_size: c.train_batch_size,
        num_train_epochs: c.epochs,
    };
    let mut epoch_batches = if state.epoch == 0 {
        first
    } else {
        (run.train)(state.epoch)
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted));
    let mut metrics = Metrics::open(&run.out, total, state.global_step, state.global_step > 0)?;
    let started = Instant::now();
    let first_step = state.global_step;
    let mut losses = Vec::new();
    let mut tokens_total = 0;
    let mut model = run.model;
    let mut saved: Vec<(usize, PathBuf)> = Vec::new();
    let mut window = Window::default();
    let mut last_eval: Option<(usize, f64)> = None;
    while state.global_step < total && !out_of_time(&c, &state) {
        if interrupted.load(Ordering::SeqCst) {
            let dir = checkpoint::checkpoint_dir(&run.out, state.global_step);
            checkpoint::save(
                &dir,
                &mut model,
                &run.adapter_config,
                &optim,
                &state,
                &run.hook,
            )?;
            metrics.console.finish(&format!(
                "interrupted: checkpoint saved to {}",
                dir.display()
            ));
            return Ok(RunSummary {
                steps: state.global_step,
                steps_run: state.global_step - first_step,
                interrupted: true,
                losses,
                eval_loss: None,
                tokens: tokens_total,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let micro = next_micro_batches(
            run.train,
            &mut state,
            &mut epoch_batches,
            c.grad_accum.max(1),
        );
        // Dropout masks depend only on (seed, step): a resumed run draws the same ones.
        run.device
            .seed(c.seed.wrapping_add(state.global_step as u64));
        let lr = schedule.lr(state.global_step);
        let t = Instant::now();
        let (next, stats) = train_step_with(
            model,
            &mut optim,
            &micro,
            lr,
            c.max_grad_norm,
            &mut run.hook,
        );
        if !stats.loss.is_finite() {
            // The checkpoint of the previous step holds the weights that produced this loss: it is
            // not a good one. Drop it and point at the one before.
            if saved.last().is_some_and(|(s, _)| *s == state.global_step) {
                if let Some((_, bad)) = saved.pop() {
                    let _ = std::fs::remove_dir_all(bad);
                }
            }
            let last_checkpoint = saved.pop().map(|(_, dir)| dir);
            return Err(TrainError::NonFiniteLoss {
                step: state.global_step + 1,
                loss: stats.loss,
                last_checkpoint,
            });
        }
        model = next;
        let step_seconds = t.elapsed().as_secs_f64();
        state.global_step += 1;
        state.train_seconds += step_seconds;
        state.epoch_progress = epoch_progress(&state, epoch_batches.len());
        state.tokens_seen += stats.tokens;
        tokens_total += stats.tokens;
        losses.push(stats.loss);
        window.add(stats.loss, stats.extra_loss, stats.tokens, step_seconds);
        let step = state.global_step;
        // The step that used up the time budget is the last one: logged and saved as the end.
        let last = step == total || out_of_time(&c, &state);
        if let Some(status) = run.hook.status() {
            metrics.set_status(status);
        }
        if step % c.logging_steps.max(1) == 0 || last {
            let (loss, ce, tokens, tokens_per_s) = window.take();
            let entry = metrics.train_step(&StepLine {
                step,
                epoch: state.epoch_progress,
                loss,
                ce,
                lr,
                grad_norm: stats.grad_norm,
                tokens,
                tokens_per_s,
            });
            state.log_history.push(entry);
        }
        metrics.console.set_position(step);
        if c.eval_steps.is_some_and(|n| n > 0 && step % n == 0) && !run.eval.is_empty() {
            let loss = eval_pass(&model, &run.eval, &mut metrics, &mut state);
            last_eval = Some((step, loss));
        }
        if c.save_steps.is_some_and(|n| n > 0 && step % n == 0) && !last {
            let dir = checkpoint::checkpoint_dir(&run.out, step);
            match checkpoint::save(
                &dir,
                &mut model,
                &run.adapter_config,
                &optim,
                &state,
                &run.hook,
            ) {
                Ok(()) => {
                    saved.push((step, dir));
                    if let Some(limit) = c.save_total_limit {
                        rotate_checkpoints(&run.out, limit, &mut saved);
                    }
                }
                // Weights that became NaN/inf are not a checkpoint worth keeping; the next
                // step's loss is non-finite too and stops the run, naming the last good one.
                Err(e) if non_finite_weights(&e) => {
                    tracing::warn!("step {step}: checkpoint not saved: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
    // Training time ends here: the final eval is not counted in the tokens/s.
    let seconds = started.elapsed().as_secs_f64();
    let eval_loss = match last_eval {
        // An eval at the last step (max_steps a multiple of eval_steps) is the final one.
        Some((step, loss)) if step == state.global_step => Some(loss),
        _ if run.eval.is_empty() => None,
        _ => Some(eval_pass(&model, &run.eval, &mut metrics, &mut state)),
    };
    metrics.console.finish(&match c.max_train_seconds {
        Some(limit) if state.global_step < total => {
            format!("done: --max-train-minutes {} reached", limit / 60.0)
        }
        _ => "done".to_string(),
    });
    save_adapter(&mut model, &run.adapter_config, &run.out)?;
    checkpoint::write_states(&run.out, &state)?;
    Ok(RunSummary {
        steps: state.global_step,
        steps_run: state.global_step - first_step,
        interrupted: false,
        losses,
        eval_loss,
        tokens: tokens_total,
        seconds,
    })
}

/// One pass over the eval set with its progress on the console; logs it and returns the loss.
fn eval_pass(
    model: &CausalLm,
    eval: &[Batch],
    metrics: &mut Metrics,
    state: &mut TrainerState,
) -> f64 {
    let t = Instant::now();
    let n = eval.len();
    let console = &metrics.console;
    let e = evaluate_with(&model.valid(), eval, &mut |k| console.eval_progress(k, n));
    let line = EvalLine {
        loss: e.loss,
        tokens: e.tokens,
        seconds: t.elapsed().as_secs_f64(),
    };
    let entry = metrics.eval(state.global_step, state.epoch_progress, &line);
    state.log_history.push(entry);
    e.loss
}
