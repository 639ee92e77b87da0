//! `peft compare`'s child processes: each method's `peft compare-train` and `peft compare-eval`
//! run as children of the same binary, so a failure is contained and memory is per method. While
//! a child runs we sample its resident memory every 100 ms (`VmRSS` for the mean and p99, `VmHWM`
//! for the peak, a high-water mark that misses nothing) and follow `metrics.jsonl` for the
//! progress. A minutes budget is kept by the child itself (`peft train --max-train-minutes`
//! counts step time only, so loading and checkpoints cost no method its steps, and a resumed run
//! trains only what is left). On Linux a child gets SIGKILL when the comparison dies
//! (`PR_SET_PDEATHSIG`), so a killed `peft compare` leaves no orphan training on; `--resume`
//! picks the run up again.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::run::Progress;
use super::CompareError;

const POLL: Duration = Duration::from_millis(100);

/// What to follow while a child runs.
pub struct Watch<'a> {
    pub progress: &'a dyn Progress,
    /// A `metrics.jsonl` to follow: progress shows its steps and last loss.
    pub metrics: Option<PathBuf>,
}

/// How a child ended, and its memory.
pub struct Finished {
    pub success: bool,
    pub seconds: f64,
    pub memory: Memory,
}

/// Resident memory of a child over its run, MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub peak: Option<f64>,
    pub mean: Option<f64>,
    pub p99: Option<f64>,
}

impl Memory {
    /// Mean and 99th percentile (nearest rank) of the samples; the peak is the larger of the
    /// high-water mark and the largest sample.
    pub fn of(samples: &[f64], high_water: Option<f64>) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let max = sorted.last().copied();
        let peak = match (high_water, max) {
            (Some(h), Some(m)) => Some(h.max(m)),
            (h, m) => h.or(m),
        };
        if sorted.is_empty() {
            return Self {
                peak,
                ..Self::default()
            };
        }
        let rank = ((0.99 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Self {
            peak,
            mean: Some(sorted.iter().sum::<f64>() / sorted.len() as f64),
            p99: Some(sorted[rank - 1]),
        }
    }
}

/// A `/proc/PID/status` field in MiB (`None` off Linux or once the process has exited).
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// Makes the child die with this process: the kernel sends it SIGKILL when the thread that
/// spawned it exits (prctl(2) PR_SET_PDEATHSIG). A parent that died between fork and prctl is
/// caught by comparing the parent pid.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs between fork and exec; prctl, getppid and _exit are async-signal-safe and
    // nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Runs `EXE ARGS` with stdout and stderr into files, following `watch` until it exits.
pub fn run(
    exe: &Path,
    args: &[OsString],
    logs: (&Path, &Path),
    watch: &Watch,
) -> Result<Finished, CompareError> {
    let (stdout, stderr) = logs;
    let open = |p: &Path| {
        File::create(p).map_err(|e| CompareError::Io {
            what: format!("creating {}", p.display()),
            source: e,
        })
    };
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(open(stdout)?)
        .stderr(open(stderr)?);
    die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|e| CompareError::Io {
        what: format!("starting {}", exe.display()),
        source: e,
    })?;
    let started = Instant::now();
    let (mut samples, mut high_water) = (Vec::new(), None::<f64>);
    let status = loop {
        let exited = child.try_wait().map_err(|e| CompareError::Io {
            what: "waiting for a child process".into(),
            source: e,
        })?;
        if let Some(status) = exited {
            break status;
        }
        if let Some(rss) = proc_status_mib(child.id(), "VmRSS:") {
            samples.push(rss);
        }
        if let Some(hwm) = proc_status_mib(child.id(), "VmHWM:") {
            high_water = Some(high_water.map_or(hwm, |p| p.max(hwm)));
        }
        if let Some(metrics) = &watch.metrics {
            if metrics.exists() {
                follow(metrics, watch.progress);
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
        memory: Memory::of(&samples, reported.or(high_water)),
    })
}

/// Steps and last loss of a `metrics.jsonl` so far, onto the progress.
fn follow(metrics: &Path, progress: &dyn Progress) {
    let Ok(text) = std::fs::read_to_string(metrics) else {
        return;
    };
    if let Some(last) = train_entries(&text).last() {
        progress.step(last.step, &format!("loss {:.4}", last.loss));
    }
}

/// One training line of a `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainEntry {
    pub step: usize,
    /// The logged loss (AdaLoRA's includes its orthogonality penalty).
    pub loss: f64,
    /// Cross-entropy only: `ce` where the line has one (AdaLoRA), else the loss.
    pub ce: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

/// Every training line of a `metrics.jsonl`. A resumed run appends to the file; a step seen
/// twice keeps its last line.
pub fn train_entries(text: &str) -> Vec<TrainEntry> {
    let mut entries: Vec<TrainEntry> = Vec::new();
    let lines = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("split").is_none());
    for v in lines {
        let entry = (|| {
            let loss = v.get("loss")?.as_f64()?;
            Some(TrainEntry {
                step: v.get("step")?.as_u64()? as usize,
                loss,
                ce: v.get("ce").and_then(Value::as_f64).unwrap_or(loss),
                tokens: v.get("tokens")?.as_u64()? as usize,
                tokens_per_s: v.get("tokens_per_s")?.as_f64()?,
            })
        })();
        if let Some(e) = entry {
            entries.retain(|x| x.step < e.step);
            entries.push(e);
        }
    }
    entries
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

/// The line prefix `peft compare-train` and `peft compare-eval` report their peak RSS with.
pub const PEAK_RSS: &str = "peak_rss_mib: ";

/// The peak RSS a child reports about itself.
pub fn reported_peak_rss(log: &str) -> Option<f64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(PEAK_RSS))
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
    fn eval_lines_are_not_training_steps_and_a_resumed_step_keeps_its_last_line() {
        let text = "{\"step\":1,\"loss\":2.0,\"lr\":0.1,\"grad_norm\":1.0,\"tokens\":10,\"tokens_per_s\":5.0}\n{\"step\":1,\"split\":\"eval\",\"loss\":3.0,\"tokens\":4}\n{\"step\":2,\"loss\":1.5,\"ce\":1.25,\"tokens\":10,\"tokens_per_s\":5.0}\n{\"step\":2,\"loss\":1.0,\"tokens\":10,\"tokens_per_s\":5.0}\n";
        let e = train_entries(text);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].step, e[0].loss, e[0].ce), (1, 2.0, 2.0));
        assert_eq!((e[1].step, e[1].loss), (2, 1.0));
    }

    #[test]
    fn memory_statistics_are_mean_nearest_rank_p99_and_the_larger_peak() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let m = Memory::of(&samples, Some(150.0));
        assert_eq!(m.peak, Some(200.0));
        assert_eq!(m.mean, Some(100.5));
        assert_eq!(m.p99, Some(198.0));
        assert_eq!(Memory::of(&[], Some(7.0)).peak, Some(7.0));
        assert_eq!(Memory::of(&[], None), Memory::default());
    }
}
