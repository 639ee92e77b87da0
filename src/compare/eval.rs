//! The measuring side of `peft compare` (run by the hidden `peft compare-eval` child for the
//! base model and after each method's training): eval loss and perplexity over the held-out
//! records, the task metric of greedy answers, and the cross-entropy of general text for the
//! forgetting metric. For labels the answers are read off the same teacher-forced pass
//! (`task::forced_greedy`: one forward per batch instead of one per generated token, so the whole
//! eval set is affordable on a CPU; only the wrong ones are generated, so predictions.jsonl shows
//! the model's real answer); free text is generated and scored by ROUGE-L.

use std::collections::BTreeMap;

use crate::compare::task::{forced_greedy, split_response};
use crate::compare::{CompareError, TaskMetric};
use crate::data::{self, BatchConfig, Encoded};
use crate::generate::{generate, SamplingConfig};
use crate::models::CausalLm;
use crate::tokenizer::TextTokenizer;
use crate::train::eval::EvalResult;
use crate::train::loss::IGNORE_INDEX;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

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
    /// Label answers that cannot match and are generated in full all the same, the first ones
    /// in file order, so predictions.jsonl shows real answers (the rest are cut; see
    /// [`Scored::cut`]).
    pub shown_answers: usize,
}

/// One scored example.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub prompt: Vec<u32>,
    pub reference: String,
    pub prediction: String,
    pub score: f64,
    /// The prediction is greedy's answer only up to its first token that leaves the reference,
    /// not generated further: no continuation can match (`cannot_match`), so the score is 0.
    pub cut: bool,
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

    /// Exact match: right answers and examples per reference label, so a method that gives one
    /// label to everything shows as such (its accuracy alone can look like the majority share);
    /// `None` for ROUGE-L.
    pub fn right_per_label(&self) -> Option<BTreeMap<String, [usize; 2]>> {
        if self.metric != TaskMetric::ExactMatch {
            return None;
        }
        let mut per: BTreeMap<String, [usize; 2]> = BTreeMap::new();
        for e in &self.examples {
            let counts = per.entry(e.reference.trim().to_string()).or_default();
            counts[0] += usize::from(e.score >= 1.0);
            counts[1] += 1;
        }
        Some(per)
    }

    /// Sample standard deviation (n − 1) of the per-example scores: with the mean and n it gives
    /// a ROUGE-L mean its confidence interval; `None` below two examples.
    pub fn score_sd(&self) -> Option<f64> {
        crate::compare::stats::mean_sd(self.examples.iter().map(|e| e.score))
            .filter(|_| self.examples.len() > 1)
            .map(|(_, sd)| sd)
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
///
/// The output head runs only on the rows that are read ([`read_rows`]): those that predict a
/// label (the loss) and those whose arg-max a greedy answer needs (the position before each
/// label and each label itself). A label task reads a few rows of each ~150-token record, so
/// the [vocab × hidden] head, the log-softmax and the arg-max over the vocabulary, which on
/// SmolLM2 cost more than the decoder layers at every position, shrink to those rows. Other
/// arg-max entries are `u32::MAX` (no token). The numbers are those of the head on every row
/// (`tests/it/compare_eval.rs`).
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
        let (b, seq) = (batch.batch, batch.seq);
        let mut answers = vec![vec![u32::MAX; seq]; b];
        tokens += batch.targets_for(lead);
        let rows = read_rows(&batch.labels, b, seq, lead);
        if rows.is_empty() {
            argmax.extend(answers);
            continue;
        }
        let hidden = model.hidden_for_loss(&batch.inputs());
        let [_, t, h] = hidden.dims();
        let device = hidden.device();
        let n = rows.len();
        let index: Vec<i64> = rows
            .iter()
            .map(|r| (r.row * t + r.position) as i64)
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &device);
        let picked = hidden
            .reshape([b * t, h])
            .select(0, index)
            .reshape([1, n, h]);
        let logits = model.logits_of(picked);
        let vocab = logits.dims()[2];
        let logits = logits.reshape([n, vocab]);
        // Targets outside the vocabulary are ignored, as `token_loss_sum_lead` does.
        let (targets, weights): (Vec<i64>, Vec<f32>) = rows
            .iter()
            .map(|r| match r.target {
                Some(l) if (l as usize) < vocab => (l, 1.0),
                _ => (0, 0.0),
            })
            .unzip();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
        let weights = Tensor::<2>::from_data(TensorData::new(weights, [n, 1]), &device);
        let logp = log_softmax(logits.clone(), 1);
        let loss = (logp.gather(1, targets) * weights).sum().neg();
        sum += loss.into_scalar::<f32>() as f64;
        let best = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default();
        for (r, &token) in rows.iter().zip(&best) {
            if let Some(i) = r.answer {
                answers[r.row][i] = token as u32;
            }
        }
        argmax.extend(answers);
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

/// One row of the hidden states [batch, lead + seq, hidden] that the head runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRow {
    pub row: usize,
    /// Position in the `lead + seq` positions of the row.
    pub position: usize,
    /// The label it predicts (the loss), if any.
    pub target: Option<i64>,
    /// The real position whose arg-max it gives (`position - lead`), if an answer reads it.
    pub answer: Option<usize>,
}

/// The rows of [`forward_pass`]'s head, in order. Position `q` predicts label `q + 1 - lead`
/// (`token_loss_sum_lead`'s shift: with virtual tokens the last one predicts the first label);
/// `forced_greedy` reads the arg-max at real position `i` when label `i + 1` is learned (the
/// token it predicts) or label `i` is (the token after a response's last one).
pub fn read_rows(labels: &[i64], batch: usize, seq: usize, lead: usize) -> Vec<ReadRow> {
    let learned = |b: usize, i: usize| i < seq && labels[b * seq + i] != IGNORE_INDEX;
    let mut rows = Vec::new();
    for b in 0..batch {
        for position in 0..lead + seq {
            // The label this position predicts: index position + 1 - lead, when in the row.
            let label = (position + 1).checked_sub(lead).filter(|&i| i < seq);
            let target = label
                .filter(|&i| learned(b, i))
                .map(|i| labels[b * seq + i])
                .filter(|&l| l >= 0);
            let answer = position
                .checked_sub(lead)
                .filter(|&i| learned(b, i + 1) || learned(b, i));
            if target.is_some() || answer.is_some() {
                rows.push(ReadRow {
                    row: b,
                    position,
                    target,
                    answer,
                });
            }
        }
    }
    rows
}

/// Labels: greedy answers read off the teacher-forced pass (`forced_greedy`). Where greedy
/// decoding leaves the reference, the forced pass knows only the answer up to its first wrong
/// token. When that token is a stop token, that is the whole answer. When no continuation of it
/// can equal the reference ([`cannot_match`]), the score is 0 whatever follows: the answer is
/// generated in full only for the first `options.shown_answers` such examples (so
/// predictions.jsonl shows real answers) and kept cut for the rest. Otherwise (the model may
/// spell the label with other tokens) it is generated and scored. Generating every wrong answer
/// cost the base model of the README's main job a prefill and ~11 decoding steps per review,
/// more than the forward pass of the whole eval set.
fn score_labels(
    options: &TaskOptions,
    forced: Forced,
    model: &CausalLm,
    examples: &[Example],
    tokenizer: &TextTokenizer,
) -> Result<Vec<Answer>, CompareError> {
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
    let mut shown = 0;
    examples
        .iter()
        .map(|e| {
            let best = argmax.get(e.record).map_or(&[][..], Vec::as_slice);
            let (tokens, whole) = forced_greedy(&records[e.record], best, eos).unwrap_or_default();
            let prediction = tokenizer.decode(&tokens, true)?.trim().to_string();
            let score = TaskMetric::ExactMatch.score(&prediction, &e.reference);
            let stopped = tokens.last().is_some_and(|t| eos.contains(t));
            if (whole && score > 0.0) || stopped {
                return Ok(Answer::whole(prediction, score));
            }
            if cannot_match(tokenizer, &tokens, &e.reference) {
                if shown >= options.shown_answers {
                    return Ok(Answer {
                        prediction,
                        score: 0.0,
                        cut: true,
                    });
                }
                shown += 1;
            }
            let reference_len = tokenizer.encode(&e.reference, false)?.len();
            let sampling = SamplingConfig {
                max_new_tokens: reference_len + 1 + EXTRA_TEXT_TOKENS,
                ..sampling.clone()
            };
            let new = generate(model, &e.prompt, &sampling, &mut |_| {})?;
            let prediction = tokenizer.decode(&new, true)?.trim().to_string();
            let score = TaskMetric::ExactMatch.score(&prediction, &e.reference);
            Ok(Answer::whole(prediction, score))
        })
        .collect()
}

/// Whether no greedy answer that starts with `tokens` can equal `reference` under exact match
/// (`prediction.trim() == reference`); `false` when that is not certain. Decided on bytes, as a
/// byte-level BPE spells one CJK character with several tokens that each decode to U+FFFD
/// (SmolLM2's 正 and 负 differ in their first token, both `\u{FFFD}` on their own):
/// `decode(ids)` is the lossy UTF-8 of [`TextTokenizer::decode_bytes`], and the lossy text of
/// bytes F equals a reference without U+FFFD after trimming only if F is valid UTF-8 made of
/// whitespace, the reference's bytes and whitespace. So once the answer's bytes, leading ASCII
/// whitespace dropped, are neither a prefix of the reference's bytes nor start with them, no
/// continuation matches. An answer that starts with a byte that may open a non-ASCII whitespace
/// character (0xC2, 0xE1, 0xE2, 0xE3: U+0085, U+00A0, U+1680, U+2000…U+205F, U+3000) is left
/// undecided, and so is every tokenizer whose decoder is not byte-level.
pub fn cannot_match(tokenizer: &TextTokenizer, tokens: &[u32], reference: &str) -> bool {
    let reference = reference.as_bytes();
    if reference.is_empty() || String::from_utf8_lossy(reference).contains('\u{FFFD}') {
        return false;
    }
    let Some(bytes) = tokenizer.decode_bytes(tokens, true) else {
        return false;
    };
    // The ASCII characters `str::trim` drops (Unicode White_Space: \t \n \v \f \r and space).
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' '))
        .unwrap_or(bytes.len());
    let answer = &bytes[start..];
    match answer.first() {
        None | Some(0xC2 | 0xE1 | 0xE2 | 0xE3) => false,
        Some(_) => !reference.starts_with(answer) && !answer.starts_with(reference),
    }
}

/// One label or text answer: its prediction and score, and whether the prediction is cut (see
/// [`Scored::cut`]).
struct Answer {
    prediction: String,
    score: f64,
    cut: bool,
}

impl Answer {
    fn whole(prediction: String, score: f64) -> Self {
        Self {
            prediction,
            score,
            cut: false,
        }
    }
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
) -> Result<Vec<Answer>, CompareError> {
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
            Ok(Answer::whole(prediction, score))
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
            score_labels(options, forced, model, &examples, tokenizer)?
        }
        _ => score_generated(options, metric, model, &examples, forced.eos, tokenizer)?,
    };
    let majority = majority_share(examples.iter().map(|e| e.reference.as_str()));
    let examples = examples
        .into_iter()
        .zip(scored)
        .map(|(e, a)| Scored {
            prompt: e.prompt,
            reference: e.reference,
            prediction: a.prediction,
            score: a.score,
            cut: a.cut,
        })
        .collect();
    Ok(Some(TaskReport {
        metric,
        examples,
        majority_share: majority,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: i64 = IGNORE_INDEX;

    #[test]
    fn read_rows_are_the_rows_that_predict_a_label_or_give_an_answer_token() {
        // One row: prompt 0..2, response at 2 and 3.
        let labels = [X, X, 7, 8, X];
        let rows = read_rows(&labels, 1, 5, 0);
        let at = |p: usize| rows.iter().find(|r| r.position == p).copied();
        assert_eq!(rows.len(), 3);
        // Position 1 predicts label 2 (7) and gives the answer's first token.
        assert_eq!(
            at(1).map(|r| (r.target, r.answer)),
            Some((Some(7), Some(1)))
        );
        assert_eq!(
            at(2).map(|r| (r.target, r.answer)),
            Some((Some(8), Some(2)))
        );
        // The position of the last label gives the token after the response (a stop token?).
        assert_eq!(at(3).map(|r| (r.target, r.answer)), Some((None, Some(3))));
        // One virtual token in front: position q predicts label q, real position q - 1.
        let rows = read_rows(&labels, 1, 5, 1);
        let at = |p: usize| rows.iter().find(|r| r.position == p).copied();
        assert_eq!(
            at(2).map(|r| (r.target, r.answer)),
            Some((Some(7), Some(1)))
        );
        assert_eq!(at(4).map(|r| (r.target, r.answer)), Some((None, Some(3))));
        // A second row of the batch is indexed by its own row.
        let two = [X, 5, X, X, X, 6];
        let rows = read_rows(&two, 2, 3, 0);
        assert_eq!(
            rows.iter().map(|r| (r.row, r.position)).collect::<Vec<_>>(),
            [(0, 0), (0, 1), (1, 1), (1, 2)]
        );
    }
}
