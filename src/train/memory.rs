//! The memory a training run will need, estimated from `config.json`, the adapter config and the
//! batch before anything is loaded (issue 17 item 6): frozen weights in their storage format,
//! trainable tensors with their gradients and AdamW moments, activations for one batch (with and
//! without `--gradient-checkpointing`) and the process's fixed cost.
//!
//! Activations: what the forward keeps per decoder layer and token, read from the ops' backward
//! states (f32, batch × seq rows each):
//! - the layer input `x` (kept by `input_layernorm`, `kernels::rms_norm`) and its normed output
//!   (kept by the q/k/v projections): 2·hidden;
//! - rotated q, k, v and the attention output (FlashAttention keeps q, k, v, O and the LSE;
//!   `kernels::attention`; its output is a free view for `o_proj`): 2·q_dim + 2·kv_dim;
//! - the post-attention residual and its normed output: 2·hidden;
//! - the MLP's gate and up projections and the SwiGLU output (`kernels::swiglu`, `down_proj`'s
//!   input): 3·intermediate (ChatGLM's fused `dense_h_to_4h` is the same 2 + 1);
//! - each adapter's low-rank `x·A` (r per adapted projection, small).
//!
//! With checkpointing a layer keeps only `x`; the backward re-runs one layer at a time, so one
//! layer's activations (and the gradients flowing through it) exist at once on top.
//! The fused loss (`kernels::cross_entropy`) never holds `[rows, vocab]` logits: it keeps the
//! hidden gradient and works through `CHUNK`-row blocks of logits per thread.

use crate::models::loaded::Family;
use crate::models::ModelDir;

pub use super::memory_adapter::{adapter_footprint, AdapterFootprint};
pub use super::memory_check::TooLarge;

/// How the frozen base stores a weight matrix. The quantized formats are the block layouts of
/// `--quantize-base` (34 bytes per 32 int8 values with an f16 scale, as GGUF's Q8_0; 18 bytes per
/// 32 int4 values, as Q4_0; NF4 as bitsandbytes: half a byte per value plus an f32 absmax per 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    F32,
    Bf16,
    F16,
    Int8,
    Int4,
    Nf4,
    /// A GGUF file's own blocks, kept in place: `bytes` per `values` weights, summed over the
    /// file's block-quantized matrices (a Q4_K_M mix of Q4_K and Q6_K measures as its average).
    Blocks {
        bytes: u64,
        values: u64,
    },
}

impl WeightStorage {
    /// Bytes of `values` weights in this format (whole blocks).
    pub fn bytes(self, values: u64) -> u64 {
        match self {
            Self::F32 => values.saturating_mul(4),
            Self::Bf16 | Self::F16 => values.saturating_mul(2),
            Self::Int8 => values.div_ceil(32) * 34,
            Self::Int4 => values.div_ceil(32) * 18,
            Self::Nf4 => values.div_ceil(2) + values.div_ceil(64) * 4,
            Self::Blocks { bytes, values: per } => {
                let whole = u128::from(values) * u128::from(bytes);
                u64::try_from(whole.div_ceil(u128::from(per.max(1)))).unwrap_or(u64::MAX)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
            Self::Nf4 => "nf4",
            Self::Blocks { .. } => "the GGUF file's blocks",
        }
    }
}

/// The sizes the estimate needs from `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    /// heads × head_dim
    pub q_dim: u64,
    /// kv heads × head_dim
    pub kv_dim: u64,
    pub vocab: u64,
    /// The output head is the embedding (no weights of its own).
    pub tied: bool,
}

impl ModelShape {
    pub fn from_dir(dir: &ModelDir) -> Self {
        let u = |v: usize| v as u64;
        match &dir.family {
            Family::Llama(c) => Self {
                hidden: u(c.hidden_size),
                intermediate: u(c.intermediate_size),
                layers: u(c.num_hidden_layers),
                q_dim: u(c.num_attention_heads * c.head_dim),
                kv_dim: u(c.num_key_value_heads * c.head_dim),
                vocab: u(c.vocab_size),
                tied: c.tie_word_embeddings,
            },
            Family::ChatGlm(c) => Self {
                hidden: u(c.hidden_size),
                intermediate: u(c.ffn_hidden_size),
                layers: u(c.num_layers),
                q_dim: u(c.num_attention_heads * c.kv_channels),
                kv_dim: u(c.kv_groups * c.kv_channels),
                vocab: u(c.padded_vocab_size),
                tied: false,
            },
        }
    }

    /// Weights of the decoder layers' projections.
    pub fn linear_parameters(&self) -> u64 {
        let (h, i) = (self.hidden, self.intermediate);
        let attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h;
        self.layers * (attn + 3 * h * i)
    }

    /// Embedding plus an untied output head.
    pub fn embedding_parameters(&self) -> u64 {
        let head = if self.tied { 0 } else { 1 };
        (1 + head) * self.vocab * self.hidden
    }

    /// Floats one decoder layer keeps per token for the backward (see the module docs).
    pub fn kept_per_token(&self) -> u64 {
        4 * self.hidden + 2 * self.q_dim + 2 * self.kv_dim + 3 * self.intermediate
    }
}

/// One run's settings, as the estimate sees them.
#[derive(Debug, Clone, Copy)]
pub struct MemoryPlan {
    pub shape: ModelShape,
    /// The projections' weights (`--base-dtype`, or `--quantize-base`).
    pub linear_storage: WeightStorage,
    /// Embedding and untied head (kept in the base dtype when the projections are quantized).
    pub embedding_storage: WeightStorage,
    pub adapter: AdapterFootprint,
    pub batch: u64,
    pub seq: u64,
    pub checkpointing: bool,
}

/// The estimate, in bytes per part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// Trainable tensors, their gradients and AdamW's two moments (4 × f32 each).
    pub trainable: u64,
    pub activations: u64,
    /// The process before any model: code, runtime, tokenizer, data, allocator slack.
    pub overhead: u64,
}

/// The process's fixed cost: `peft train` on the tiny fixture models peaks at 20–21 MiB with
/// weights and activations under 1 MiB; a real tokenizer and data set add some (SmolLM2's
/// 1.5 MB tokenizer.json and the 2000-review set: about 40 MiB in all).
pub const OVERHEAD: u64 = 40 << 20;
/// The share of the listed per-layer floats the measured peaks hold: 0.85, fitted over these
/// measured runs (`peft train`, peak RSS, 2-core machine under other load):
///
/// | run (batch 4 × 256)                                  | measured  | estimate  | error |
/// |------------------------------------------------------|-----------|-----------|-------|
/// | SmolLM2-135M f32, LoRA r8 all-linear, dropout 0       | 1.30 GiB  | 1.41 GiB  | +8%   |
/// | same, --gradient-checkpointing                        | 0.67 GiB  | 0.68 GiB  | +1%   |
/// | SmolLM2-135M, adapters/lora.json (dropout 0.05)       | 1.91 GiB  | 1.98 GiB  | +4%   |
/// | same, --gradient-checkpointing                        | 0.69 GiB  | 0.70 GiB  | +1%   |
/// | synthetic Llama 0.5B bf16, LoRA r8 q/v                | 2.30 GiB  | 2.18 GiB  | −5%   |
/// | same, --gradient-checkpointing                        | 1.26 GiB  | 1.17 GiB  | −7%   |
///
/// The share differs between shapes (0.73 alone on SmolLM2, 0.96 on the 0.5B): burn's graph
/// frees a node's state once its consumers are done, so how much of the list is alive at the
/// peak depends on the layer's proportions. In per mille, to stay in integers.
pub const KEPT_PER_MILLE: u64 = 850;

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.trainable)
            .saturating_add(self.activations)
            .saturating_add(self.overhead)
    }

    /// The settings that size the largest part, for a refusal.
    pub fn largest_part_settings(&self, adapter: &AdapterFootprint) -> &'static str {
        if self.weights >= self.trainable && self.weights >= self.activations {
            "the model's sizes (hidden_size, intermediate_size, num_hidden_layers, vocab_size in config.json) and --base-dtype"
        } else if self.trainable >= self.activations {
            adapter.setting
        } else {
            "--batch-size and --max-len (or --pack)"
        }
    }
}

impl MemoryPlan {
    pub fn estimate(&self) -> MemoryEstimate {
        let s = &self.shape;
        let norms = 4 * s.hidden * (2 * s.layers + 1);
        let weights = self.linear_storage.bytes(s.linear_parameters())
            + self.embedding_storage.bytes(s.embedding_parameters())
            + norms;
        MemoryEstimate {
            weights,
            trainable: self.adapter.trainable.saturating_mul(16),
            activations: self.activations(self.checkpointing),
            overhead: OVERHEAD,
        }
    }

    /// Activation bytes for one micro-batch.
    pub fn activations(&self, checkpointing: bool) -> u64 {
        let s = &self.shape;
        // Saturating: batch, length and adapter sizes come from flags (an absurd one is refused
        // as too large, never wrapped into a small number).
        let bytes = self.batch.saturating_mul(self.seq).saturating_mul(4);
        let floats = (s.kept_per_token() * KEPT_PER_MILLE / 1000)
            .saturating_add(self.adapter.kept_per_token_layer);
        let layer = bytes.saturating_mul(floats);
        let kept = match checkpointing {
            // Every layer's input, plus the one layer being recomputed.
            true => bytes
                .saturating_mul(s.hidden * s.layers)
                .saturating_add(layer),
            false => layer.saturating_mul(s.layers),
        };
        // Embedding output, final norm input and output, the loss's hidden gradient. (The loss's
        // per-thread `CHUNK × vocab` logits blocks did not show in the measured peaks.)
        kept.saturating_add(bytes.saturating_mul(4 * s.hidden))
    }
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = weights {} + trainable (params, grads, AdamW) {} + activations {} + process {}",
            gib(self.total()),
            gib(self.weights),
            gib(self.trainable),
            gib(self.activations),
            gib(self.overhead)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelShape {
        ModelShape {
            hidden: 64,
            intermediate: 128,
            layers: 2,
            q_dim: 64,
            kv_dim: 32,
            vocab: 256,
            tied: false,
        }
    }

    #[test]
    fn quantized_formats_take_their_block_sizes() {
        assert_eq!(WeightStorage::Int8.bytes(64), 68);
        assert_eq!(WeightStorage::Int4.bytes(64), 36);
        assert_eq!(WeightStorage::Nf4.bytes(128), 64 + 8);
        assert_eq!(WeightStorage::Bf16.bytes(10), 20);
        assert_eq!(WeightStorage::F32.bytes(10), 40);
        // Q4_K_M-like: 144 bytes per 256 values on average.
        let blocks = WeightStorage::Blocks {
            bytes: 144,
            values: 256,
        };
        assert_eq!(blocks.bytes(512), 288);
    }

    #[test]
    fn the_estimate_of_a_tiny_config_is_the_formula() {
        let plan = MemoryPlan {
            shape: tiny(),
            linear_storage: WeightStorage::F32,
            embedding_storage: WeightStorage::F32,
            adapter: AdapterFootprint {
                trainable: 1000,
                kept_per_token_layer: 16,
                setting: "`r`",
            },
            batch: 2,
            seq: 8,
            checkpointing: false,
        };
        let e = plan.estimate();
        let linear = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128);
        let embed = 2 * 256 * 64;
        assert_eq!(e.weights, 4 * (linear + embed) + 4 * 64 * 5);
        assert_eq!(e.trainable, 16_000);
        let per_token = (4 * 64 + 2 * 64 + 2 * 32 + 3 * 128) * KEPT_PER_MILLE / 1000 + 16;
        let ends = 4 * 16 * 64 * 4;
        assert_eq!(e.activations, 4 * 16 * per_token * 2 + ends);
        let ckpt = plan.activations(true);
        assert_eq!(ckpt, 4 * 16 * 64 * 2 + 4 * 16 * per_token + ends);
        assert_eq!(
            e.total(),
            e.weights + e.trainable + e.activations + OVERHEAD
        );
    }

    #[test]
    fn a_plan_over_the_available_memory_is_refused_with_the_options_that_fit() {
        let shape = ModelShape {
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            q_dim: 4096,
            kv_dim: 4096,
            vocab: 32000,
            tied: false,
        };
        let plan = MemoryPlan {
            shape,
            linear_storage: WeightStorage::F32,
            embedding_storage: WeightStorage::F32,
            adapter: AdapterFootprint {
                trainable: 4_194_304,
                kept_per_token_layer: 16,
                setting: "`r`",
            },
            batch: 1,
            seq: 256,
            checkpointing: false,
        };
        let total = plan.estimate().total();
        let err = plan.check(total - (2 << 30)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--base-dtype bf16"), "{msg}");
        assert!(msg.contains("--quantize-base int4"), "{msg}");
        assert!(msg.contains("--ignore-memory-estimate"), "{msg}");
        assert!(err.fitting.iter().all(|(_, t)| *t <= total - (2 << 30)));
        assert!(plan.check(total).is_ok());
    }

    #[test]
    fn checkpointing_saves_activations_on_a_deep_model() {
        let shape = ModelShape {
            layers: 32,
            ..tiny()
        };
        let plan = MemoryPlan {
            shape,
            linear_storage: WeightStorage::Bf16,
            embedding_storage: WeightStorage::Bf16,
            adapter: AdapterFootprint::default(),
            batch: 4,
            seq: 256,
            checkpointing: true,
        };
        assert!(plan.activations(true) * 3 < plan.activations(false));
    }
}
