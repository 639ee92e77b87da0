//! The integration test binary: one module per capability.

mod common;
mod adapters;
mod bad_input;
mod llama;
mod tokenizer;
