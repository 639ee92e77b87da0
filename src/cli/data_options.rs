//! Data flags shared by `peft train` and `peft eval`.

use std::path::PathBuf;

use anyhow::Context;
use peft::data::{Builtin, DataConfig, Format, Template};
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DataOptions {
    /// Instruction data: JSONL (one record a line) or a JSON array file (required).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// alpaca, sharegpt, messages or text (default: detected from the fields).
    #[arg(long)]
    pub format: Option<String>,
    /// A built-in chat template (alpaca, chatml, llama2, llama3, chatglm3, qwen) instead of the
    /// tokenizer's own (default: the tokenizer's chat_template).
    #[arg(long)]
    pub template: Option<String>,
    /// A separate evaluation file (default: none).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Fraction of --data held out for evaluation (default: 0).
    #[arg(long)]
    pub eval_split: Option<f64>,
    /// Longest record in tokens; longer ones are cut (default: 1024).
    #[arg(long, visible_alias = "cutoff-len")]
    pub max_len: Option<usize>,
    /// Learn the prompt tokens too (default: off: only assistant turns).
    #[arg(long)]
    pub train_on_prompt: bool,
    /// Append EOS to `text` records (default: off).
    #[arg(long)]
    pub append_eos: bool,
    /// Skip malformed records (counted) instead of stopping at the first one (default: off).
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Pack short records into rows of this many tokens (default: no packing).
    #[arg(long)]
    pub pack: Option<usize>,
    /// Batch records of similar length together (default: off).
    #[arg(long)]
    pub group_by_length: bool,
    /// For a label task (a few distinct responses, e.g. 正面/负面): every batch holds each label
    /// equally; with --group-by-length, records of similar length share a batch. The batch size
    /// must be a multiple of the labels (default: off).
    #[arg(long, conflicts_with = "pack")]
    pub balance_labels: bool,
}

impl DataOptions {
    pub fn to_config(&self, seed: u64) -> anyhow::Result<DataConfig> {
        let data = self.data.clone().context("--data is required")?;
        let mut config = DataConfig::new(data);
        config.eval_data = self.eval_data.clone();
        config.eval_split = self.eval_split.unwrap_or(0.0);
        config.format = self
            .format
            .as_deref()
            .map(str::parse::<Format>)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        config.template = match self.template.as_deref() {
            None => Template::Tokenizer,
            Some(name) => Template::Builtin(name.parse::<Builtin>().map_err(anyhow::Error::msg)?),
        };
        config.max_len = self.max_len.unwrap_or(1024);
        config.train_on_prompt = self.train_on_prompt;
        config.append_eos = self.append_eos;
        config.skip_bad_records = self.skip_bad_records;
        config.seed = seed;
        Ok(config)
    }
}
