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
    /// (required); or a Llama or ChatGLM GGUF file, read in place (its quantized weights stay quantized).
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
    /// Arithmetic of the frozen-weight products: f32 (default), or bf16 (x rounded to bf16 and
    /// multiplied by the bf16 weights with AVX512-BF16, accumulated in f32, as PyTorch's CPU bf16
    /// autocast: faster, less exact). bf16 implies --base-dtype bf16 and needs a CPU with
    /// avx512_bf16.
    #[arg(long, value_enum, default_value = "f32")]
    pub compute_dtype: ComputeDtypeArg,
}

/// `--compute-dtype`: what the frozen-weight products compute in.
#[derive(
    clap::ValueEnum, serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq,
)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtypeArg {
    #[default]
    F32,
    Bf16,
}

/// Checks `--compute-dtype` against the other base options, the device and this CPU, and gives
/// the base dtype to load (bf16 compute implies a bf16 base) with the compute dtype to set.
pub fn resolve_compute(
    compute: ComputeDtypeArg,
    base: BaseDtype,
    quantize: Option<QuantizeBase>,
    device: &str,
) -> anyhow::Result<(BaseDtype, peft::models::linear::ComputeDtype)> {
    use peft::models::linear::ComputeDtype;
    match compute {
        ComputeDtypeArg::F32 => Ok((base, ComputeDtype::F32)),
        ComputeDtypeArg::Bf16 => {
            if quantize.is_some() {
                anyhow::bail!("--compute-dtype bf16 multiplies bf16-stored weights; it does not combine with --quantize-base (drop one of them)");
            }
            if matches!(base, BaseDtype::F16) {
                anyhow::bail!("--compute-dtype bf16 needs bf16-stored weights; it does not combine with --base-dtype f16 (use --base-dtype bf16, which it implies)");
            }
            if !peft::kernels::is_flex(&peft::device::parse_device(device)?) {
                anyhow::bail!("--compute-dtype bf16 runs on the CPU backend only (--device cpu or flex), not --device {device}");
            }
            if !peft::kernels::bf16_gemm::supported() {
                anyhow::bail!("--compute-dtype bf16 needs a CPU with AVX512-BF16 (avx512_bf16 in /proc/cpuinfo), which this one lacks; keep the default --compute-dtype f32 (--base-dtype bf16 still halves the base's memory)");
            }
            Ok((BaseDtype::Bf16, ComputeDtype::Bf16))
        }
    }
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
        let (base_dtype, compute) = resolve_compute(
            self.compute_dtype,
            self.base_dtype,
            self.quantize_base,
            &self.device,
        )?;
        let device = peft::device::parse_device(&self.device)?;
        let dir = ModelDir::open(&self.model)?;
        let mut model = dir
            .load_base(
                &device,
                base_dtype.dtype(),
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
        model.set_compute_dtype(compute);
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
        balance_labels: false,
        pack: None,
        pad_id: tokenizer
            .pad_id()
            .or(tokenizer.eos_id())
            .map_or(0, i64::from),
    }
}
