//! Checkpoints: the adapter in PEFT format, the optimizer moments (safetensors, keyed by the
//! adapter tensor names so they survive a reload), `resume_state.json` (ours: step, epoch, data
//! position, seed, log history) and `trainer_state.json` in HF Trainer's format (what
//! `TrainerState.load_from_json` reads: its dataclass fields and nothing else). Every file is written atomically; a checkpoint directory is
//! written under a temporary name and renamed into place, so an interrupted save (or a full
//! disk) leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::io::{write_atomic, write_safetensors_atomic, Checkpoint, OwnedTensor};
use crate::models::tensor_util::to_vec;
use crate::models::CausalLm;
use crate::peft::format::{adapter_param_ids, save_adapter};
use crate::peft::AdapterConfig;
use crate::train::hook::StepHook;
use crate::train::optim::{AdamW, Moments};

/// HF Trainer's `TrainerState` JSON (for tools that read HF runs); not read back by us.
pub const STATE_FILE: &str = "trainer_state.json";
/// Our resume state ([`TrainerState`]); runs written before it existed kept it in `STATE_FILE`.
pub const RESUME_FILE: &str = "resume_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where a run is, enough to continue it exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub global_step: usize,
    pub max_steps: usize,
    pub epoch: usize,
    /// Micro-batches of `epoch` already consumed.
    pub position: usize,
    pub seed: u64,
    /// HF `log_history` entries (`loss`, `learning_rate`, `grad_norm`, `epoch`, `step`; eval
    /// entries with `eval_loss`).
    pub log_history: Vec<serde_json::Value>,
    /// Fractional epoch, as HF's `TrainerState.epoch`.
    #[serde(default)]
    pub epoch_progress: f64,
    /// Target tokens trained on, over all processes of the run.
    #[serde(default)]
    pub tokens_seen: usize,
    /// Seconds spent in optimizer steps so far, over every process of the run (loading,
    /// evaluation and checkpoints not counted): what `--max-train-minutes` is measured against,
    /// so a resumed run trains only what its budget has left.
    #[serde(default)]
    pub train_seconds: f64,
    #[serde(default)]
    pub settings: StateSettings,
}

/// The run settings HF's `TrainerState` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateSettings {
    pub logging_steps: usize,
    pub eval_steps: Option<usize>,
    pub save_steps: Option<usize>,
    pub train_batch_size: Option<usize>,
    pub num_train_epochs: usize,
}

impl TrainerState {
    /// `trainer_state.json` as transformers 5.24's `TrainerState.save_to_json` writes it.
    pub fn hf_json(&self) -> serde_json::Value {
        let s = &self.settings;
        serde_json::json!({
            "best_global_step": null, "best_metric": null, "best_model_checkpoint": null,
            "epoch": self.epoch_progress, "eval_steps": s.eval_steps.unwrap_or(s.logging_steps),
            "global_step": self.global_step, "is_hyper_param_search": false,
            "is_local_process_zero": true, "is_world_process_zero": true,
            "log_history": self.log_history, "logging_steps": s.logging_steps,
            "max_steps": self.max_steps, "num_input_tokens_seen": self.tokens_seen,
            "num_train_epochs": s.num_train_epochs, "save_steps": s.save_steps.unwrap_or(0),
            "stateful_callbacks": null, "total_flos": 0.0, "train_batch_size": s.train_batch_size,
            "trial_name": null, "trial_params": null,
        })
    }
}

/// Writes `resume_state.json` and the HF `trainer_state.json` into `dir`, atomically each.
pub fn write_states(dir: &Path, state: &TrainerState) -> Result<(), TrainError> {
    let ours = serde_json::to_string_pretty(state).map_err(|e| err(dir, e))?;
    write_atomic(&dir.join(RESUME_FILE), ours.as_bytes())?;
    let hf = serde_json::to_string_pretty(&state.hf_json()).map_err(|e| err(dir, e))?;
    write_atomic(&dir.join(STATE_FILE), hf.as_bytes())?;
    Ok(())
}

fn err(path: &Path, e: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Saves a checkpoint (adapter + optimizer + state) into `dir`, atomically as a whole.
pub fn save(
    dir: &Path,
    model: &mut CausalLm,
    config: &AdapterConfig,
    optim: &AdamW,
    state: &TrainerState,
    hook: &StepHook,
) -> Result<(), TrainError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
        save_adapter(model, config, &tmp)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), model, optim)?;
        hook.save(model, &tmp)?;
        write_states(&tmp, state)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| err(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| err(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn save_optimizer(path: &Path, model: &mut CausalLm, optim: &AdamW) -> Result<(), TrainError> {
    let mut tensors = Vec::new();
    for (name, id) in adapter_param_ids(model) {
        if let Some(m) = optim.state.get(&id) {
            let avg = to_vec(m.exp_avg.clone());
            let sq = to_vec(m.exp_avg_sq.clone());
            tensors.push((
                format!("{name}.exp_avg"),
                OwnedTensor::from_f32(vec![avg.len()], &avg),
            ));
            tensors.push((
                format!("{name}.exp_avg_sq"),
                OwnedTensor::from_f32(vec![sq.len()], &sq),
            ));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), optim.step.to_string());
    meta.insert(
        "adamw".to_string(),
        serde_json::to_string(&optim.config).unwrap_or_default(),
    );
    write_safetensors_atomic(path, &tensors, Some(meta))?;
    Ok(())
}

/// Restores optimizer moments for the adapter now attached to `model` (same tensor names).
pub fn load_optimizer(
    dir: &Path,
    model: &mut CausalLm,
    optim: &mut AdamW,
    device: &Device,
) -> Result<(), TrainError> {
    let path = dir.join(OPTIMIZER_FILE);
    let file = Checkpoint::open_files(&[path.clone()])?;
    optim.step = file
        .metadata()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let inner = device.clone().inner();
    let tensor = |key: &str| -> Result<Tensor<1>, TrainError> {
        let (v, _) = file.read_f32(key)?;
        let n = v.len();
        Ok(Tensor::from_data(TensorData::new(v, [n]), &inner))
    };
    let mut state: HashMap<ParamId, Moments> = HashMap::new();
    for (name, id) in adapter_param_ids(model) {
        let key = format!("{name}.exp_avg");
        if file.contains(&key) {
            state.insert(
                id,
                Moments {
                    exp_avg: tensor(&key)?,
                    exp_avg_sq: tensor(&format!("{name}.exp_avg_sq"))?,
                },
            );
        }
    }
    if state.is_empty() && optim.step > 0 {
        return Err(err(
            &path,
            "no optimizer state matches the adapter's tensors",
        ));
    }
    optim.state = state;
    Ok(())
}

/// Our resume state of a checkpoint (`resume_state.json`, or `trainer_state.json` of older runs).
pub fn load_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = match dir.join(RESUME_FILE) {
        p if p.is_file() => p,
        _ => dir.join(STATE_FILE),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| err(&path, e))
}

/// `out/checkpoint-<step>`.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}
