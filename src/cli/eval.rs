//! `peft eval`: mean token loss and perplexity of a model (and adapters) over a dataset.

use peft::data::{self, DataStats};
use peft::tokenizer::TextTokenizer;
use peft::train::eval::evaluate;

use super::common::{eval_batch_config, ModelArgs};
use super::data_options::DataOptions;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataOptions,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Print one JSON object {"loss", "perplexity", "tokens", "records"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    super::validate::data_options(&args.data)?;
    let tokenizer = TextTokenizer::load(&args.model.model)?;
    let config = args.data.to_config(0)?;
    let mut stats = DataStats::default();
    let records = data::encode_file(&config.data, &config, &tokenizer, &mut stats)?;
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
    let result = evaluate(&loaded.model, &batches);
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
