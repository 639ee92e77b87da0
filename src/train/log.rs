//! Where a run's progress goes: a progress bar on a terminal, one plain line per logging step
//! everywhere else (`nohup`, `tee`, Slurm, CI), as HF Trainer prints its log dicts. A hidden bar
//! would swallow `println`ed eval lines, so off a terminal nothing goes through a bar.
//!
//! `PEFT_PROGRESS=plain` forces the plain lines on a terminal too; `PEFT_PROGRESS=bar` forces the
//! bar.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The numbers of one logging step: `loss` is the mean over the steps since the last log line
/// (HF Trainer's `tr_loss / steps`), `grad_norm` the last step's, `tokens_per_s` over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLine {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    /// The cross-entropy alone, where `loss` holds a method's extra term (AdaLoRA).
    pub ce: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

pub enum Console {
    Bar(ProgressBar),
    Lines {
        total: usize,
        started: Instant,
        /// The step this process started at (a resumed run's remaining time counts only its own).
        first_step: usize,
    },
}

/// True when progress should be a bar: stderr is a terminal, unless `PEFT_PROGRESS` says otherwise.
pub fn wants_bar() -> bool {
    match std::env::var("PEFT_PROGRESS").as_deref() {
        Ok("plain") => false,
        Ok("bar") => true,
        _ => std::io::stderr().is_terminal(),
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

impl Console {
    /// A bar of `total` steps at `start`, or plain lines, by [`wants_bar`].
    pub fn new(total: usize, start: usize, unit: &str) -> Self {
        if !wants_bar() {
            return Self::Lines {
                total,
                started: Instant::now(),
                first_step: start,
            };
        }
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start as u64);
        Self::Bar(bar)
    }

    /// `elapsed 1m02s | remaining 9m00s` from the steps done in this process.
    fn timing(total: usize, started: Instant, first_step: usize, step: usize) -> String {
        let elapsed = started.elapsed();
        let done = step.saturating_sub(first_step);
        let remaining = if done == 0 {
            "?".to_string()
        } else {
            let per_step = elapsed.as_secs_f64() / done as f64;
            duration(Duration::from_secs_f64(
                per_step * total.saturating_sub(step) as f64,
            ))
        };
        format!("elapsed {} | remaining {remaining}", duration(elapsed))
    }

    /// One logging step: the bar's message, or a plain line.
    pub fn step_line(&self, l: &StepLine, status: &str) {
        match self {
            Self::Bar(bar) => bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s{status}",
                l.loss, l.lr, l.tokens_per_s
            )),
            Self::Lines {
                total,
                started,
                first_step,
            } => eprintln!(
                "step {}/{total} | epoch {:.2} | loss {:.4} | lr {:.3e} | grad_norm {:.4} | {:.0} tok/s | {}{status}",
                l.step,
                l.epoch,
                l.loss,
                l.lr,
                l.grad_norm,
                l.tokens_per_s,
                Self::timing(*total, *started, *first_step, l.step)
            ),
        }
    }

    /// Progress of an eval pass inside training: the bar's message; plain lines announce it once.
    pub fn eval_progress(&self, done: usize, of: usize) {
        match self {
            Self::Bar(bar) => bar.set_message(format!("eval {done}/{of} batches")),
            Self::Lines { .. } if done == 1 => eprintln!("eval: {of} batch(es)"),
            Self::Lines { .. } => {}
        }
    }

    /// A pass over `total` items (eval batches): moves the bar; plain lines report about every
    /// tenth of the pass and its end, with elapsed and remaining time.
    pub fn progress(&self, done: usize, unit: &str) {
        match self {
            Self::Bar(bar) => bar.set_position(done as u64),
            Self::Lines {
                total,
                started,
                first_step,
            } => {
                let every = total.div_ceil(10).max(1);
                if done == *total || done % every == 0 {
                    eprintln!(
                        "{unit} {done}/{total} | {}",
                        Self::timing(*total, *started, *first_step, done)
                    );
                }
            }
        }
    }

    /// Moves the bar; plain lines print only at logging steps.
    pub fn set_position(&self, step: usize) {
        if let Self::Bar(bar) = self {
            bar.set_position(step as u64);
        }
    }

    /// A line that must not be lost (eval results, notes): above the bar, or on its own.
    pub fn println(&self, line: &str) {
        match self {
            Self::Bar(bar) => bar.println(line),
            Self::Lines { .. } => eprintln!("{line}"),
        }
    }

    /// Ends the bar, leaving it on screen with `message`; plain lines print `message` if any.
    pub fn finish(&self, message: &str) {
        match self {
            Self::Bar(bar) => bar.finish_with_message(message.to_string()),
            Self::Lines { .. } if !message.is_empty() => eprintln!("{message}"),
            Self::Lines { .. } => {}
        }
    }

    /// Removes the bar from the screen (an inner progress, such as an eval pass, that is done).
    pub fn clear(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(duration(Duration::from_secs(6)), "6s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn remaining_time_counts_only_this_process_steps() {
        let t = Console::timing(100, Instant::now(), 50, 50);
        assert!(t.ends_with("remaining ?"), "{t}");
    }
}
