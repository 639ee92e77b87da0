//! The files of a comparison, each written atomically: `results.json`, `results.md`,
//! `loss_curves.svg` (training cross-entropy of every method), and the task metric (or eval loss
//! for text data) against trainable parameters (`metric_vs_params.svg`) and against training
//! peak memory (`metric_vs_memory.svg`), with error bars and Pareto fronts.

use std::path::Path;

use crate::error::WriteError;
use crate::io::write_atomic;

use super::results::{groups, markdown, Group, Results};
use super::svg::{line_chart, pareto_chart, ParetoChart, Point, Series};

pub const RESULTS_JSON: &str = "results.json";
pub const RESULTS_MD: &str = "results.md";
pub const LOSS_SVG: &str = "loss_curves.svg";
pub const METRIC_SVG: &str = "metric_vs_params.svg";
pub const MEMORY_SVG: &str = "metric_vs_memory.svg";
pub const OUTPUT_FILES: [&str; 5] = [RESULTS_MD, RESULTS_JSON, LOSS_SVG, METRIC_SVG, MEMORY_SVG];

/// Exponential moving average weight of the loss curves (TensorBoard's smoothing slider).
const SMOOTHING: f64 = 0.6;
/// A curve whose smoothed loss ends above this multiple of where it started has diverged.
const DIVERGED: f64 = 2.0;
/// Log-y once the curves' ranges differ by more than this factor.
const LOG_Y_RATIO: f64 = 10.0;

fn metric_title(metric: Option<&str>) -> &'static str {
    match metric {
        Some("exact_match") => "exact-match accuracy",
        Some("rouge_l") => "ROUGE-L F1",
        _ => "eval loss",
    }
}

/// A method's point: mean metric with ± sd over seeds, or (one seed) its 95% interval: Wilson's
/// for exact match, the mean's for ROUGE-L.
fn point(g: &Group, metric: Option<&str>, x: f64) -> Option<Point> {
    let (y, sd) = match metric {
        Some(_) => g.stat(|m| m.task_score)?,
        None => g.stat(|m| m.eval_loss)?,
    };
    let seeds = g.rows.iter().filter(|r| r.ok()).count();
    let (lo, hi) = match (metric, g.interval(), g.mean_interval()) {
        (Some("exact_match"), Some((lo, hi, _)), _) if seeds == 1 => (lo, hi),
        (Some("rouge_l"), _, Some((lo, hi, _))) if seeds == 1 => (lo, hi),
        _ => (y - sd, y + sd),
    };
    Some(Point {
        name: g.method.to_string(),
        x,
        y,
        lo,
        hi,
    })
}

/// Task metric (or eval loss) against a cost per method; the base model and (for labels) the
/// most-frequent-label score are dashed lines.
fn cost_plot(results: &Results, cost: Cost) -> String {
    let metric = results.task_metric.as_deref();
    let all = groups(&results.methods);
    let points: Vec<Point> = all
        .iter()
        .filter(|g| g.method != "base" && g.any_ok())
        .filter_map(|g| {
            let x = match cost {
                Cost::Params => g.stat(|m| m.trainable_params.map(|n| n as f64))?.0,
                Cost::Memory => g.stat(|m| m.peak_rss_mib)?.0,
            };
            point(g, metric, x)
        })
        .collect();
    let base = all
        .iter()
        .find(|g| g.method == "base" && g.any_ok())
        .and_then(|g| point(g, metric, 0.0))
        .map(|p| ("base (zero-shot)", p.y));
    let majority = match metric {
        Some("exact_match") => results.majority_share.map(|v| ("most frequent label", v)),
        _ => None,
    };
    let baselines: Vec<(&str, f64)> = base.into_iter().chain(majority).collect();
    let title = metric_title(metric);
    let (what, axis) = match cost {
        Cost::Params => ("trainable parameters", "trainable parameters (log scale)"),
        Cost::Memory => ("peak training memory", "peak training RSS (MiB)"),
    };
    pareto_chart(&ParetoChart {
        title: &format!(
            "{title} vs {what} ({}); dotted: Pareto front",
            results.budget
        ),
        labels: (axis, title),
        points: &points,
        baselines: &baselines,
        log_x: cost == Cost::Params,
        unit_y: metric.is_some(),
        higher_is_better: metric.is_some(),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Cost {
    Params,
    Memory,
}

/// TensorBoard's debiased exponential moving average.
pub fn smooth(values: &[f64], weight: f64) -> Vec<f64> {
    let (mut last, mut debias) = (0.0, 0.0);
    values
        .iter()
        .map(|&v| {
            last = last * weight + (1.0 - weight) * v;
            debias = debias * weight + (1.0 - weight);
            last / debias
        })
        .collect()
}

/// Mean cross-entropy per step over a method's seeds.
fn mean_curve(g: &Group) -> Vec<(f64, f64)> {
    let mut by_step: std::collections::BTreeMap<usize, (f64, usize)> = Default::default();
    for r in &g.rows {
        for &(step, loss) in &r.curve {
            let e = by_step.entry(step).or_insert((0.0, 0));
            *e = (e.0 + loss, e.1 + 1);
        }
    }
    by_step
        .into_iter()
        .map(|(s, (sum, n))| (s as f64, sum / n as f64))
        .collect()
}

/// The curves to draw, and the methods left out (failed without a curve, or diverged) for the
/// note: a diverged run would otherwise set the axes for everybody.
pub fn loss_series(results: &Results) -> (Vec<Series>, Vec<String>) {
    let (mut series, mut left_out) = (Vec::new(), Vec::new());
    for g in groups(&results.methods)
        .iter()
        .filter(|g| g.method != "base")
    {
        let curve = mean_curve(g);
        let losses: Vec<f64> = curve.iter().map(|p| p.1).collect();
        let smoothed = smooth(&losses, SMOOTHING);
        let diverged = losses.iter().any(|l| !l.is_finite())
            || matches!((smoothed.first(), smoothed.last()), (Some(a), Some(b)) if *b > DIVERGED * a);
        if curve.is_empty() {
            if !g.any_ok() {
                left_out.push(format!("{} (failed)", g.method));
            }
        } else if diverged {
            left_out.push(format!("{} (diverged)", g.method));
        } else {
            let points = curve.iter().map(|p| p.0).zip(smoothed).collect();
            series.push(Series {
                name: g.method.to_string(),
                points,
            });
        }
    }
    (series, left_out)
}

/// True when the curves' value ranges differ by more than 10×.
pub fn wants_log_y(series: &[Series]) -> bool {
    let all = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = all
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    lo.is_finite() && hi / lo > LOG_Y_RATIO
}

fn loss_plot(results: &Results) -> String {
    let (series, left_out) = loss_series(results);
    let note = (!left_out.is_empty()).then(|| format!("not drawn: {}", left_out.join(", ")));
    line_chart(
        &format!(
            "training cross-entropy ({}), smoothed (EMA {SMOOTHING})",
            results.budget
        ),
        ("step", "loss (AdaLoRA's orthogonality term excluded)"),
        &series,
        wants_log_y(&series),
        note.as_deref(),
    )
}

/// Writes (or rewrites) every file in `out`.
pub fn write_outputs(out: &Path, results: &Results) -> Result<(), WriteError> {
    let json = serde_json::to_string_pretty(results).unwrap_or_else(|_| "{}".into());
    write_atomic(&out.join(RESULTS_JSON), json.as_bytes())?;
    write_atomic(&out.join(RESULTS_MD), markdown(results).as_bytes())?;
    write_atomic(&out.join(LOSS_SVG), loss_plot(results).as_bytes())?;
    write_atomic(
        &out.join(METRIC_SVG),
        cost_plot(results, Cost::Params).as_bytes(),
    )?;
    write_atomic(
        &out.join(MEMORY_SVG),
        cost_plot(results, Cost::Memory).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_debiased_so_a_flat_curve_stays_flat() {
        assert_eq!(smooth(&[2.0, 2.0, 2.0], 0.6), vec![2.0, 2.0, 2.0]);
        let s = smooth(&[1.0, 0.0], 0.5);
        assert!((s[1] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn log_y_only_when_ranges_differ_by_more_than_ten_times() {
        let s = |pts: Vec<(f64, f64)>| Series {
            name: "a".into(),
            points: pts,
        };
        assert!(!wants_log_y(&[s(vec![(1.0, 3.0), (2.0, 0.5)])]));
        assert!(wants_log_y(&[s(vec![(1.0, 30.0)]), s(vec![(1.0, 0.5)])]));
    }
}
