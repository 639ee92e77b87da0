//! Step metrics: `metrics.jsonl` (one object per logged step; eval entries carry
//! `"split": "eval"`) and the progress bar (loss, lr, tokens/s, ETA).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::error::TrainError;

pub const METRICS_FILE: &str = "metrics.jsonl";

pub struct Metrics {
    file: File,
    pub bar: ProgressBar,
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
    /// Opens `metrics.jsonl` in `out` (appending when resuming) and a progress bar at `start`.
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
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start as u64);
        Ok(Self {
            file,
            bar,
            status: String::new(),
        })
    }

    /// Appends one JSON line; a write failure is reported, not fatal to training.
    pub fn log(&mut self, entry: &Value) {
        if let Err(e) = writeln!(self.file, "{entry}") {
            tracing::warn!("could not write {METRICS_FILE}: {e}");
        }
    }

    pub fn train_step(
        &mut self,
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: usize,
        tokens_per_s: f64,
    ) -> Value {
        let entry = json!({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "tokens_per_s": tokens_per_s});
        self.log(&entry);
        self.bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s{}",
            self.status
        ));
        entry
    }

    /// A method's own status shown after the loss (e.g. AdaLoRA's rank budget).
    pub fn set_status(&mut self, status: String) {
        self.status = format!(" | {status}");
    }

    pub fn eval(&mut self, step: usize, loss: f64, tokens: usize) -> Value {
        let entry = json!({"step": step, "split": "eval", "loss": loss, "perplexity": loss.exp(), "tokens": tokens});
        self.log(&entry);
        self.bar.println(format!(
            "step {step}: eval loss {loss:.4} (perplexity {:.2})",
            loss.exp()
        ));
        entry
    }
}
