//! `--lr-sweep N`: the learning rate of each method chosen on a short run against a validation
//! split carved from the training data (the test set is never looked at). Prompt-style methods
//! move by orders of magnitude with the rate (PEFT's method_comparison table: prompt tuning
//! scores 0.057 at its default and 0.343 with a better rate and init), so one shared preset
//! rate is not a fair comparison.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::method::{evaluate, train, EvalJob, EvalOn, TrainJob};
use super::plan::{Budget, MethodSpec, Presets};
use super::run::{ComparePlan, Progress};
use super::CompareError;

/// The fraction of the training data a sweep validates on.
pub const VALIDATION_SPLIT: f64 = 0.2;
/// A sweep run gets this fraction of the budget.
pub const SWEEP_BUDGET_FRACTION: f64 = 0.25;

/// One rate tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub lr: f64,
    pub val_score: Option<f64>,
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `n` rates on a half-decade grid that always holds the preset's `lr` (n = 3: lr/√10, lr,
/// lr·√10; n = 2: lr/√10, lr), so the sweep can only match or beat the preset on validation.
pub fn rates(lr: f64, n: usize) -> Vec<f64> {
    let mid = (n / 2) as f64;
    (0..n)
        .map(|i| lr * 10f64.powf((i as f64 - mid) / 2.0))
        .collect()
}

/// The best point: highest validation task score, then lowest validation loss; `None` when
/// every point failed.
pub fn best(points: &[SweepPoint]) -> Option<&SweepPoint> {
    let key = |p: &SweepPoint| {
        (
            p.val_score.unwrap_or(f64::NEG_INFINITY),
            -p.val_loss.unwrap_or(f64::INFINITY),
        )
    };
    points
        .iter()
        .filter(|p| p.error.is_none() && p.val_loss.is_some_and(f64::is_finite))
        .max_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        })
}

/// The shortened budget of a sweep run: a quarter of the steps (at least one), or of the minutes.
fn short_budget(plan: &ComparePlan) -> (Option<usize>, Option<f64>) {
    match plan.budget {
        Budget::Minutes(m) => (None, Some(m * SWEEP_BUDGET_FRACTION)),
        _ => (
            plan.steps
                .map(|s| ((s as f64 * SWEEP_BUDGET_FRACTION).round() as usize).max(1)),
            None,
        ),
    }
}

/// Tries `plan.lr_sweep` rates around the method's preset rate.
pub fn sweep(
    plan: &ComparePlan,
    spec: &MethodSpec,
    flags: &[std::ffi::OsString],
    progress: &dyn Progress,
) -> Result<Vec<SweepPoint>, CompareError> {
    let n = plan.lr_sweep.unwrap_or(1);
    let (steps, minutes) = short_budget(plan);
    let mut points = Vec::new();
    for (i, lr) in rates(spec.lr, n).into_iter().enumerate() {
        let name = format!("sweep/{}-lr{i}", spec.name);
        progress.message(&format!("lr sweep {}/{n}: {lr:.1e}", i + 1));
        let job = TrainJob {
            run_dir: plan.out.join("runs").join(&name),
            log_name: name.clone(),
            lr,
            seed: plan.seeds[0],
            adapter: flags,
            steps,
            minutes,
            extra: vec!["--eval-split".into(), VALIDATION_SPLIT.to_string().into()],
        };
        let trained = train(plan, &job, progress)?;
        let point = match &trained.adapter {
            None => SweepPoint {
                lr,
                val_score: None,
                val_loss: None,
                error: Some(super::child::error_message(&trained.log, &trained.log_path)),
            },
            Some(dir) => {
                let job = EvalJob {
                    name: &name,
                    adapter: Some(dir),
                    on: EvalOn::Validation(VALIDATION_SPLIT),
                    seed: plan.seeds[0],
                };
                match evaluate(plan, &job, progress) {
                    Ok((v, _)) => SweepPoint {
                        lr,
                        val_score: v["task_score"].as_f64(),
                        val_loss: v["eval_loss"].as_f64(),
                        error: None,
                    },
                    Err(e) => SweepPoint {
                        lr,
                        val_score: None,
                        val_loss: None,
                        error: Some(e),
                    },
                }
            }
        };
        points.push(point);
    }
    Ok(points)
}

/// A presets file with the chosen rates: every method of `presets` with its preset path made
/// absolute (the file may be written anywhere) and, where `chosen` has one, the swept rate.
pub fn preset_file(presets: &Presets, chosen: &[(String, f64)]) -> String {
    let dir = presets.path.parent().unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut text = String::from(
        "# Written by `peft compare --lr-sweep ... --save-preset`: the rates chosen on the\n# validation split; read it back with `peft compare --presets FILE`.\n",
    );
    for (name, p) in &presets.methods {
        let lr = chosen.iter().find(|(m, _)| m == name).map_or(p.lr, |c| c.1);
        let mut entry = toml::map::Map::new();
        if let Some(file) = &p.preset {
            entry.insert(
                "preset".into(),
                toml::Value::String(dir.join(file).to_string_lossy().into_owned()),
            );
        }
        entry.insert("lr".into(), toml::Value::Float(lr));
        let why = if chosen.iter().any(|(m, _)| m == name) {
            Some(format!(
                "lr sweep (was {:e}): best on the validation split",
                p.lr
            ))
        } else {
            p.why.clone()
        };
        if let Some(why) = why {
            entry.insert("why".into(), toml::Value::String(why));
        }
        let mut table = toml::map::Map::new();
        table.insert(name.clone(), toml::Value::Table(entry));
        text += "\n";
        text += &toml::to_string(&toml::Value::Table(table)).unwrap_or_default();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_a_half_decade_grid_around_the_preset() {
        let r = rates(1e-3, 3);
        assert!((r[0] - 1e-3 / 10f64.sqrt()).abs() < 1e-12);
        assert_eq!(r[1], 1e-3);
        assert!((r[2] - 1e-3 * 10f64.sqrt()).abs() < 1e-12);
        assert_eq!(rates(2e-4, 1), vec![2e-4]);
        assert_eq!(rates(2e-4, 2)[1], 2e-4);
    }

    #[test]
    fn the_best_rate_wins_on_score_then_loss_and_failures_never_win() {
        let p = |lr, s, l, e: bool| SweepPoint {
            lr,
            val_score: s,
            val_loss: l,
            error: e.then(|| "boom".into()),
        };
        let points = vec![
            p(1.0, Some(0.5), Some(2.0), false),
            p(2.0, Some(0.5), Some(1.0), false),
            p(3.0, Some(0.9), Some(0.1), true),
            p(4.0, Some(0.25), Some(0.5), false),
        ];
        assert_eq!(best(&points).map(|p| p.lr), Some(2.0));
        assert_eq!(best(&points[2..3]), None);
    }
}
