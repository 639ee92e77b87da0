//! The results of a comparison: `results.json` (one object per method: config, metrics, loss
//! curve) and `results.md` (one table, best task metric first).

use std::cmp::Ordering;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything measured for one method (or the zero-shot base row). `None`: not measured (the
/// method failed first, or the quantity does not apply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// As PEFT's `print_trainable_parameters`.
    pub trainable_params: Option<u64>,
    pub total_params: Option<u64>,
    pub trainable_percent: Option<f64>,
    /// Bytes of `adapter_model.safetensors`.
    pub adapter_bytes: Option<u64>,
    /// Peak resident memory of the training process (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Peak resident memory of the evaluation process, MiB.
    pub eval_peak_rss_mib: Option<f64>,
    pub steps: Option<usize>,
    /// Real (non-padding) tokens trained on.
    pub train_tokens: Option<usize>,
    /// Training tokens per second of step time.
    pub tokens_per_s: Option<f64>,
    /// Wall time of the training process (loading and saving included), seconds.
    pub train_seconds: Option<f64>,
    /// Wall time of the evaluation process, seconds.
    pub eval_seconds: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub eval_perplexity: Option<f64>,
    /// `exact_match` or `rouge_l` (`None` for text data).
    pub task_metric: Option<String>,
    /// The task metric over `task_examples` eval records.
    pub task_score: Option<f64>,
    pub task_examples: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// A method name of the presets, or `base` (the model zero-shot).
    pub method: String,
    /// `ok` or `error`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Learning rate and the adapter_config.json trained (null for the base row).
    pub config: Value,
    pub metrics: RunMetrics,
    /// Training loss per step: `[step, loss]`.
    pub curve: Vec<(usize, f64)>,
}

impl MethodResult {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The command line that produced these results.
    pub command: String,
    pub machine: String,
    pub model: String,
    pub data: String,
    pub eval: String,
    pub budget: String,
    /// Options every method shares (seed, batch size, optimizer, schedule, ...).
    pub common: Value,
    /// `exact_match`, `rouge_l`, or null (text data).
    pub task_metric: Option<String>,
    /// Exact match only: the share of the most frequent reference (always answering it).
    pub majority_share: Option<f64>,
    pub methods: Vec<MethodResult>,
}

/// Best first: successful rows by task metric (descending), then eval loss (ascending); failed
/// rows last, in run order.
pub fn ranked(methods: &[MethodResult]) -> Vec<&MethodResult> {
    let key = |m: &MethodResult| {
        (
            m.metrics.task_score.unwrap_or(f64::NEG_INFINITY),
            -m.metrics.eval_loss.unwrap_or(f64::INFINITY),
        )
    };
    let mut ok: Vec<&MethodResult> = methods.iter().filter(|m| m.ok()).collect();
    ok.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.partial_cmp(&ka.0)
            .unwrap_or(Ordering::Equal)
            .then(kb.1.partial_cmp(&ka.1).unwrap_or(Ordering::Equal))
    });
    ok.extend(methods.iter().filter(|m| !m.ok()));
    ok
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
}

/// 2_400_000 → "2.40M".
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// One Markdown table row per method.
fn row(rank: usize, m: &MethodResult, metric: Option<&str>) -> String {
    let x = &m.metrics;
    let params = match (x.trainable_params, x.trainable_percent) {
        (Some(n), Some(p)) => format!("{} ({p:.3}%)", human_count(n)),
        (Some(n), None) => human_count(n),
        _ => "–".into(),
    };
    let score = match metric {
        Some(_) => opt(x.task_score, |s| format!("{s:.3}")),
        None => "–".into(),
    };
    let lr = m.config.get("lr").and_then(Value::as_f64);
    let notes: Vec<&str> = m
        .config
        .get("notes")
        .and_then(Value::as_array)
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let status = match (&m.error, notes.is_empty()) {
        (Some(e), _) => format!("error: {}", e.replace('|', "\\|").replace('\n', " ")),
        (None, true) => "ok".into(),
        (None, false) => format!("ok ({})", notes.join("; ").replace('|', "\\|")),
    };
    format!(
        "| {rank} | {} | {} | {score} | {} | {} | {params} | {} | {} | {} | {} | {} | {status} |",
        m.method,
        opt(lr, |l| format!("{l:.0e}")),
        opt(x.eval_loss, |l| format!("{l:.4}")),
        opt(x.eval_perplexity, |p| format!("{p:.2}")),
        opt(x.adapter_bytes, human_bytes),
        format!(
            "{} / {}",
            opt(x.peak_rss_mib, |r| format!("{r:.0}")),
            opt(x.eval_peak_rss_mib, |r| format!("{r:.0}"))
        ),
        opt(x.tokens_per_s, |t| format!("{t:.1}")),
        opt(x.steps, |s| s.to_string()),
        opt(x.train_seconds, |s| format!("{s:.1}")),
    )
}

/// `{"seed": 42, "lr_scheduler": "constant"}` → "seed 42, lr_scheduler constant" (nulls left out).
fn shared(common: &Value) -> String {
    let Some(map) = common.as_object() else {
        return common.to_string();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k} {s}"),
            v => format!("{k} {v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `results.md`: the setup, then the table sorted by the task metric.
pub fn markdown(results: &Results) -> String {
    let metric = results.task_metric.as_deref();
    let mut md = String::new();
    let _ = writeln!(md, "# peft compare\n");
    let _ = writeln!(md, "    {}\n", results.command);
    let _ = writeln!(
        md,
        "- model: `{}`\n- data: `{}`; evaluated on {}\n- budget: {} per method; shared: {}\n- machine: {}\n- task metric: {}\n",
        results.model,
        results.data,
        results.eval,
        results.budget,
        shared(&results.common),
        results.machine,
        metric.unwrap_or("none (text data)")
    );
    if let (Some("exact_match"), Some(share)) = (metric, results.majority_share) {
        let _ = writeln!(
            md,
            "Always answering the most frequent label would score {share:.3}.\n"
        );
    }
    let _ = writeln!(
        md,
        "| # | method | lr | {} | eval loss | eval ppl | trainable params | adapter file | peak RSS train / eval (MiB) | train tokens/s | steps | train time (s) | status |",
        metric.unwrap_or("task metric")
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, m) in ranked(&results.methods).into_iter().enumerate() {
        let _ = writeln!(md, "{}", row(i + 1, m, metric));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(method: &str, score: Option<f64>, loss: Option<f64>, error: bool) -> MethodResult {
        MethodResult {
            method: method.into(),
            status: if error { "error" } else { "ok" }.into(),
            error: error.then(|| "boom | bang".to_string()),
            config: serde_json::json!({"lr": 2e-4}),
            metrics: RunMetrics {
                task_score: score,
                eval_loss: loss,
                ..Default::default()
            },
            curve: vec![],
        }
    }

    #[test]
    fn ranking_puts_best_metric_first_and_failures_last() {
        let rows = vec![
            result("prefix", None, None, true),
            result("base", Some(0.1), Some(3.0), false),
            result("lora", Some(0.9), Some(0.2), false),
            result("ia3", Some(0.9), Some(0.1), false),
        ];
        let names: Vec<&str> = ranked(&rows).iter().map(|m| m.method.as_str()).collect();
        assert_eq!(names, ["ia3", "lora", "base", "prefix"]);
    }

    #[test]
    fn the_markdown_table_has_one_row_per_method_and_escapes_errors() {
        let results = Results {
            command: "peft compare".into(),
            machine: "test".into(),
            model: "m".into(),
            data: "d".into(),
            eval: "e".into(),
            budget: "steps=2".into(),
            common: serde_json::json!({}),
            task_metric: Some("exact_match".into()),
            majority_share: Some(0.625),
            methods: vec![
                result("lora", Some(0.5), Some(1.0), false),
                result("x", None, None, true),
            ],
        };
        let md = markdown(&results);
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 3);
        assert!(md.contains("| 1 | lora | 2e-4 | 0.500 | 1.0000 |"));
        assert!(md.contains("error: boom \\| bang"));
        assert!(md.contains("would score 0.625"));
    }

    #[test]
    fn a_clamped_preset_is_an_ok_row_with_its_note() {
        let mut m = result("llama-adapter", Some(0.5), Some(1.0), false);
        m.config = serde_json::json!({"lr": 9e-3, "notes": ["adapter_layers 30 clamped to the model's 2 layers"]});
        assert!(row(1, &m, Some("exact_match"))
            .ends_with("| ok (adapter_layers 30 clamped to the model's 2 layers) |"));
    }

    #[test]
    fn counts_read_like_peft_docs() {
        assert_eq!(human_count(2_442_240), "2.44M");
        assert_eq!(human_count(18_432), "18.4K");
        assert_eq!(human_count(512), "512");
    }
}
