//! Options shared by the commands that load a model: `--model`, `--adapter` (repeatable) and
//! `--device`.

use std::path::PathBuf;

use anyhow::Context;
use peft::models::{CausalLm, ModelDir};
use peft::peft::format::load_adapter;
use peft::peft::walker::InjectionReport;
use peft::peft::AdapterConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model folder: config.json, model.safetensors or shards, tokenizer.json
    /// (required); or a Llama GGUF file, read in place (its quantized weights stay quantized).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors). Repeat to stack
    /// adapters: each earlier one is folded into the weights before the next is attached
    /// (default: none, the base model).
    #[arg(long)]
    pub adapter: Vec<PathBuf>,
    /// Compute device: cpu (the default CPU backend), flex, ndarray, or wgpu (needs
    /// `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Storage dtype of the frozen base's linear and embedding weights: bf16/f16 halve the
    /// memory of the frozen base (compute stays f32; adapters and norms stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub base_dtype: BaseDtype,
    /// Quantize the frozen base's linear weights as they load (QLoRA-style; default: none):
    /// int8 (ggml Q8_0 blocks), int4 (Q4_0) or nf4 (bitsandbytes NF4, as a PEFT QLoRA base).
    /// Embeddings keep --base-dtype; norms and adapters stay f32.
    #[arg(long, value_enum)]
    pub quantize_base: Option<QuantizeBase>,
}

/// `--quantize-base`: the block scheme of a quantized frozen base.
#[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum QuantizeBase {
    Int8,
    Int4,
    Nf4,
}

impl QuantizeBase {
    pub fn scheme(self) -> peft::quant::BaseQuant {
        match self {
            Self::Int8 => peft::quant::BaseQuant::Int8,
            Self::Int4 => peft::quant::BaseQuant::Int4,
            Self::Nf4 => peft::quant::BaseQuant::Nf4,
        }
    }
}

/// `--base-dtype`: how the frozen base weights are stored in memory.
#[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl BaseDtype {
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::Bf16 => burn::tensor::DType::BF16,
            Self::F16 => burn::tensor::DType::F16,
        }
    }
}

pub struct Loaded {
    pub dir: ModelDir,
    pub model: CausalLm,
    pub adapters: Vec<(PathBuf, AdapterConfig, InjectionReport)>,
}

impl ModelArgs {
    /// Loads the model (inference only: no autodiff) and its adapters.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let device = peft::device::parse_device(&self.device)?;
        let dir = ModelDir::open(&self.model)?;
        let mut model = dir
            .load_base(
                &device,
                self.base_dtype.dtype(),
                self.quantize_base.map(QuantizeBase::scheme),
            )
            .with_context(|| format!("loading {}", self.model.display()))?;
        let mut adapters = Vec::new();
        for (i, path) in self.adapter.iter().enumerate() {
            if i > 0 {
                for (_, linear) in model.linears_mut() {
                    peft::peft::fold::fold(linear);
                }
            }
            let (config, report) = load_adapter(&mut model, dir.model_type(), path, &device)
                .with_context(|| format!("loading adapter {}", path.display()))?;
            adapters.push((path.clone(), config, report));
        }
        Ok(Loaded {
            dir,
            model,
            adapters,
        })
    }
}

/// Batches for evaluation: in order, no packing, padded with the tokenizer's pad (or EOS) id.
pub fn eval_batch_config(
    tokenizer: &peft::tokenizer::TextTokenizer,
    batch_size: usize,
) -> peft::data::BatchConfig {
    peft::data::BatchConfig {
        batch_size: batch_size.max(1),
        seed: 0,
        shuffle: false,
        group_by_length: false,
        pack: None,
        pad_id: tokenizer
            .pad_id()
            .or(tokenizer.eos_id())
            .map_or(0, i64::from),
    }
}
