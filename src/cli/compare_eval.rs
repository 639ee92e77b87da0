//! The child side of `peft compare`, two hidden subcommands. `peft compare-train` is `peft train`
//! that reports its own peak RSS (`peak_rss_mib: X` on stderr, failures included).
//! `peft compare-eval` runs for the base model and after each method's training: eval loss and
//! perplexity over the held-out records, then greedy generation on each record's prompt, scored
//! by the task metric. It prints one JSON object.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use peft::compare::task::split_response;
use peft::compare::TaskMetric;
use peft::data::{self, BatchConfig, DataStats, Encoded};
use peft::generate::{generate, SamplingConfig};
use peft::tokenizer::TextTokenizer;
use peft::train::eval::evaluate;
use serde_json::json;

use super::common::ModelArgs;
use super::data_options::DataOptions;

/// New tokens allowed beyond the longest reference and its end-of-turn token: for labels one, in
/// case the same text comes out split into more tokens (anything longer cannot match anyway);
/// free text a little more.
const EXTRA_LABEL_TOKENS: usize = 1;
const EXTRA_TEXT_TOKENS: usize = 8;
const MAX_AUTO_NEW_TOKENS: usize = 256;

#[derive(clap::Args, Debug)]
pub struct CompareEvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataOptions,
    /// The seed of the eval split (`--eval-split`), as in training.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Only the first N held-out records (file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// auto (exact-match for labels, ROUGE-L otherwise), exact-match, rouge-l or none.
    #[arg(long, default_value = "auto")]
    pub task_metric: String,
    /// New tokens per answer (default: the longest reference plus a few).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Write one JSON line per example: prompt, reference, prediction, score.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
}

/// `peft train`, then this process's peak resident memory (VmHWM) for the parent to read.
pub fn train(args: super::train::TrainArgs) -> anyhow::Result<()> {
    let result = super::train::run_cmd(args);
    eprintln!("{PEAK_RSS}{:.1}", peft::models::synthetic::peak_rss_mib());
    result
}

/// The line prefix `peft compare-train` reports its peak RSS with.
pub const PEAK_RSS: &str = "peak_rss_mib: ";

/// The held-out records: `--eval-data`, or the `--eval-split` of `--data` (as `peft train`).
fn eval_records(args: &CompareEvalArgs, tokenizer: &TextTokenizer) -> anyhow::Result<Vec<Encoded>> {
    let config = args.data.to_config(args.seed)?;
    let mut records = match &config.eval_data {
        Some(path) => data::encode_file(path, &config, tokenizer, &mut DataStats::default())?,
        None if config.eval_split > 0.0 => data::prepare(&config, tokenizer)?.eval,
        None => bail!("no held-out data: give --eval-data FILE or --eval-split F"),
    };
    if let Some(n) = args.limit {
        records.truncate(n.max(1));
    }
    Ok(records)
}

/// The metric to score with, and the (prompt, reference ids) of every record that has one.
fn task(
    args: &CompareEvalArgs,
    records: &[Encoded],
    tokenizer: &TextTokenizer,
) -> anyhow::Result<Option<(TaskMetric, Vec<(Vec<u32>, String)>)>> {
    let examples: Vec<(Vec<u32>, Vec<u32>)> = records.iter().filter_map(split_response).collect();
    if args.task_metric == "none" || examples.is_empty() {
        return Ok(None);
    }
    let references = examples
        .iter()
        .map(|(_, r)| Ok(tokenizer.decode(r, true)?.trim().to_string()))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let metric = match args.task_metric.as_str() {
        "auto" => TaskMetric::choose(&references),
        other => other.parse().map_err(anyhow::Error::msg)?,
    };
    let pairs = examples.into_iter().map(|(p, _)| p).zip(references);
    Ok(Some((metric, pairs.collect())))
}

/// The share of the most frequent reference: what always giving one label would score.
fn majority_share<'a>(references: impl Iterator<Item = &'a str>) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0;
    for r in references {
        *counts.entry(r).or_insert(0usize) += 1;
        n += 1;
    }
    counts.values().max().map_or(0.0, |&m| m as f64 / n as f64)
}

pub fn run(args: CompareEvalArgs) -> anyhow::Result<()> {
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let records = eval_records(&args, &tokenizer)?;
    let loaded = args.model.load()?;
    let pad_id = tokenizer
        .pad_id()
        .or(tokenizer.eos_id())
        .map_or(0, i64::from);
    let batch_config = BatchConfig {
        batch_size: args.batch_size.max(1),
        seed: 0,
        shuffle: false,
        group_by_length: false,
        pack: None,
        pad_id,
    };
    let loss = evaluate(&loaded.model, &data::batches(&records, &batch_config, 0));
    let mut out = json!({"eval_loss": loss.loss, "eval_perplexity": loss.perplexity, "eval_tokens": loss.tokens, "records": records.len(), "task_metric": null, "task_score": null, "task_examples": 0});
    if let Some((metric, examples)) = task(&args, &records, &tokenizer)? {
        let longest = examples
            .iter()
            .map(|(_, r)| tokenizer.encode(r, false).map(|ids| ids.len()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        let extra = match metric {
            TaskMetric::ExactMatch => EXTRA_LABEL_TOKENS,
            TaskMetric::RougeL => EXTRA_TEXT_TOKENS,
        };
        let mut eos_ids = loaded.dir.eos_token_ids();
        eos_ids.extend(tokenizer.eos_id());
        let sampling = SamplingConfig {
            max_new_tokens: args
                .max_new_tokens
                .unwrap_or((longest + 1 + extra).min(MAX_AUTO_NEW_TOKENS)),
            greedy: true,
            eos_ids,
            ..SamplingConfig::default()
        };
        let (mut total, mut lines) = (0.0, String::new());
        for (prompt, reference) in &examples {
            let new = generate(&loaded.model, prompt, &sampling, &mut |_| {})
                .context("generation failed")?;
            let prediction = tokenizer.decode(&new, true)?.trim().to_string();
            let score = metric.score(&prediction, reference);
            total += score;
            let prompt_text = tokenizer.decode(prompt, false)?;
            let line = json!({"prompt": prompt_text, "reference": reference, "prediction": prediction, "score": score});
            let _ = writeln!(lines, "{line}");
        }
        if let Some(path) = &args.predictions {
            peft::io::write_atomic(path, lines.as_bytes())?;
        }
        out["majority_share"] = json!(majority_share(examples.iter().map(|(_, r)| r.as_str())));
        out["task_metric"] = json!(metric.name());
        out["task_score"] = json!(total / examples.len() as f64);
        out["task_examples"] = json!(examples.len());
    }
    println!("{out}");
    eprintln!("{PEAK_RSS}{:.1}", peft::models::synthetic::peak_rss_mib());
    Ok(())
}
