//! `peft eval`: mean token loss and perplexity of a model (and adapters) over a dataset.

use peft::data::{self, DataStats};
use peft::tokenizer::TextTokenizer;
use peft::train::eval::evaluate_with;
use peft::train::log::Console;

use super::common::{eval_batch_config, ModelArgs};
use super::data_options::DataOptions;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataOptions,
    /// Records per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Score only the first N records of --data (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object {"loss", "perplexity", "tokens", "records"} (default: off).
    #[arg(long)]
    pub json: bool,
}

/// The data flags `peft eval` shares with `train` but cannot honour: an error, not a silent
/// no-op.
fn reject_train_only(d: &DataOptions) -> anyhow::Result<()> {
    let given = [
        ("--eval-data", d.eval_data.is_some()),
        ("--eval-split", d.eval_split.is_some()),
        ("--pack", d.pack.is_some()),
        ("--group-by-length", d.group_by_length),
        ("--balance-labels", d.balance_labels),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        anyhow::bail!("{flag} is a training option; `peft eval` scores every record of --data in order (use --data for the file to score, --limit N for its first N records)");
    }
    Ok(())
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    super::validate::data_options(&args.data)?;
    reject_train_only(&args.data)?;
    if args.batch_size == 0 || args.limit == Some(0) {
        anyhow::bail!("--batch-size and --limit must be at least 1");
    }
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let config = args.data.to_config(0)?;
    let mut stats = DataStats::default();
    let mut records = data::encode_file(&config.data, &config, &tokenizer, &mut stats)?;
    if let Some(n) = args.limit {
        records.truncate(n);
    }
    let loaded = args.model.load()?;
    // Virtual tokens / prefixes of a prompt-learning adapter take context positions too.
    let (extra, context) = (
        loaded.model.prompt_positions(),
        loaded.model.max_positions(),
    );
    let longest = records.iter().map(|r| r.len()).max().unwrap_or(0);
    if extra > 0 && longest + extra > context {
        anyhow::bail!("the longest record ({longest} tokens) plus the adapter's {extra} virtual tokens exceeds the model's context of {context} positions; lower --max-len");
    }
    let batch_config = eval_batch_config(&tokenizer, args.batch_size);
    let batches = data::batches(&records, &batch_config, 0);
    let console = Console::new(batches.len(), 0, "batches");
    let result = evaluate_with(&loaded.model, &batches, &mut |k| {
        console.progress(k, "batches")
    });
    console.clear();
    if result.tokens == 0 {
        anyhow::bail!("{}: no target tokens to evaluate", config.data.display());
    }
    if args.json {
        let out = serde_json::json!({"loss": result.loss, "perplexity": result.perplexity, "tokens": result.tokens, "records": records.len()});
        println!("{out}");
    } else {
        println!(
            "loss {:.4}  perplexity {:.3}  ({} tokens, {} records)",
            result.loss,
            result.perplexity,
            result.tokens,
            records.len()
        );
    }
    Ok(())
}
