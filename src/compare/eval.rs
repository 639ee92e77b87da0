//! The measuring side of `peft compare` (run by the hidden `peft compare-eval` child for the
//! base model and after each method's training): eval loss and perplexity over the held-out
//! records, the task metric of greedy answers, and the cross-entropy of general text for the
//! forgetting metric. For labels the answers are read off the same teacher-forced pass
//! (`task::forced_greedy`: one forward per batch instead of one per generated token, so the whole
//! eval set is affordable on a CPU; only the wrong ones are generated, so predictions.jsonl shows
//! the model's real answer); free text is generated and scored by ROUGE-L.

use crate::compare::task::{forced_greedy, split_response};
use crate::compare::{CompareError, TaskMetric};
use crate::data::{self, BatchConfig, Encoded};
use crate::generate::{generate, SamplingConfig};
use crate::models::CausalLm;
use crate::tokenizer::TextTokenizer;
use crate::train::eval::EvalResult;
use crate::train::loss::token_loss_sum_lead;

/// New tokens allowed beyond the longest reference and its end-of-turn token (free text).
const EXTRA_TEXT_TOKENS: usize = 8;
const MAX_AUTO_NEW_TOKENS: usize = 256;

/// How the task is scored.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// auto (exact-match for labels, ROUGE-L otherwise), exact-match, rouge-l or none.
    pub metric: String,
    /// New tokens per generated free-text answer (default: the longest reference plus a few).
    pub max_new_tokens: Option<usize>,
    /// Generate label answers too, instead of reading them off the teacher-forced pass.
    pub generate: bool,
}

/// One scored example.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub prompt: Vec<u32>,
    pub reference: String,
    pub prediction: String,
    pub score: f64,
}

/// The task part of an evaluation.
#[derive(Debug, Clone)]
pub struct TaskReport {
    pub metric: TaskMetric,
    pub examples: Vec<Scored>,
    /// The share of the most frequent reference: what always giving one label would score.
    pub majority_share: f64,
}

impl TaskReport {
    pub fn score(&self) -> f64 {
        self.examples.iter().map(|e| e.score).sum::<f64>() / self.examples.len().max(1) as f64
    }
}

/// A held-out record with a response: its index, prompt ids and reference text.
struct Example {
    record: usize,
    prompt: Vec<u32>,
    reference: String,
}

/// The metric to score with, and every record that has a response.
fn task(
    options: &TaskOptions,
    records: &[Encoded],
    tokenizer: &TextTokenizer,
) -> Result<Option<(TaskMetric, Vec<Example>)>, CompareError> {
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
    if options.metric == "none" || examples.is_empty() {
        return Ok(None);
    }
    let metric = match options.metric.as_str() {
        "auto" => {
            let references: Vec<String> = examples.iter().map(|e| e.reference.clone()).collect();
            TaskMetric::choose(&references)
        }
        other => other.parse().map_err(CompareError::Method)?,
    };
    Ok(Some((metric, examples)))
}

/// One forward pass per batch: the mean token loss (as `peft eval`) and every record's arg-max
/// token after each position (`[len]`, for teacher-forced greedy answers). On `text` records
/// (every token a label) the loss is the mean token cross-entropy of the text, as
/// transformers' `model(ids, labels=ids).loss` pooled over all tokens of all records.
pub fn forward_pass(
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
) -> Result<Vec<(String, f64)>, CompareError> {
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
            let new = generate(model, &e.prompt, &sampling, &mut |_| {})?;
            let prediction = tokenizer.decode(&new, true)?.trim().to_string();
            let score = TaskMetric::ExactMatch.score(&prediction, &e.reference);
            Ok((prediction, score))
        })
        .collect()
}

/// The teacher-forced pass a label task is read from: the records, their arg-max tokens from
/// [`forward_pass`], and the stop tokens.
#[derive(Clone, Copy)]
pub struct Forced<'a> {
    pub records: &'a [Encoded],
    pub argmax: &'a [Vec<u32>],
    pub eos: &'a [u32],
}

/// Greedy generation from each prompt (free text, or labels with `--generate`).
fn score_generated(
    options: &TaskOptions,
    metric: TaskMetric,
    model: &CausalLm,
    examples: &[Example],
    eos: &[u32],
    tokenizer: &TextTokenizer,
) -> Result<Vec<(String, f64)>, CompareError> {
    let longest = examples
        .iter()
        .map(|e| tokenizer.encode(&e.reference, false).map(|ids| ids.len()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let sampling = SamplingConfig {
        max_new_tokens: options
            .max_new_tokens
            .unwrap_or((longest + 1 + EXTRA_TEXT_TOKENS).min(MAX_AUTO_NEW_TOKENS)),
        greedy: true,
        eos_ids: eos.to_vec(),
        ..SamplingConfig::default()
    };
    examples
        .iter()
        .map(|e| {
            let new = generate(model, &e.prompt, &sampling, &mut |_| {})?;
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

/// Scores the task on the records of the teacher-forced pass; `None` when no record has a
/// response or the metric is `none`.
pub fn score_task(
    options: &TaskOptions,
    model: &CausalLm,
    forced: Forced,
    tokenizer: &TextTokenizer,
) -> Result<Option<TaskReport>, CompareError> {
    let Some((metric, examples)) = task(options, forced.records, tokenizer)? else {
        return Ok(None);
    };
    let scored = match metric {
        TaskMetric::ExactMatch if !options.generate => {
            score_labels(forced, model, &examples, tokenizer)?
        }
        _ => score_generated(options, metric, model, &examples, forced.eos, tokenizer)?,
    };
    let majority = majority_share(examples.iter().map(|e| e.reference.as_str()));
    let examples = examples
        .into_iter()
        .zip(scored)
        .map(|(e, (prediction, score))| Scored {
            prompt: e.prompt,
            reference: e.reference,
            prediction,
            score,
        })
        .collect();
    Ok(Some(TaskReport {
        metric,
        examples,
        majority_share: majority,
    }))
}
