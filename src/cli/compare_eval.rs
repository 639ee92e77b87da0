//! The child side of `peft compare`, two hidden subcommands. `peft compare-train` is `peft train`
//! that reports its own peak RSS (`peak_rss_mib: X` on stderr, failures included).
//! `peft compare-eval` loads the model (and adapter) and runs `peft::compare::eval` on the
//! held-out records and the forgetting set; it prints one JSON object.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use peft::compare::child::PEAK_RSS;
use peft::compare::eval::{forward_pass, score_task, Forced, TaskOptions};
use peft::data::{self, DataConfig, DataStats, Encoded, Format};
use peft::tokenizer::TextTokenizer;
use serde_json::json;

use super::common::{eval_batch_config, ModelArgs};
use super::data_options::DataOptions;

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
    /// Wrong label answers that cannot match, generated in full all the same for
    /// predictions.jsonl (the first N; the others stop at their first wrong token, marked
    /// `"cut": true`).
    #[arg(long, default_value_t = 5)]
    pub shown_answers: usize,
    /// Write one JSON line per example: prompt, reference, prediction, score.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// General text (`{"text": ...}` records): its mean token cross-entropy is `general_ce`.
    #[arg(long)]
    pub forgetting_data: Option<PathBuf>,
}

/// `peft train`, then this process's peak resident memory (VmHWM) for the parent to read.
pub fn train(args: super::train::TrainArgs) -> anyhow::Result<()> {
    let result = super::train::run_cmd(args);
    eprintln!("{PEAK_RSS}{:.1}", peft::models::synthetic::peak_rss_mib());
    result
}

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

/// The forgetting set as `text` records (every token learned), cut at the data's `--max-len`.
fn general_records(
    args: &CompareEvalArgs,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<Option<Vec<Encoded>>> {
    let Some(path) = &args.forgetting_data else {
        return Ok(None);
    };
    let mut config = DataConfig::new(path);
    config.format = Some(Format::Text);
    config.max_len = args.data.max_len.unwrap_or(config.max_len);
    let records = data::encode_file(path, &config, tokenizer, &mut DataStats::default())?;
    Ok(Some(records))
}

pub fn run(args: CompareEvalArgs) -> anyhow::Result<()> {
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let records = eval_records(&args, &tokenizer)?;
    let general = general_records(&args, &tokenizer)?;
    let loaded = args.model.load()?;
    let batch_config = eval_batch_config(&tokenizer, args.batch_size);
    let (loss, argmax) = forward_pass(&loaded.model, &records, &batch_config);
    let mut out = json!({"eval_loss": loss.loss, "eval_perplexity": loss.perplexity, "eval_tokens": loss.tokens, "records": records.len(), "task_metric": null, "task_score": null, "task_examples": 0});
    if let Some(general) = &general {
        let (ce, _) = forward_pass(&loaded.model, general, &batch_config);
        out["general_ce"] = json!(ce.loss);
        out["general_tokens"] = json!(ce.tokens);
    }
    let options = TaskOptions {
        metric: args.task_metric.clone(),
        max_new_tokens: args.max_new_tokens,
        generate: args.generate,
        shown_answers: args.shown_answers,
    };
    let mut eos = loaded.dir.eos_token_ids();
    eos.extend(tokenizer.eos_id());
    let forced = Forced {
        records: &records,
        argmax: &argmax,
        eos: &eos,
    };
    let report = score_task(&options, &loaded.model, forced, &tokenizer)?;
    if let Some(report) = report {
        let mut lines = String::new();
        for e in &report.examples {
            let prompt = tokenizer.decode(&e.prompt, false)?;
            let line = json!({"prompt": prompt, "reference": e.reference, "prediction": e.prediction, "score": e.score, "cut": e.cut});
            let _ = writeln!(lines, "{line}");
        }
        if let Some(path) = &args.predictions {
            peft::io::write_atomic(path, lines.as_bytes())?;
        }
        out["majority_share"] = json!(report.majority_share);
        out["task_metric"] = json!(report.metric.name());
        out["task_score"] = json!(report.score());
        out["task_examples"] = json!(report.examples.len());
        out["task_score_sd"] = json!(report.score_sd());
        out["right_per_label"] = json!(report.right_per_label());
    }
    println!("{out}");
    eprintln!("{PEAK_RSS}{:.1}", peft::models::synthetic::peak_rss_mib());
    Ok(())
}
