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
use crate::train::checkpoint::{self, TrainerState};
use crate::train::eval::evaluate;
use crate::train::metrics::Metrics;
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
    pub steps: usize,
    pub interrupted: bool,
    pub losses: Vec<f64>,
    pub eval_loss: Option<f64>,
    pub tokens: usize,
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
            },
            AdamW::new(c.adamw),
        ),
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
    let mut losses = Vec::new();
    let mut tokens_total = 0;
    let mut model = run.model;
    let mut saved: Vec<(usize, PathBuf)> = Vec::new();
    while state.global_step < total {
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
            metrics.bar.abandon_with_message(format!(
                "interrupted: checkpoint saved to {}",
                dir.display()
            ));
            return Ok(RunSummary {
                steps: state.global_step,
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
        state.global_step += 1;
        tokens_total += stats.tokens;
        losses.push(stats.loss);
        let step = state.global_step;
        if let Some(status) = run.hook.status() {
            metrics.set_status(status);
        }
        if step % c.logging_steps.max(1) == 0 || step == total {
            let entry = metrics.train_step(
                step,
                stats.loss,
                lr,
                stats.grad_norm,
                stats.tokens,
                stats.tokens as f64 / t.elapsed().as_secs_f64(),
            );
            state.log_history.push(entry);
        }
        metrics.bar.set_position(step as u64);
        if c.eval_steps.is_some_and(|n| n > 0 && step % n == 0) && !run.eval.is_empty() {
            let e = evaluate(&model.valid(), &run.eval);
            state.log_history.push(metrics.eval(step, e.loss, e.tokens));
        }
        if c.save_steps.is_some_and(|n| n > 0 && step % n == 0) && step < total {
            let dir = checkpoint::checkpoint_dir(&run.out, step);
            match checkpoint::save(
                &dir,
                &mut model,
                &run.adapter_config,
                &optim,
                &state,
                &run.hook,
            ) {
                Ok(()) => saved.push((step, dir)),
                // Weights that became NaN/inf are not a checkpoint worth keeping; the next
                // step's loss is non-finite too and stops the run, naming the last good one.
                Err(e) if non_finite_weights(&e) => {
                    tracing::warn!("step {step}: checkpoint not saved: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let eval_loss = if run.eval.is_empty() {
        None
    } else {
        let e = evaluate(&model.valid(), &run.eval);
        state
            .log_history
            .push(metrics.eval(state.global_step, e.loss, e.tokens));
        Some(e.loss)
    };
    metrics.bar.finish_with_message("done");
    save_adapter(&mut model, &run.adapter_config, &run.out)?;
    let json =
        serde_json::to_string_pretty(&state).map_err(|e| TrainError::Option(e.to_string()))?;
    crate::io::write_atomic(&run.out.join(checkpoint::STATE_FILE), json.as_bytes())?;
    Ok(RunSummary {
        steps: state.global_step,
        interrupted: false,
        losses,
        eval_loss,
        tokens: tokens_total,
        seconds: started.elapsed().as_secs_f64(),
    })
}
