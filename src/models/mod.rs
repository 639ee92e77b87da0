//! Model families. Each family lives in its own folder (config, model, weight loading); shared
//! building blocks (linear layers with adapter slots, RMSNorm, rotary embeddings, the KV cache,
//! attention masks) live beside them.

pub mod cache;
pub mod chatglm;
pub mod checkpointing;
pub mod config_fields;
pub mod ggml_activations;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod loaded;
pub mod mask;
pub mod prompt;
pub mod rope;
pub mod sizes;
pub mod synthetic;
pub mod synthetic_shards;
pub mod tensor_util;

pub use cache::KvCache;
pub use linear::Linear;
pub use loaded::{CausalLm, ModelDir, ModulePath};
pub use mask::Inputs;
pub use prompt::PromptState;
