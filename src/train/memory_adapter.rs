//! What an adapter adds to a training run's memory (`train::memory`), from the module shapes
//! and the adapter config alone: trainable parameters and the per-layer activations it keeps.

use super::memory::ModelShape;
use crate::error::AdapterError;
use crate::models::loaded::Family;
use crate::models::ModelDir;
use crate::peft::prompt::{PromptKind, PromptOptions};
use crate::peft::walker::{default_targets, lora_spec, Spec};
use crate::peft::{AdapterConfig, Method};

/// What an adapter adds, from the module shapes alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterFootprint {
    /// Trainable parameters (adapter tensors, prompt encoders).
    pub trainable: u64,
    /// Floats kept per token and layer: each adapted projection's `x·A` (r), and with a LoRA
    /// dropout the dropped input (`in`; its mask is freed, as measured).
    pub kept_per_token_layer: u64,
    /// The settings that size `trainable`, named in a refusal.
    pub setting: &'static str,
}

/// What an adapter config will add, from the module shapes alone (no weights read).
pub fn adapter_footprint(
    dir: &ModelDir,
    config: &AdapterConfig,
) -> Result<AdapterFootprint, AdapterError> {
    let shape = ModelShape::from_dir(dir);
    if let Method::PromptLearning(p) = &config.method {
        return Ok(AdapterFootprint {
            trainable: prompt_parameters(&shape, p),
            kept_per_token_layer: 0,
            setting: "`num_virtual_tokens` / `encoder_hidden_size` (--num-virtual-tokens, --encoder-hidden-size, or adapter_config.json)",
        });
    }
    let head: &[&str] = match dir.family {
        Family::Llama(_) => &["lm_head"],
        Family::ChatGlm(_) => &["transformer.output_layer"],
    };
    let matcher = config.matcher(default_targets(dir.model_type(), &config.method), head)?;
    let (mut params, mut kept) = (0u64, 0u64);
    for m in dir.module_paths() {
        if m.kind != "linear" || !matcher.matches(&m.path, true) {
            continue;
        }
        let (i, o) = (m.d_in as u64, m.d_out as u64);
        let spec = match &config.method {
            Method::Lora(opts) => lora_spec(opts, &m.path)?,
            // Not `adalora_spec`: it builds an `init_r`-long rank mask per module, and an absurd
            // `init_r` must be refused here, quickly.
            Method::AdaLora(lora, ada) => Spec::AdaLora {
                init_r: ada.init_r,
                scale: 0.0,
                dropout: lora.lora_dropout,
                kept: Vec::new(),
            },
            Method::Ia3(_) => Spec::Ia3 { feedforward: false },
            Method::PromptLearning(_) => continue,
        };
        // Measured: a dropout adds about `in` floats per adapted projection (1.04 × on SmolLM2,
        // lora_dropout 0.05: 1957 vs 1331 MiB peak).
        let dropped = |p: f64| if p > 0.0 { i } else { 0 };
        let (n, k) = match spec {
            Spec::Lora {
                r, dora, dropout, ..
            } => (
                (r as u64)
                    .saturating_mul(i + o)
                    .saturating_add(if dora { o } else { 0 }),
                (r as u64).saturating_add(dropped(dropout)),
            ),
            Spec::AdaLora {
                init_r, dropout, ..
            } => (
                (init_r as u64).saturating_mul(i + o + 1),
                (init_r as u64).saturating_add(dropped(dropout)),
            ),
            // A vector over the input or the output features.
            Spec::Ia3 { .. } => (i.max(o), 0),
        };
        params = params.saturating_add(n);
        kept = kept.saturating_add(k);
    }
    let setting = match &config.method {
        Method::AdaLora(..) => "`init_r` (--init-r, or init_r in adapter_config.json)",
        Method::Ia3(_) => "target_modules",
        _ => "`r` (--r, or r / rank_pattern in adapter_config.json)",
    };
    Ok(AdapterFootprint {
        trainable: params,
        kept_per_token_layer: kept / shape.layers.max(1),
        setting,
    })
}

/// Prompt-learning parameters: virtual-token embeddings, prefixes per layer (through the
/// projection's `encoder_hidden_size` when there is one), LLaMA-Adapter's prompts and gates;
/// P-tuning's encoder approximated by two `hidden × encoder_hidden_size` matrices.
fn prompt_parameters(s: &ModelShape, p: &PromptOptions) -> u64 {
    let n = p.num_virtual_tokens as u64;
    let h = s.hidden;
    let embeds = n.saturating_mul(h);
    match &p.kind {
        PromptKind::PromptTuning { .. } => embeds,
        PromptKind::PTuning {
            encoder_hidden_size,
            ..
        } => {
            let e = encoder_hidden_size.map_or(h, |e| e as u64);
            embeds.saturating_add(e.saturating_mul(4 * h))
        }
        PromptKind::Prefix {
            prefix_projection,
            encoder_hidden_size,
            ..
        } => {
            let out = 2 * s.layers * s.kv_dim;
            match prefix_projection {
                true => {
                    let e = encoder_hidden_size.map_or(h, |e| e as u64);
                    embeds.saturating_add(e.saturating_mul(h + out + 2))
                }
                false => n.saturating_mul(out),
            }
        }
        PromptKind::Adaption { adapter_layers, .. } => {
            (*adapter_layers as u64).saturating_mul(embeds.saturating_add(1))
        }
    }
}
