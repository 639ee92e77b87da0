//! Prompt-learning methods (PEFT.md §2.5–2.8): each is a small trainable encoder whose output
//! enters the model through [`PromptState`], the model's one prompt argument.
//!
//! - prompt tuning: the virtual-token embeddings themselves, `[num_virtual_tokens, hidden]`;
//! - P-tuning v1: an embedding reparameterised by an MLP or a bidirectional LSTM + MLP;
//! - prefix tuning / P-tuning v2: per-layer key/value prefixes, flat
//!   `[num_virtual_tokens, layers · 2 · kv_heads · head_dim]`, optionally produced by
//!   `embedding → Linear → tanh → Linear` (`prefix_projection`);
//! - LLaMA-Adapter: an adaption prompt and a zero-initialised gate in each of the top layers;
//! - ChatGLM's native P-tuning v2 `transformer.prefix_encoder` ([`chatglm_prefix`]).
//!
//! Tensors move in and out as [`HostTensors`] with PyTorch names and orientation, so fresh
//! initialisation, PEFT files and our resumable encoder file share one builder.

pub mod config;
pub mod encoders;
pub mod files;
pub mod host;
pub mod init;
pub mod lstm;

use burn::module::{Module, ParamId};

use crate::models::layers::Embedding;
use crate::models::prompt::PromptState;
use crate::peft::chatglm_prefix;

pub use config::{PromptInit, PromptKind, PromptOptions, Reparam};
pub use encoders::{AdaptionPrompts, Dims, HostTensors, PTuningEncoder, PrefixTuning};

/// A prompt-learning method's trainable part: a closed enum dispatched by `match`.
#[derive(Module, Debug)]
pub enum PromptEncoder {
    /// Prompt tuning (and a P-tuning encoder reloaded from PEFT's saved output).
    Embedding(Embedding),
    PTuning(PTuningEncoder),
    Prefix(PrefixTuning),
    Adaption(AdaptionPrompts),
    ChatGlm(chatglm_prefix::PrefixEncoder),
}

impl PromptEncoder {
    /// Whether the prompt enters as virtual tokens in front of the input (prompt tuning,
    /// P-tuning), rather than as key/value prefixes or adaption prompts.
    pub fn prepends_tokens(&self) -> bool {
        matches!(self, Self::Embedding(_) | Self::PTuning(_))
    }

    /// What this encoder adds to a forward over `batch` rows.
    pub fn prompt_state(&self, batch: usize) -> PromptState {
        let virtual_tokens = |x: burn::tensor::Tensor<2>| {
            let [n, d] = x.dims();
            PromptState {
                input_embeds: Some(x.unsqueeze::<3>().expand([batch, n, d])),
                ..PromptState::default()
            }
        };
        match self {
            Self::Embedding(e) => virtual_tokens(e.weight.val()),
            Self::PTuning(p) => virtual_tokens(p.output()),
            Self::Prefix(p) => PromptState {
                kv_prefix: Some(p.kv_prefix(batch)),
                ..PromptState::default()
            },
            Self::Adaption(a) => PromptState {
                adaption: Some(a.per_layer()),
                ..PromptState::default()
            },
            Self::ChatGlm(c) => c.prompt_state(batch),
        }
    }

    /// Context positions the prompt occupies (virtual tokens or prefix length).
    pub fn positions(&self) -> usize {
        match self {
            Self::Embedding(e) => e.weight.lazy_shape().dims::<2>()[0],
            Self::PTuning(p) => p.num_virtual_tokens(),
            Self::Prefix(p) => p.num_virtual_tokens(),
            Self::Adaption(_) => 0,
            Self::ChatGlm(c) => c.pre_seq_len(),
        }
    }

    /// The tensors PEFT's `adapter_model.safetensors` holds: `prompt_embeddings` (the encoder
    /// output, PEFT.md §1.9(6)) or, for LLaMA-Adapter, the per-layer prompts and gates.
    pub fn peft_tensors(&self) -> HostTensors {
        let mut out = HostTensors::default();
        match self {
            Self::Embedding(e) => out.insert_tensor(files::PEFT_KEY, e.weight.val()),
            Self::PTuning(p) => out.insert_tensor(files::PEFT_KEY, p.output()),
            Self::Prefix(p) => out.insert_tensor(files::PEFT_KEY, p.flat()),
            Self::Adaption(a) => a.write(&mut out),
            Self::ChatGlm(c) => out.insert_tensor(files::PEFT_KEY, c.prefix()),
        }
        out
    }

    /// Every trainable tensor under its PyTorch name (inside PEFT's `prompt_encoder`; ChatGLM's
    /// inside `transformer.prefix_encoder`), PyTorch orientation: the resumable encoder file.
    pub fn encoder_tensors(&self) -> HostTensors {
        let mut out = HostTensors::default();
        match self {
            Self::Embedding(e) => out.insert_tensor("embedding.weight", e.weight.val()),
            Self::PTuning(p) => p.write(&mut out),
            Self::Prefix(p) => p.write(&mut out),
            Self::Adaption(a) => a.write(&mut out),
            Self::ChatGlm(c) => {
                out.insert_tensor("embedding.weight", c.embedding.weight.val());
                if let Some(mlp) = &c.trans {
                    out.insert_linear("trans.0", &mlp.trans_0);
                    out.insert_linear("trans.2", &mlp.trans_2);
                }
            }
        }
        out
    }

    /// The parameter id behind each tensor of [`Self::encoder_tensors`] (optimizer state is
    /// keyed by these names, so it survives a reload).
    pub fn param_ids(&self) -> Vec<(String, ParamId)> {
        let mut out: Vec<(String, ParamId)> = Vec::new();
        match self {
            Self::Embedding(e) => out.push(("embedding.weight".into(), e.weight.id)),
            Self::PTuning(p) => p.param_ids(&mut out),
            Self::Prefix(p) => p.param_ids(&mut out),
            Self::Adaption(a) => a.param_ids(&mut out),
            Self::ChatGlm(c) => {
                out.push(("embedding.weight".into(), c.embedding.weight.id));
                if let Some(mlp) = &c.trans {
                    encoders::linear_ids("trans.0", &mlp.trans_0, &mut out);
                    encoders::linear_ids("trans.2", &mlp.trans_2, &mut out);
                }
            }
        }
        out
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.encoder_tensors().num_values()
    }
}
