//! The child side of `peft compare`, two hidden subcommands. `peft compare-train` is `peft train`
//! that reports its own peak RSS (`peak_rss_mib: X` on stderr, failures included).
//! `peft compare-eval` runs for the base model and after each method's training: eval loss and
//! perplexity over the held-out records, then the task metric of greedy answers. For labels the
//! answers are read off the same teacher-forced pass (`compare::task::forced_greedy`: one forward
//! per batch instead of one per generated token, so the whole eval set is affordable on a CPU;
//! only the wrong ones are generated, so predictions.jsonl shows the model's real answer);
//! free text is generated and scored by ROUGE-L. It prints one JSON object.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use peft::compare::task::{forced_greedy, split_response};
use peft::compare::TaskMetric;
use peft::data::{self, BatchConfig, DataStats, Encoded};
use peft::generate::{generate, SamplingConfig};
use peft::models::CausalLm;
use peft::tokenizer::TextTokenizer;
use peft::train::eval::EvalResult;
use peft::train::loss::token_loss_sum_lead;
use serde_json::json;

use super::common::{eval_batch_config, ModelArgs};
use super::data_options::DataOptions;

/// New tokens allowed beyond the longest reference and its end-of-turn token (free text).
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
    /// New tokens per generated free-text answer (default: the longest reference plus a few).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Generate label answers too, instead of reading them off the teacher-forced pass (slower;
    /// the same scores, which a test checks).
    #[arg(long)]
    pub generate: bool,
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

/// A held-out record with a response: its index, prompt ids and reference text.
struct Example {
    record: usize,
    prompt: Vec<u32>,
    reference: String,
}

/// The metric to score with, and every record that has a response.
fn task(
    args: &CompareEvalArgs,
    records: &[Encoded],
    tokenizer: &TextTokenizer,
) -> anyhow::Result<Option<(TaskMetric, Vec<Example>)>> {
    let mut examples = Vec::new();
    for (record, encoded) in records.iter().enumerate() {
        if let Some((prompt, response)) = split_response(encoded) {
            let reference = tokenizer.decode(&response, true)?.trim().to_string();
            examples.push(Example {
                record,
                prompt,
                reference,
            });
        }
    }
    if args.task_metric == "none" || examples.is_empty() {
        return Ok(None);
    }
    let metric = match args.task_metric.as_str() {
        "auto" => {
            let references: Vec<String> = examples.iter().map(|e| e.reference.clone()).collect();
            TaskMetric::choose(&references)
        }
        other => other.parse().map_err(anyhow::Error::msg)?,
    };
    Ok(Some((metric, examples)))
}

/// One forward pass per batch: the mean token loss (as `peft eval`) and every record's arg-max
/// token after each position (`[len]`, for teacher-forced greedy answers).
fn forward_pass(
    model: &CausalLm,
    records: &[Encoded],
    config: &BatchConfig,
) -> (EvalResult, Vec<Vec<u32>>) {
    let (mut sum, mut tokens, mut argmax) = (0.0, 0, Vec::new());
    for batch in data::batches(records, config, 0) {
        if batch.seq == 0 {
            // Records that encoded to nothing: no logits, no answers.
            argmax.extend(std::iter::repeat_n(Vec::new(), batch.batch));
            continue;
        }
        // The loss as `peft eval` (the first label counts behind virtual tokens); the answers
        // from the real positions only.
        let lead = model.loss_lead();
        let logits = model.forward_for_loss(&batch.inputs());
        let loss = token_loss_sum_lead(logits.clone(), &batch.labels, batch.batch, batch.seq, lead);
        sum += loss.into_scalar::<f32>() as f64;
        tokens += batch.targets_for(lead);
        let [b, t, v] = logits.dims();
        let best = logits
            .slice([0..b, lead..t, 0..v])
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default();
        argmax.extend(
            best.chunks(batch.seq)
                .map(|row| row.iter().map(|&t| t as u32).collect()),
        );
    }
    let loss = if tokens == 0 {
        f64::NAN
    } else {
        sum / tokens as f64
    };
    let result = EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
    };
    (result, argmax)
}

/// Labels: greedy answers read off the teacher-forced pass (`forced_greedy`). Where greedy
/// decoding leaves the reference, the forced pass knows only the first wrong token, so the model's
/// real answer is generated for `predictions.jsonl` (and scored: it may spell the label with
/// other tokens); only wrong answers cost a generation.
fn score_labels(
    forced: Forced,
    model: &CausalLm,
    examples: &[Example],
    tokenizer: &TextTokenizer,
) -> anyhow::Result<Vec<(String, f64)>> {
    let Forced {
        records,
        argmax,
        eos,
    } = forced;
    let sampling = SamplingConfig {
        greedy: true,
        eos_ids: eos.to_vec(),
        ..SamplingConfig::default()
    };
    examples
        .iter()
        .map(|e| {
            let best = argmax.get(e.record).map_or(&[][..], Vec::as_slice);
            let (tokens, whole) = forced_greedy(&records[e.record], best, eos).unwrap_or_default();
            let prediction = tokenizer.decode(&tokens, true)?.trim().to_string();
            let score = TaskMetric::ExactMatch.score(&prediction, &e.reference);
            if whole && score > 0.0 {
                return Ok((prediction, score));
            }
            let reference_len = tokenizer.encode(&e.reference, false)?.len();
            let sampling = SamplingConfig {
                max_new_tokens: reference_len + 1 + EXTRA_TEXT_TOKENS,
                ..sampling.clone()
            };
            let new =
                generate(model, &e.prompt, &sampling, &mut |_| {}).context("generation failed")?;
            let prediction = tokenizer.decode(&new, true)?.trim().to_string();
            let score = TaskMetric::ExactMatch.score(&prediction, &e.reference);
            Ok((prediction, score))
        })
        .collect()
}

/// The teacher-forced pass a label task is read from.
struct Forced<'a> {
    records: &'a [Encoded],
    argmax: &'a [Vec<u32>],
    eos: &'a [u32],
}

/// Greedy generation from each prompt (free text, or labels with `--generate`).
fn score_generated(
    args: &CompareEvalArgs,
    metric: TaskMetric,
    model: &CausalLm,
    examples: &[Example],
    eos: &[u32],
    tokenizer: &TextTokenizer,
) -> anyhow::Result<Vec<(String, f64)>> {
    let longest = examples
        .iter()
        .map(|e| tokenizer.encode(&e.reference, false).map(|ids| ids.len()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let sampling = SamplingConfig {
        max_new_tokens: args
            .max_new_tokens
            .unwrap_or((longest + 1 + EXTRA_TEXT_TOKENS).min(MAX_AUTO_NEW_TOKENS)),
        greedy: true,
        eos_ids: eos.to_vec(),
        ..SamplingConfig::default()
    };
    examples
        .iter()
        .map(|e| {
            let new =
                generate(model, &e.prompt, &sampling, &mut |_| {}).context("generation failed")?;
            let prediction = tokenizer.decode(&new, true)?.trim().to_string();
            let score = metric.score(&prediction, &e.reference);
            Ok((prediction, score))
        })
        .collect()
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
    let batch_config = eval_batch_config(&tokenizer, args.batch_size);
    let (loss, argmax) = forward_pass(&loaded.model, &records, &batch_config);
    let mut out = json!({"eval_loss": loss.loss, "eval_perplexity": loss.perplexity, "eval_tokens": loss.tokens, "records": records.len(), "task_metric": null, "task_score": null, "task_examples": 0});
    if let Some((metric, examples)) = task(&args, &records, &tokenizer)? {
        let mut eos = loaded.dir.eos_token_ids();
        eos.extend(tokenizer.eos_id());
        let scored = match metric {
            TaskMetric::ExactMatch if !args.generate => {
                let forced = Forced {
                    records: &records,
                    argmax: &argmax,
                    eos: &eos,
                };
                score_labels(forced, &loaded.model, &examples, &tokenizer)?
            }
            _ => score_generated(&args, metric, &loaded.model, &examples, &eos, &tokenizer)?,
        };
        let mut lines = String::new();
        for (e, (prediction, score)) in examples.iter().zip(&scored) {
            let prompt = tokenizer.decode(&e.prompt, false)?;
            let line = json!({"prompt": prompt, "reference": e.reference, "prediction": prediction, "score": score});
            let _ = writeln!(lines, "{line}");
        }
        if let Some(path) = &args.predictions {
            peft::io::write_atomic(path, lines.as_bytes())?;
        }
        let total: f64 = scored.iter().map(|(_, s)| s).sum();
        out["majority_share"] = json!(majority_share(
            examples.iter().map(|e| e.reference.as_str())
        ));
        out["task_metric"] = json!(metric.name());
        out["task_score"] = json!(total / examples.len() as f64);
        out["task_examples"] = json!(examples.len());
    }
    println!("{out}");
    eprintln!("{PEAK_RSS}{:.1}", peft::models::synthetic::peak_rss_mib());
    Ok(())
}
