//! Step metrics: `metrics.jsonl` (one object per logged step; eval entries carry
//! `"split": "eval"`), the console (a progress bar on a terminal, plain lines elsewhere: see
//! [`crate::train::log`]) and the HF Trainer `log_history` entries of `trainer_state.json`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::error::TrainError;
use crate::train::log::{Console, StepLine};

pub const METRICS_FILE: &str = "metrics.jsonl";

pub struct Metrics {
    file: File,
    pub console: Console,
    status: String,
}

/// A resumed run continues after step `step`: the lines the interrupted run wrote after it are
/// dropped (the resumed run writes them again), so every step appears once.
fn truncate_to_step(path: &Path, step: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let after = |line: &str| {
        serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("step").and_then(Value::as_u64))
            .is_some_and(|s| s as usize > step)
    };
    if !text.lines().any(after) {
        return Ok(());
    }
    let kept: String = text
        .lines()
        .filter(|l| !after(l))
        .map(|l| format!("{l}\n"))
        .collect();
    crate::io::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

impl Metrics {
    /// Opens `metrics.jsonl` in `out` (appending when resuming) and the console at `start`.
    pub fn open(
        out: &Path,
        total_steps: usize,
        start: usize,
        append: bool,
    ) -> Result<Self, TrainError> {
        let path = out.join(METRICS_FILE);
        if append {
            truncate_to_step(&path, start)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            file,
            console: Console::new(total_steps, start, "steps"),
            status: String::new(),
        })
    }

    /// Appends one JSON line; a write failure is reported, not fatal to training.
    pub fn log(&mut self, entry: &Value) {
        if let Err(e) = writeln!(self.file, "{entry}") {
            tracing::warn!("could not write {METRICS_FILE}: {e}");
        }
    }

    /// Logs a training step; returns its HF `log_history` entry (`loss`, `learning_rate`,
    /// `grad_norm`, `epoch`, `step`, as transformers' `Trainer._maybe_log_save_evaluate`).
    pub fn train_step(&mut self, l: &StepLine) -> Value {
        let mut entry = json!({"step": l.step, "epoch": l.epoch, "loss": l.loss, "lr": l.lr, "grad_norm": l.grad_norm, "tokens": l.tokens, "tokens_per_s": l.tokens_per_s});
        if let Some(ce) = l.ce {
            entry["ce"] = json!(ce);
        }
        self.log(&entry);
        self.console.step_line(l, &self.status);
        json!({"epoch": l.epoch, "grad_norm": l.grad_norm, "learning_rate": l.lr, "loss": l.loss, "step": l.step})
    }

    /// A method's own status shown after the loss (e.g. AdaLoRA's rank budget).
    pub fn set_status(&mut self, status: String) {
        self.status = format!(" | {status}");
    }

    /// Logs an eval result; returns its HF `log_history` entry (`eval_loss`, `eval_runtime`).
    pub fn eval(&mut self, step: usize, epoch: f64, e: &EvalLine) -> Value {
        let entry = json!({"step": step, "epoch": epoch, "split": "eval", "loss": e.loss, "perplexity": e.loss.exp(), "tokens": e.tokens});
        self.log(&entry);
        self.console.println(&format!(
            "step {step} | eval_loss {:.4} | perplexity {:.3} | {} tokens | {:.1}s",
            e.loss,
            e.loss.exp(),
            e.tokens,
            e.seconds
        ));
        json!({"epoch": epoch, "eval_loss": e.loss, "eval_perplexity": e.loss.exp(), "eval_runtime": e.seconds, "step": step})
    }
}

/// One eval pass: mean token loss, target tokens, seconds taken.
#[derive(Debug, Clone, Copy)]
pub struct EvalLine {
    pub loss: f64,
    pub tokens: usize,
    pub seconds: f64,
}
