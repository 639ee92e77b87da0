//! GGUF import: read llama.cpp's GGUF files and write a Hugging Face model folder.
//! `peft convert gguf FILE --out DIR`.
//!
//! - [`reader`]: the container (header, metadata, tensor infos, alignment), v2 and v3;
//! - [`dequant`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1 and, with [`kquants`], Q2_K, Q3_K, Q4_K, Q5_K,
//!   Q6_K, Q8_K to f32, as gguf-py;
//! - [`names`]: llama.cpp tensor names to transformers keys, and the q/k row un-permutation;
//! - [`config`]: `config.json` from the `llama.*` keys; [`chatglm`]: from the `chatglm.*` keys,
//!   and ChatGLM's tensor names; [`params`]: the architecture (`general.architecture`) as a
//!   closed enum over the two;
//! - [`folder`]: the config and tokenizer files of the folder, with [`spm_model`] writing
//!   ChatGLM3's `tokenizer.model` back from a `chatglm-spm` vocabulary;
//! - [`tokenizer`]: `tokenizer.json` and `tokenizer_config.json` from the `tokenizer.*` keys, with
//!   [`bpe`] (byte-level, `gpt2`) and [`spm`] (SentencePiece, `llama`) vocabularies;
//! - [`convert`]: the whole conversion, written atomically.
//!
//! GGUF export (`peft export gguf`): [`writer`] (the container), [`quantize`] (Q8_0, Q4_0) and
//! [`kquantize`] (Q4_K, Q6_K, Q5_0), and [`export`] (metadata, tokenizer, tensor plan, Modelfile).

pub mod base;
pub mod bpe;
pub mod chatglm;
pub mod config;
pub mod convert;
pub mod dequant;
pub mod export;
pub mod folder;
pub mod kquantize;
pub mod kquants;
pub mod names;
pub mod params;
pub mod quantize;
pub mod reader;
pub mod spm;
pub mod spm_model;
pub mod tokenizer;
pub mod writer;

pub use convert::{convert_gguf, ConvertOptions, ConvertReport};
pub use reader::{Gguf, TensorInfo, Value};
