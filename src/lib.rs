//! `peft`: parameter-efficient fine-tuning of Llama- and ChatGLM-family models on burn.
//!
//! The library holds everything; the `peft` binary (`src/main.rs`) only parses arguments and maps
//! errors to exit codes. Module paths and field names follow the Hugging Face checkpoint keys, so a
//! PEFT `target_modules` list works unchanged.

pub mod chat_templates;
pub mod compare;
pub mod data;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod io;
pub mod kernels;
pub mod merge;
pub mod models;
pub mod peft;
pub mod quant;
pub mod tokenizer;
pub mod tokenizer_spm;
pub mod train;

pub use error::{AdapterError, LoadError};
