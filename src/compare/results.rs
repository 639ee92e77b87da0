//! The results of a comparison: `results.json` (one object per method: config, metrics, loss
//! curve) and `results.md` (one table, best task metric first).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stats::{mean_sd, wilson, Z95};
use super::sweep::SweepPoint;

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
    /// Mean and 99th percentile of the training process' resident memory, sampled every 100 ms.
    #[serde(default)]
    pub mean_rss_mib: Option<f64>,
    #[serde(default)]
    pub p99_rss_mib: Option<f64>,
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
    /// Sample sd of the per-example scores (ROUGE-L's interval; exact match needs none).
    #[serde(default)]
    pub task_score_sd: Option<f64>,
    /// Exact match: `[right, examples]` per reference label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right_per_label: Option<BTreeMap<String, [usize; 2]>>,
    /// Mean token cross-entropy on the general-text (forgetting) set.
    #[serde(default)]
    pub general_ce: Option<f64>,
    /// `general_ce` minus the base model's: how much general text the adapter made less likely.
    #[serde(default)]
    pub forgetting: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// A method name of the presets, or `base` (the model zero-shot).
    pub method: String,
    /// The training seed (`None` for the base row).
    #[serde(default)]
    pub seed: Option<u64>,
    /// `ok` or `error`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Learning rate and the adapter_config.json trained (null for the base row).
    pub config: Value,
    pub metrics: RunMetrics,
    /// Training cross-entropy per step: `[step, loss]` (AdaLoRA's orthogonality term excluded).
    pub curve: Vec<(usize, f64)>,
    /// The `--lr-sweep` rates tried for this method (empty without a sweep).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepPoint>,
}

impl MethodResult {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// A row that failed before anything was measured.
    pub fn failed(method: &str, seed: Option<u64>, error: String) -> Self {
        Self {
            method: method.to_string(),
            seed,
            status: "error".into(),
            error: Some(error),
            config: Value::Null,
            metrics: RunMetrics::default(),
            curve: vec![],
            sweep: vec![],
        }
    }

    /// Correct answers (exact match: the score is a proportion of `task_examples`).
    pub fn successes(&self) -> Option<(f64, usize)> {
        let n = self.metrics.task_examples?;
        Some(((self.metrics.task_score? * n as f64).round(), n))
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

/// A method's rows, one per seed.
pub struct Group<'a> {
    pub method: &'a str,
    pub rows: Vec<&'a MethodResult>,
}

impl Group<'_> {
    fn ok_rows(&self) -> impl Iterator<Item = &MethodResult> {
        self.rows.iter().copied().filter(|r| r.ok())
    }

    /// Mean and sd of a metric over the rows that succeeded.
    pub fn stat(&self, f: impl Fn(&RunMetrics) -> Option<f64>) -> Option<(f64, f64)> {
        mean_sd(self.ok_rows().filter_map(|r| f(&r.metrics)))
    }

    /// The 95% Wilson interval of the correct answers of all seeds pooled, and their count.
    pub fn interval(&self) -> Option<(f64, f64, usize)> {
        let (k, n) = self
            .ok_rows()
            .filter_map(MethodResult::successes)
            .fold((0.0, 0), |(k, n), (a, b)| (k + a, n + b));
        wilson(k, n, Z95).map(|(lo, hi)| (lo, hi, n))
    }

    /// The 95% interval of a mean score (ROUGE-L) over the examples of all seeds pooled, and
    /// their count: mean ± z·s/√n, the normal approximation a mean of n bounded scores allows
    /// (central limit theorem; n is ~100 here). The pooled s adds the spread between seeds'
    /// means to the spread within each.
    pub fn mean_interval(&self) -> Option<(f64, f64, usize)> {
        let parts: Vec<(f64, f64, f64)> = self
            .ok_rows()
            .filter_map(|r| {
                let m = &r.metrics;
                Some((m.task_examples? as f64, m.task_score?, m.task_score_sd?))
            })
            .filter(|&(n, _, _)| n >= 2.0)
            .collect();
        let n: f64 = parts.iter().map(|p| p.0).sum();
        if parts.is_empty() || n < 2.0 {
            return None;
        }
        let mean = parts.iter().map(|&(k, m, _)| k * m).sum::<f64>() / n;
        let squares: f64 = parts
            .iter()
            .map(|&(k, m, sd)| (k - 1.0) * sd * sd + k * (m - mean).powi(2))
            .sum();
        let half = Z95 * (squares / (n - 1.0)).sqrt() / n.sqrt();
        Some(((mean - half).max(0.0), (mean + half).min(1.0), n as usize))
    }

    pub fn any_ok(&self) -> bool {
        self.ok_rows().next().is_some()
    }

    fn seeds(&self) -> usize {
        self.ok_rows().count()
    }
}

/// Rows grouped by method, in the order methods first appear.
pub fn groups(methods: &[MethodResult]) -> Vec<Group<'_>> {
    let mut out: Vec<Group> = Vec::new();
    for m in methods {
        match out.iter_mut().find(|g| g.method == m.method) {
            Some(g) => g.rows.push(m),
            None => out.push(Group {
                method: &m.method,
                rows: vec![m],
            }),
        }
    }
    out
}

/// Best first: methods by mean task metric (descending), then mean eval loss (ascending);
/// methods whose every row failed last, in run order.
pub fn ranked(methods: &[MethodResult]) -> Vec<Group<'_>> {
    let key = |g: &Group| {
        (
            g.stat(|m| m.task_score).map_or(f64::NEG_INFINITY, |s| s.0),
            -g.stat(|m| m.eval_loss).map_or(f64::INFINITY, |s| s.0),
        )
    };
    let (mut ok, failed): (Vec<Group>, Vec<Group>) =
        groups(methods).into_iter().partition(Group::any_ok);
    ok.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.partial_cmp(&ka.0)
            .unwrap_or(Ordering::Equal)
            .then(kb.1.partial_cmp(&ka.1).unwrap_or(Ordering::Equal))
    });
    ok.extend(failed);
    ok
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

fn human_bytes(n: f64) -> String {
    match n {
        n if n >= (1u64 << 20) as f64 => format!("{:.1} MiB", n / (1u64 << 20) as f64),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

/// `mean` (one seed) or `mean ± sd` (several), `–` when not measured.
fn cell(stat: Option<(f64, f64)>, seeds: usize, f: impl Fn(f64) -> String) -> String {
    match stat {
        None => "–".into(),
        Some((m, _)) if seeds <= 1 => f(m),
        // A spread has no sign, whatever the mean's format shows.
        Some((m, sd)) => format!("{} ± {}", f(m), f(sd).trim_start_matches('+')),
    }
}

/// The task metric with its sample size and 95% interval: Wilson's for exact match, the mean's
/// for ROUGE-L.
fn score_cell(g: &Group, metric: Option<&str>) -> String {
    let seeds = g.seeds();
    let score = cell(g.stat(|m| m.task_score), seeds, |s| format!("{s:.3}"));
    if metric.is_none() || score == "–" {
        return "–".into();
    }
    match (metric, g.interval()) {
        (Some("exact_match"), Some((lo, hi, n))) if seeds > 1 => {
            format!("{score} [{lo:.3}, {hi:.3}] n={seeds}×{}", n / seeds.max(1))
        }
        (Some("exact_match"), Some((lo, hi, n))) => format!("{score} [{lo:.3}, {hi:.3}] n={n}"),
        (Some("rouge_l"), _) if g.mean_interval().is_some() => {
            let (lo, hi, n) = g.mean_interval().unwrap_or_default();
            match seeds {
                1 => format!("{score} [{lo:.3}, {hi:.3}] n={n}"),
                _ => format!("{score} [{lo:.3}, {hi:.3}] n={seeds}×{}", n / seeds),
            }
        }
        _ => {
            let n = g.ok_rows().find_map(|r| r.metrics.task_examples);
            format!("{score} n={}", n.map_or("?".into(), |n| n.to_string()))
        }
    }
}

/// `2e-4`, or `3e-4 (swept 6e-5…6e-4)` when `--lr-sweep` chose it.
fn lr_cell(g: &Group) -> String {
    let Some(first) = g.rows.first() else {
        return "–".into();
    };
    let lr = first.config.get("lr").and_then(Value::as_f64);
    let lr = opt(lr, |l| format!("{l:.0e}"));
    let rates: Vec<f64> = first.sweep.iter().map(|p| p.lr).collect();
    match (rates.first(), rates.last()) {
        (Some(lo), Some(hi)) if rates.len() > 1 => format!("{lr} (swept {lo:.0e}…{hi:.0e})"),
        _ => lr,
    }
}

fn status_cell(g: &Group) -> String {
    let notes: Vec<&str> = g
        .rows
        .first()
        .and_then(|m| m.config.get("notes"))
        .and_then(Value::as_array)
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let errors: Vec<String> = g
        .rows
        .iter()
        .filter_map(|r| {
            let e = r.error.as_ref()?;
            let seed = r.seed.map_or(String::new(), |s| format!("seed {s}: "));
            Some(format!(
                "{seed}{}",
                e.replace('|', "\\|").replace('\n', " ")
            ))
        })
        .collect();
    let status = match (errors.is_empty(), g.any_ok()) {
        (true, _) => "ok".to_string(),
        (false, false) => format!("error: {}", errors.join("; ")),
        (false, true) => format!("ok ({} failed: {})", errors.len(), errors.join("; ")),
    };
    if notes.is_empty() {
        status
    } else {
        format!("{status} ({})", notes.join("; ").replace('|', "\\|"))
    }
}

/// One Markdown table row per method (mean ± sd over seeds).
fn row(rank: usize, g: &Group, metric: Option<&str>) -> String {
    let seeds = g.seeds();
    let first = g.ok_rows().next().map(|r| &r.metrics);
    let params = match (
        first.and_then(|x| x.trainable_params),
        first.and_then(|x| x.trainable_percent),
    ) {
        (Some(n), Some(p)) => format!("{} ({p:.3}%)", human_count(n)),
        (Some(n), None) => human_count(n),
        _ => "–".into(),
    };
    let c = |f: fn(&RunMetrics) -> Option<f64>, fmt: fn(f64) -> String| cell(g.stat(f), seeds, fmt);
    let memory = format!(
        "{} / {} / {}",
        c(|m| m.peak_rss_mib, |r| format!("{r:.0}")),
        c(|m| m.mean_rss_mib, |r| format!("{r:.0}")),
        c(|m| m.p99_rss_mib, |r| format!("{r:.0}"))
    );
    format!(
        "| {rank} | {} | {} | {} | {} | {} | {} | {params} | {} | {memory} | {} | {} | {} | {} | {} |",
        g.method,
        lr_cell(g),
        score_cell(g, metric),
        c(|m| m.forgetting, |f| format!("{f:+.4}")),
        c(|m| m.eval_loss, |l| format!("{l:.4}")),
        c(|m| m.final_train_loss, |l| format!("{l:.4}")),
        opt(g.stat(|m| m.adapter_bytes.map(|b| b as f64)).map(|s| s.0), human_bytes),
        c(|m| m.eval_peak_rss_mib, |r| format!("{r:.0}")),
        c(|m| m.tokens_per_s, |t| format!("{t:.1}")),
        c(|m| m.steps.map(|s| s as f64), |s| format!("{s:.0}")),
        c(|m| m.train_seconds, |s| format!("{s:.1}")),
        status_cell(g),
    )
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
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

/// The `--lr-sweep` section: every rate tried per method, the chosen one in bold.
fn sweep_section(results: &Results) -> String {
    let mut md = String::new();
    for g in groups(&results.methods) {
        let Some(first) = g.rows.first().filter(|r| !r.sweep.is_empty()) else {
            continue;
        };
        if md.is_empty() {
            md += "\n## Learning-rate sweep (validation split of the training data)\n\n| method | lr | val score | val loss |\n|---|---|---|---|\n";
        }
        let chosen = first.config.get("lr").and_then(Value::as_f64);
        for p in &first.sweep {
            let lr = if Some(p.lr) == chosen {
                format!("**{:.1e}**", p.lr)
            } else {
                format!("{:.1e}", p.lr)
            };
            let score = match &p.error {
                Some(e) => format!("error: {}", e.replace('|', "\\|")),
                None => opt(p.val_score, |s| format!("{s:.3}")),
            };
            let _ = writeln!(
                md,
                "| {} | {lr} | {score} | {} |",
                g.method,
                opt(p.val_loss, |l| format!("{l:.4}"))
            );
        }
    }
    md
}

/// Exact match: each method's right answers per label (seeds pooled), best method first, so a
/// method that answers one label to everything is plain to see.
fn label_section(results: &Results) -> String {
    let ranked = ranked(&results.methods);
    let pooled: Vec<(&str, BTreeMap<&str, [usize; 2]>)> = ranked
        .iter()
        .filter_map(|g| {
            let mut sum: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
            for per in g
                .ok_rows()
                .filter_map(|r| r.metrics.right_per_label.as_ref())
            {
                for (label, [right, n]) in per {
                    let s = sum.entry(label.as_str()).or_default();
                    s[0] += right;
                    s[1] += n;
                }
            }
            (!sum.is_empty()).then_some((g.method, sum))
        })
        .collect();
    let mut labels: Vec<&str> = pooled.iter().flat_map(|(_, s)| s.keys().copied()).collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.is_empty() || labels.len() > 20 {
        return String::new();
    }
    let escape = |s: &str| s.replace('|', "\\|");
    let mut md = String::from("\n## Right answers per label\n\n| method |");
    for l in &labels {
        let _ = write!(md, " {} |", escape(l));
    }
    md += "\n|---|";
    md += &"---|".repeat(labels.len());
    md += "\n";
    for (method, sum) in &pooled {
        let _ = write!(md, "| {method} |");
        for l in &labels {
            let _ = match sum.get(l) {
                Some([right, n]) => write!(md, " {right}/{n} |"),
                None => write!(md, " – |"),
            };
        }
        md += "\n";
    }
    md
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
        "Scores are mean ± sd over seeds where there are several; [lo, hi] is the 95% interval (exact match: Wilson's, of the correct answers; ROUGE-L: the mean's, ±1.96 s/√n; seeds pooled), n the examples scored. Forgetting is the rise of mean token cross-entropy on general text over the base model's.\n"
    );
    let _ = writeln!(
        md,
        "| # | method | lr | {} | forgetting (Δ CE) | eval loss | final train CE | trainable params | adapter file | train RSS peak / mean / p99 (MiB) | eval peak RSS (MiB) | train tokens/s | steps | train time (s) | status |",
        metric.unwrap_or("task metric")
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (i, g) in ranked(&results.methods).iter().enumerate() {
        let _ = writeln!(md, "{}", row(i + 1, g, metric));
    }
    md + &label_section(results) + &sweep_section(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(method: &str, score: Option<f64>, loss: Option<f64>, error: bool) -> MethodResult {
        MethodResult {
            method: method.into(),
            seed: Some(1),
            status: if error { "error" } else { "ok" }.into(),
            error: error.then(|| "boom | bang".to_string()),
            config: serde_json::json!({"lr": 2e-4}),
            metrics: RunMetrics {
                task_score: score,
                task_examples: score.map(|_| 8),
                eval_loss: loss,
                ..Default::default()
            },
            curve: vec![],
            sweep: vec![],
        }
    }

    fn results(methods: Vec<MethodResult>) -> Results {
        Results {
            command: "peft compare".into(),
            machine: "test".into(),
            model: "m".into(),
            data: "d".into(),
            eval: "e".into(),
            budget: "steps=2".into(),
            common: serde_json::json!({}),
            task_metric: Some("exact_match".into()),
            majority_share: Some(0.625),
            methods,
        }
    }

    #[test]
    fn ranking_puts_best_metric_first_and_failures_last() {
        let rows = vec![
            result("prefix", None, None, true),
            result("base", Some(0.125), Some(3.0), false),
            result("lora", Some(0.875), Some(0.2), false),
            result("ia3", Some(0.875), Some(0.1), false),
        ];
        let names: Vec<&str> = ranked(&rows).iter().map(|g| g.method).collect();
        assert_eq!(names, ["ia3", "lora", "base", "prefix"]);
    }

    #[test]
    fn the_markdown_table_has_one_row_per_method_with_its_interval_and_escapes_errors() {
        let md = markdown(&results(vec![
            result("lora", Some(0.5), Some(1.0), false),
            result("x", None, None, true),
        ]));
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 3);
        // 4 of 8: Wilson [0.215, 0.785].
        assert!(
            md.contains("| 1 | lora | 2e-4 | 0.500 [0.215, 0.785] n=8 | – | 1.0000 |"),
            "{md}"
        );
        assert!(md.contains("error: seed 1: boom \\| bang"), "{md}");
        assert!(md.contains("would score 0.625"));
    }

    #[test]
    fn seeds_of_a_method_share_one_row_with_mean_and_sd() {
        let mut rows = vec![
            result("lora", Some(0.5), Some(1.0), false),
            result("lora", Some(0.75), Some(3.0), false),
        ];
        rows[1].seed = Some(2);
        let md = markdown(&results(rows));
        // 10 of 16 pooled: Wilson [0.386, 0.815].
        assert!(
            md.contains(
                "| lora | 2e-4 | 0.625 ± 0.177 [0.386, 0.815] n=2×8 | – | 2.0000 ± 1.4142 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn a_rouge_l_mean_gets_the_normal_interval_of_its_examples_pooled_over_seeds() {
        let rouge = |score: f64, seed: u64| {
            let mut m = result("lora", Some(score), Some(1.0), false);
            m.seed = Some(seed);
            m.metrics.task_examples = Some(100);
            m.metrics.task_score_sd = Some(0.2);
            m
        };
        let mut one = results(vec![rouge(0.3, 1)]);
        one.task_metric = Some("rouge_l".into());
        // 0.3 ± 1.96 · 0.2 / √100.
        let md = markdown(&one);
        assert!(
            md.contains("| lora | 2e-4 | 0.300 [0.261, 0.339] n=100 |"),
            "{md}"
        );
        // Two seeds of 100: the spread between their means (0.3, 0.4) widens s to 0.2057.
        let mut two = results(vec![rouge(0.3, 1), rouge(0.4, 2)]);
        two.task_metric = Some("rouge_l".into());
        let md = markdown(&two);
        assert!(
            md.contains("| lora | 2e-4 | 0.350 ± 0.071 [0.321, 0.379] n=2×100 |"),
            "{md}"
        );
    }

    #[test]
    fn right_answers_per_label_are_pooled_over_seeds_and_show_a_one_label_method() {
        let per = |yes: usize, no: usize| {
            Some(BTreeMap::from([
                ("yes".to_string(), [yes, 4]),
                ("no".to_string(), [no, 4]),
            ]))
        };
        let mut rows = vec![
            result("lora", Some(0.5), Some(1.0), false),
            result("lora", Some(0.5), Some(1.0), false),
            result("x", None, None, true),
        ];
        rows[1].seed = Some(2);
        rows[0].metrics.right_per_label = per(3, 1);
        rows[1].metrics.right_per_label = per(4, 0);
        let md = markdown(&results(rows));
        assert!(
            md.contains("## Right answers per label\n\n| method | no | yes |\n|---|---|---|\n| lora | 1/8 | 7/8 |\n"),
            "{md}"
        );
        let section = md
            .split("## Right answers per label")
            .nth(1)
            .unwrap_or_default();
        assert!(
            !section.contains("| x |"),
            "a failed method has no answers: {md}"
        );
        let md = markdown(&results(vec![result("lora", Some(0.5), Some(1.0), false)]));
        assert!(!md.contains("per label"), "{md}");
    }

    #[test]
    fn a_clamped_preset_is_an_ok_row_with_its_note() {
        let mut m = result("llama-adapter", Some(0.5), Some(1.0), false);
        m.config = serde_json::json!({"lr": 9e-3, "notes": ["adapter_layers 30 clamped to the model's 2 layers"]});
        let rows = [m];
        let g = &groups(&rows)[0];
        assert!(row(1, g, Some("exact_match"))
            .ends_with("| ok (adapter_layers 30 clamped to the model's 2 layers) |"));
    }

    #[test]
    fn counts_read_like_peft_docs() {
        assert_eq!(human_count(2_442_240), "2.44M");
        assert_eq!(human_count(18_432), "18.4K");
        assert_eq!(human_count(512), "512");
    }
}
