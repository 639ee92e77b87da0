//! Parameter-efficient fine-tuning methods, PEFT-compatible.
//!
//! - [`config`]: `adapter_config.json` in and out, with PEFT's defaults.
//! - [`target`]: the `target_modules` matcher (PEFT's rules) and rank/alpha patterns.
//! - [`model_card`]: the README.md model card `save_pretrained` writes beside an adapter.
//! - [`prompt`]: prompt tuning, P-tuning, prefix tuning / P-tuning v2, LLaMA-Adapter encoders.

pub mod adalora;
pub mod adapter;
pub mod build;
pub mod chatglm_prefix;
pub mod config;
mod config_check;
pub mod fold;
pub mod format;
pub mod ia3;
pub mod lora;
pub mod model_card;
pub mod prompt;
pub mod rank_allocator;
pub mod target;
pub mod walker;

pub use config::{AdapterConfig, Method, PeftType};
