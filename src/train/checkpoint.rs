//! Checkpoints: the adapter in PEFT format, the optimizer moments (safetensors, keyed by the
//! adapter tensor names so they survive a reload), and `trainer_state.json` (step, epoch, data
//! position, seed, loss history). Every file is written atomically; a checkpoint directory is
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

pub const STATE_FILE: &str = "trainer_state.json";
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
    pub log_history: Vec<serde_json::Value>,
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
        let json = serde_json::to_string_pretty(state).map_err(|e| err(&tmp, e))?;
        write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
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

pub fn load_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| err(&path, e))
}

/// `out/checkpoint-<step>`.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}
