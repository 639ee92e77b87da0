//! Training: the loss, torch's AdamW, learning-rate schedules, one optimizer step with gradient
//! accumulation and global-norm clipping, and the explicit training loop (`run`).

pub mod checkpoint;
pub mod eval;
pub mod hook;
pub mod log;
pub mod loss;
pub mod memory;
mod memory_adapter;
mod memory_check;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod step;

pub use hook::StepHook;
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind};
pub use step::{train_step, train_step_with, Batch, StepStats};
