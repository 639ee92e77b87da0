//! `peft compare`'s child processes: each method's `peft train` and `peft compare-eval` run as
//! children of the same binary, so a failure is contained and peak memory is per method. While a
//! child runs we sample its peak RSS (`VmHWM` in /proc, a high-water mark, so sampling misses
//! only its last ~100 ms), follow `metrics.jsonl` for the progress bar, and for a minutes budget
//! send SIGINT at the deadline (`peft train` then saves a checkpoint and stops).

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use serde_json::Value;

const POLL: Duration = Duration::from_millis(100);
/// How long a child may take to save its checkpoint after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(300);

/// What to follow while a child runs.
pub struct Watch<'a> {
    pub bar: &'a ProgressBar,
    /// A `metrics.jsonl` to follow: the bar shows its steps and last loss.
    pub metrics: Option<PathBuf>,
    /// Send SIGINT this long after `metrics` appears (the first step starting).
    pub deadline: Option<Duration>,
}

pub struct Finished {
    pub success: bool,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// We sent SIGINT (minutes budget reached).
    pub interrupted: bool,
}

/// Peak resident memory of a live process, MiB (`None` off Linux or once it has exited).
fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs `peft ARGS` with stdout and stderr into files, following `watch` until it exits.
pub fn run(
    args: &[OsString],
    stdout: &Path,
    stderr: &Path,
    watch: &Watch,
) -> anyhow::Result<Finished> {
    let exe = std::env::current_exe().context("locating the peft binary")?;
    let open = |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(open(stdout)?)
        .stderr(open(stderr)?)
        .spawn()
        .context("starting a peft child process")?;
    let started = Instant::now();
    let (mut peak, mut first_step, mut interrupted) = (None::<f64>, None::<Instant>, false);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(rss) = vm_hwm_mib(child.id()) {
            peak = Some(peak.map_or(rss, |p| p.max(rss)));
        }
        if let Some(metrics) = &watch.metrics {
            if metrics.exists() {
                let t0 = *first_step.get_or_insert_with(Instant::now);
                follow(metrics, watch.bar);
                if watch.deadline.is_some_and(|d| t0.elapsed() >= d) && !interrupted {
                    interrupted = true;
                    let _ = Command::new("kill")
                        .args(["-INT", &child.id().to_string()])
                        .status();
                }
                // A child that ignores SIGINT (or a system without `kill`) must not run forever.
                if watch
                    .deadline
                    .is_some_and(|d| t0.elapsed() >= d + STOP_GRACE)
                {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(POLL);
    };
    let seconds = started.elapsed().as_secs_f64();
    // The child's own VmHWM read at its exit is exact; sampling is the fallback.
    let reported = std::fs::read_to_string(stderr)
        .ok()
        .and_then(|log| reported_peak_rss(&log));
    Ok(Finished {
        success: status.success(),
        seconds,
        peak_rss_mib: reported.or(peak),
        interrupted,
    })
}

/// Steps and last loss of a `metrics.jsonl` so far, onto the bar.
fn follow(metrics: &Path, bar: &ProgressBar) {
    let Ok(text) = std::fs::read_to_string(metrics) else {
        return;
    };
    if let Some(last) = train_entries(&text).last() {
        bar.set_position(last.0 as u64);
        bar.set_message(format!("loss {:.4}", last.1));
    }
}

/// `(step, loss, tokens, tokens_per_s)` of every training line of a `metrics.jsonl`.
pub fn train_entries(text: &str) -> Vec<(usize, f64, usize, f64)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("split").is_none())
        .filter_map(|v| {
            Some((
                v.get("step")?.as_u64()? as usize,
                v.get("loss")?.as_f64()?,
                v.get("tokens")?.as_u64()? as usize,
                v.get("tokens_per_s")?.as_f64()?,
            ))
        })
        .collect()
}

/// `trainable params: N || all params: M || ...` (PEFT's `print_trainable_parameters`, which
/// `peft train` prints) from a child's log.
pub fn trainable_params(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("trainable params:"))?;
    let mut fields = line.split("||").map(|f| {
        f.split(':')
            .nth(1)
            .and_then(|n| n.trim().parse::<u64>().ok())
    });
    Some((fields.next()??, fields.next()??))
}

/// The peak RSS `peft compare-train` reports about itself.
pub fn reported_peak_rss(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(super::compare_eval::PEAK_RSS))
        .and_then(|v| v.trim().parse().ok())
}

/// The child's own error message (`error: ...`), else the tail of its log.
pub fn error_message(log: &str, log_path: &Path) -> String {
    if let Some(e) = log.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        return e.trim().to_string();
    }
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "failed ({}; see {})",
        if tail.is_empty() {
            "no output".to_string()
        } else {
            tail.join(" / ")
        },
        log_path.display()
    )
}

/// The latest `checkpoint-N` folder of a run (where an interrupted run saved its adapter).
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    std::fs::read_dir(run)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")?
                .parse::<usize>()
                .ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainable_line_is_read_as_peft_prints_it() {
        let log =
            "data: ...\ntrainable params: 2442240 || all params: 136957440 || trainable%: 1.7832\n";
        assert_eq!(trainable_params(log), Some((2_442_240, 136_957_440)));
        assert_eq!(trainable_params("nothing"), None);
    }

    #[test]
    fn errors_come_from_the_error_line_or_the_log_tail() {
        let p = Path::new("x.log");
        assert_eq!(
            error_message("a\nerror: --method prefix is not available\n", p),
            "--method prefix is not available"
        );
        assert!(error_message("thread panicked\n", p).contains("thread panicked"));
    }

    #[test]
    fn eval_lines_are_not_training_steps() {
        let text = "{\"step\":1,\"loss\":2.0,\"lr\":0.1,\"grad_norm\":1.0,\"tokens\":10,\"tokens_per_s\":5.0}\n{\"step\":1,\"split\":\"eval\",\"loss\":3.0,\"tokens\":4}\n";
        assert_eq!(train_entries(text), vec![(1, 2.0, 10, 5.0)]);
    }
}
