//! File input and output shared by every command: safetensors checkpoints (single file or sharded)
//! read through memory maps, and atomic writes (temp file, fsync, rename).

pub mod atomic;
pub mod budget;
pub mod checkpoint;
pub mod dtype;
pub mod json;
pub mod leftovers;
pub mod lock;
pub mod paths;

pub use atomic::{write_atomic, write_safetensors_atomic, OwnedTensor};
pub use checkpoint::{Checkpoint, TensorEntry};
