//! Parameter-efficient fine-tuning methods, PEFT-compatible.
//!
//! - [`config`]: `adapter_config.json` in and out, with PEFT's defaults.
//! - [`target`]: the `target_modules` matcher (PEFT's rules) and rank/alpha patterns.

pub mod config;
pub mod target;

pub use config::{AdapterConfig, Method, PeftType};
