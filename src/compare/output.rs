//! The files of a comparison, each written atomically: `results.json`, `results.md`,
//! `loss_curves.svg` (training loss of every method) and `metric_vs_params.svg` (the task metric,
//! or eval loss for text data, against trainable parameters).

use std::path::Path;

use crate::error::WriteError;
use crate::io::write_atomic;

use super::results::{markdown, Results};
use super::svg::{line_chart, scatter_log_x, Series};

pub const RESULTS_JSON: &str = "results.json";
pub const RESULTS_MD: &str = "results.md";
pub const LOSS_SVG: &str = "loss_curves.svg";
pub const METRIC_SVG: &str = "metric_vs_params.svg";

fn metric_title(metric: Option<&str>) -> &'static str {
    match metric {
        Some("exact_match") => "exact-match accuracy",
        Some("rouge_l") => "ROUGE-L F1",
        _ => "eval loss",
    }
}

/// Task metric (or eval loss) against trainable parameters; the base model and (for labels) the
/// most-frequent-label score are dashed lines.
fn metric_plot(results: &Results) -> String {
    let metric = results.task_metric.as_deref();
    let value = |m: &super::MethodResult| match metric {
        Some(_) => m.metrics.task_score,
        None => m.metrics.eval_loss,
    };
    let points: Vec<(String, f64, f64)> = results
        .methods
        .iter()
        .filter(|m| m.ok() && m.method != "base")
        .filter_map(|m| {
            Some((
                m.method.clone(),
                m.metrics.trainable_params? as f64,
                value(m)?,
            ))
        })
        .collect();
    let base = results
        .methods
        .iter()
        .find(|m| m.method == "base" && m.ok())
        .and_then(value)
        .map(|v| ("base (zero-shot)", v));
    let majority = match metric {
        Some("exact_match") => results.majority_share.map(|v| ("most frequent label", v)),
        _ => None,
    };
    let baselines: Vec<(&str, f64)> = base.into_iter().chain(majority).collect();
    let title = metric_title(metric);
    scatter_log_x(
        &format!("{title} vs trainable parameters ({})", results.budget),
        ("trainable parameters (log scale)", title),
        &points,
        &baselines,
        metric.is_some(),
    )
}

fn loss_plot(results: &Results) -> String {
    let series: Vec<Series> = results
        .methods
        .iter()
        .filter(|m| !m.curve.is_empty())
        .map(|m| Series {
            name: m.method.clone(),
            points: m.curve.iter().map(|&(s, l)| (s as f64, l)).collect(),
        })
        .collect();
    line_chart(
        &format!("training loss ({})", results.budget),
        "step",
        "loss",
        &series,
    )
}

/// Writes (or rewrites) all four files in `out`.
pub fn write_outputs(out: &Path, results: &Results) -> Result<(), WriteError> {
    let json = serde_json::to_string_pretty(results).unwrap_or_else(|_| "{}".into());
    write_atomic(&out.join(RESULTS_JSON), json.as_bytes())?;
    write_atomic(&out.join(RESULTS_MD), markdown(results).as_bytes())?;
    write_atomic(&out.join(LOSS_SVG), loss_plot(results).as_bytes())?;
    write_atomic(&out.join(METRIC_SVG), metric_plot(results).as_bytes())
}
