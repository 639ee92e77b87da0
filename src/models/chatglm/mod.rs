//! The ChatGLM2/3 family, as THUDM's `modeling_chatglm.py` (ChatGLM3-6B revision). Module paths
//! equal the checkpoint keys (`transformer.encoder.layers.3.self_attention.query_key_value`).

pub mod config;
pub mod model;
pub mod weights;

pub use config::ChatGlmConfig;
pub use model::ChatGlmForConditionalGeneration;
