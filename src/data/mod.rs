//! The SFT data pipeline: a JSONL/JSON file → records → examples (alpaca, sharegpt, messages,
//! text) → chat-template segments → token ids with labels (−100 where nothing is learned) →
//! padded batches.
//!
//! ```text
//! let prepared = data::prepare(&DataConfig::new("train.jsonl"), &tokenizer)?;
//! let config = BatchConfig { batch_size: 4, seed: 42, shuffle: true, group_by_length: true, balance_labels: false, pack: None, pad_id: prepared.pad_id };
//! for batch in data::batches(&prepared.train, &config, epoch) { ... }
//! ```

pub mod balance;
pub mod batcher;
pub mod encode;
pub mod formats;
pub mod jsonl;
pub mod template;
pub mod truncate;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{DataError, LoadError, RecordProblem};
use crate::tokenizer::{Message, TextTokenizer};

pub use batcher::{batches, BatchConfig};
pub use encode::Encoded;
pub use formats::{Example, Format};
pub use template::{Builtin, Segment, Template};

use batcher::{shuffle, SplitMix64};
use encode::{encode_segments, encode_text, fit_text, Fit};

/// The random stream of the train/eval split (epochs use their own number as the stream).
const SPLIT_STREAM: u64 = u64::MAX;

/// What to read and how to encode it; the CLI's `--data`, `--eval-data`, ... flags.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    pub data: PathBuf,
    /// A separate eval file; otherwise `eval_split` of `data` is held out.
    pub eval_data: Option<PathBuf>,
    /// Fraction of `data` held out for eval, in [0, 1).
    pub eval_split: f64,
    /// Forced format; detected from the first record of each file when `None`.
    pub format: Option<Format>,
    pub template: Template,
    pub max_len: usize,
    pub train_on_prompt: bool,
    /// Append EOS to `text` records (transformers' `tokenizer(text)` adds none).
    pub append_eos: bool,
    pub skip_bad_records: bool,
    pub seed: u64,
}

impl DataConfig {
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            eval_data: None,
            eval_split: 0.0,
            format: None,
            template: Template::Tokenizer,
            max_len: 1024,
            train_on_prompt: false,
            append_eos: false,
            skip_bad_records: false,
            seed: 42,
        }
    }
}

/// Counts over all files read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Records read and encoded (kept + dropped).
    pub records: usize,
    /// Bad records skipped by `skip_bad_records`.
    pub skipped: usize,
    /// Records that cannot fit in `max_len` with their whole response.
    pub dropped: usize,
    /// Kept records whose context (or text) was cut.
    pub truncated: usize,
    /// Tokens of the kept records.
    pub tokens: usize,
    /// Tokens that count in the loss.
    pub targets: usize,
}

impl fmt::Display for DataStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records ({} skipped as bad, {} dropped as too long, {} truncated), {} tokens, {} learned",
            self.records, self.skipped, self.dropped, self.truncated, self.tokens, self.targets
        )
    }
}

#[derive(Debug, Clone)]
pub struct Prepared {
    pub train: Vec<Encoded>,
    pub eval: Vec<Encoded>,
    pub stats: DataStats,
    /// The tokenizer's pad token, else EOS, else 0 (padding is masked and ignored anyway).
    pub pad_id: i64,
}

/// Reads, encodes and splits the data of `config`.
pub fn prepare(config: &DataConfig, tokenizer: &TextTokenizer) -> Result<Prepared, DataError> {
    if !(0.0..1.0).contains(&config.eval_split) {
        return Err(DataError::Option(format!(
            "--eval-split {} must be in [0, 1)",
            config.eval_split
        )));
    }
    if config.eval_data.is_some() && config.eval_split > 0.0 {
        return Err(DataError::Option(
            "use either --eval-split or --eval-data, not both".into(),
        ));
    }
    let mut stats = DataStats::default();
    let train = encode_file(&config.data, config, tokenizer, &mut stats)?;
    let (train, eval) = match &config.eval_data {
        Some(path) => (train, encode_file(path, config, tokenizer, &mut stats)?),
        None => split(train, config.eval_split, config.seed)?,
    };
    if train.iter().map(Encoded::targets).sum::<usize>() == 0 {
        return Err(DataError::Option(format!(
            "{}: no training record has a token to learn (empty texts or responses, or a template that renders nothing?)",
            config.data.display()
        )));
    }
    let pad_id = tokenizer
        .pad_id()
        .or(tokenizer.eos_id())
        .map_or(0, i64::from);
    tracing::info!("data: {stats}; {} train, {} eval", train.len(), eval.len());
    Ok(Prepared {
        train,
        eval,
        stats,
        pad_id,
    })
}

/// Holds out `fraction` of `records` (at least one), chosen with `seed`; both keep file order.
fn split(
    records: Vec<Encoded>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<Encoded>, Vec<Encoded>), DataError> {
    if fraction <= 0.0 {
        return Ok((records, Vec::new()));
    }
    let n = records.len();
    let n_eval = ((fraction * n as f64).round() as usize).max(1);
    if n_eval >= n {
        return Err(DataError::Option(format!(
            "--eval-split {fraction} of {n} record(s) leaves nothing to train on"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut SplitMix64::new(seed, SPLIT_STREAM));
    let mut is_eval = vec![false; n];
    order[..n_eval].iter().for_each(|&i| is_eval[i] = true);
    let (eval, train): (Vec<_>, Vec<_>) = records.into_iter().zip(is_eval).partition(|(_, e)| *e);
    Ok((
        train.into_iter().map(|(r, _)| r).collect(),
        eval.into_iter().map(|(r, _)| r).collect(),
    ))
}

/// What every record of one file is encoded with.
struct FileContext<'a> {
    path: &'a Path,
    config: &'a DataConfig,
    tokenizer: &'a TextTokenizer,
    format: Format,
}

/// Reads and encodes one file, adding to `stats`. Also what `peft eval --data` needs.
pub fn encode_file(
    path: &Path,
    config: &DataConfig,
    tokenizer: &TextTokenizer,
    stats: &mut DataStats,
) -> Result<Vec<Encoded>, DataError> {
    let read = jsonl::read_records(path, config.skip_bad_records)?;
    let mut skipped = read.skipped.len();
    let Some(first) = read.records.first() else {
        return Err(DataError::Empty {
            path: path.into(),
            skipped,
        });
    };
    let format = match config.format {
        Some(format) => format,
        None => Format::detect(&first.value).map_err(|problem| DataError::Record {
            path: path.into(),
            line: first.line,
            problem,
        })?,
    };
    let ctx = FileContext {
        path,
        config,
        tokenizer,
        format,
    };
    check_template(&ctx)?;
    let (mut kept, mut dropped) = (Vec::new(), 0);
    let truncated_before = stats.truncated;
    for record in &read.records {
        match encode_record(&ctx, &record.value)? {
            Ok(Fit::Dropped) => dropped += 1,
            Ok(Fit::Whole(tokens)) => kept.push(tokens.into_encoded(config.train_on_prompt)),
            Ok(Fit::Truncated(tokens)) => {
                stats.truncated += 1;
                kept.push(tokens.into_encoded(config.train_on_prompt));
            }
            Err(problem) if config.skip_bad_records => {
                tracing::warn!("{}:{}: skipped: {problem}", path.display(), record.line);
                skipped += 1;
            }
            Err(problem) => {
                return Err(DataError::Record {
                    path: path.into(),
                    line: record.line,
                    problem,
                })
            }
        }
    }
    let truncated = stats.truncated - truncated_before;
    let encoded = kept.len() + dropped;
    if (truncated + dropped) * 20 > encoded {
        tracing::warn!(
            "{}: {truncated} of {encoded} records are longer than --max-len {} and were cut (the input after the instruction first, then the response tail), {dropped} dropped; raise --max-len to keep them whole",
            path.display(),
            config.max_len
        );
    }
    stats.records += read.records.len() - (skipped - read.skipped.len());
    stats.skipped += skipped;
    stats.dropped += dropped;
    stats.tokens += kept.iter().map(Encoded::len).sum::<usize>();
    stats.targets += kept.iter().map(Encoded::targets).sum::<usize>();
    match (kept.is_empty(), dropped) {
        (true, 0) => Err(DataError::Empty {
            path: path.into(),
            skipped,
        }),
        (true, _) => Err(DataError::AllDropped {
            path: path.into(),
            dropped,
            max_len: config.max_len,
        }),
        (false, _) => Ok(kept),
    }
}

/// A chat format needs a template, and `max_len` must exceed what the template adds around one
/// empty exchange; text needs room for one target.
fn check_template(ctx: &FileContext) -> Result<(), DataError> {
    let max_len = ctx.config.max_len;
    if ctx.format == Format::Text {
        if ctx.config.append_eos && ctx.tokenizer.eos_id().is_none() {
            return Err(DataError::Option(
                "--append-eos: the tokenizer names no EOS token".into(),
            ));
        }
        return match max_len {
            0 | 1 => Err(DataError::Option(format!(
                "--max-len {max_len} leaves no token to learn"
            ))),
            _ => Ok(()),
        };
    }
    if ctx.config.template == Template::Tokenizer && ctx.tokenizer.chat_template.is_none() {
        return Err(DataError::NoChatTemplate {
            path: ctx.path.into(),
            format: ctx.format.name(),
        });
    }
    let empty = [Message::new("user", ""), Message::new("assistant", "")];
    let segments =
        template::segments(ctx.config.template, ctx.tokenizer, &empty).map_err(|problem| {
            DataError::Option(format!(
                "the chat template fails on a minimal conversation: {problem}"
            ))
        })?;
    let overhead = encode_segments(ctx.tokenizer, &segments)?.ids.len();
    if max_len <= overhead {
        return Err(DataError::MaxLenBelowTemplate { max_len, overhead });
    }
    Ok(())
}

/// One record → tokens fitted to `max_len`; the outer error is fatal, the inner one is the
/// record's (skippable) problem.
fn encode_record(
    ctx: &FileContext,
    value: &serde_json::Value,
) -> Result<Result<Fit, RecordProblem>, LoadError> {
    let example = match ctx.format.convert(value) {
        Ok(example) => example,
        Err(problem) => return Ok(Err(problem)),
    };
    let max_len = ctx.config.max_len;
    match example {
        Example::Text(text) => {
            let eos = if ctx.config.append_eos {
                ctx.tokenizer.eos_id()
            } else {
                None
            };
            Ok(Ok(fit_text(
                encode_text(ctx.tokenizer, &text, eos)?,
                max_len,
            )))
        }
        Example::Chat(messages) => {
            let segments = match template::segments(ctx.config.template, ctx.tokenizer, &messages) {
                Ok(segments) => segments,
                Err(problem) => return Ok(Err(problem)),
            };
            let tokens = encode_segments(ctx.tokenizer, &segments)?;
            if tokens.ids.len() <= max_len {
                return Ok(Ok(Fit::Whole(tokens)));
            }
            let input = messages.iter().rev().find(|m| m.role == "user");
            let input = input.map(|m| m.content.as_str());
            Ok(Ok(truncate::fit_chat_task(
                ctx.tokenizer,
                &segments,
                input,
                max_len,
            )?))
        }
    }
}
