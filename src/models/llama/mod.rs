//! The Llama family (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2-style), as transformers'
//! `modeling_llama.py`. Module paths equal the checkpoint keys (`model.layers.3.self_attn.q_proj`).

pub mod config;
pub mod model;
pub mod weights;

pub use config::LlamaConfig;
pub use model::LlamaForCausalLm;
