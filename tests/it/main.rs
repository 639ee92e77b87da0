//! The integration test binary: one module per capability.

mod common;

mod adalora_cli;
mod adapter_errors;
mod adapters;
mod bad_input;
mod balanced_order;
mod base_dtype;
mod chatglm;
mod chatglm_tokenizer;
mod checkpointing;
mod compare;
mod compare_eval;
mod compare_protocol;
mod compute_dtype;
mod data;
mod gguf;
mod gguf_base;
mod gguf_export;
mod gguf_export_chatglm;
mod gguf_import_chatglm;
mod kernels_attention;
mod llama;
mod matcher;
mod merge;
mod prompt;
mod prompt_cli;
mod prompt_text_loss;
mod prompt_train;
mod quant_base;
mod quant_train;
mod safe_fuzz;
mod safe_numbers;
mod safe_out;
mod safe_panics;
mod safe_plan;
mod safe_runs;
mod safe_sizes;
mod tokenizer;
mod train;
mod train_cli;
mod ux_cli;
#[cfg(feature = "wgpu")]
mod wgpu;
