//! The integration test binary: one module per capability.

mod common;

mod adalora_cli;
mod adapter_errors;
mod adapters;
mod bad_input;
mod base_dtype;
mod chatglm;
mod chatglm_tokenizer;
mod compare;
mod data;
mod gguf;
mod kernels_attention;
mod llama;
mod matcher;
mod merge;
mod prompt;
mod prompt_cli;
mod prompt_train;
mod tokenizer;
mod train;
mod train_cli;
#[cfg(feature = "wgpu")]
mod wgpu;
