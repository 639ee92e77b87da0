//! The model's tensors with the adapters folded in, one at a time: the merge's own checks
//! (`merge::patches::collect`) and folds (`merge::apply::apply_patch`), so a GGUF export and
//! `peft merge` give the same weights. Only one tensor is held in f32 at a time.

use std::path::Path;

use crate::error::MergeError;
use crate::io::Checkpoint;
use crate::merge::adapter::Adapter;
use crate::merge::apply::apply_patch;
use crate::merge::layout::{detect_tie, Lookup, Tie};
use crate::merge::patches::{collect, Patches};

use super::error::ExportError;

pub struct Source {
    pub base: Checkpoint,
    pub adapters: Vec<Adapter>,
    pub patches: Patches,
    pub tie: Option<Tie>,
}

impl Source {
    pub fn open(
        model: &Path,
        adapters: &[std::path::PathBuf],
        config: &serde_json::Value,
    ) -> Result<Self, ExportError> {
        let base = Checkpoint::open_dir(model)?;
        let adapters = adapters
            .iter()
            .map(|d| Adapter::load(d))
            .collect::<Result<Vec<_>, MergeError>>()?;
        let tie = detect_tie(Some(config), &base);
        let patches = collect(
            &adapters,
            &Lookup {
                base: &base,
                tie: tie.as_ref(),
            },
        )?;
        Ok(Self {
            base,
            adapters,
            patches,
            tie,
        })
    }

    /// Whether an adapter changes the tied embedding or head, so the GGUF needs its own
    /// `output.weight`.
    pub fn unties(&self) -> bool {
        self.tie.as_ref().is_some_and(|t| {
            self.patches.contains_key(&t.input) || self.patches.contains_key(&t.output)
        })
    }

    /// Tensor `name` ([rows, cols] or [n], row-major f32), adapters folded in. An unstored tied
    /// head reads the input embedding (before its own patches).
    pub fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ExportError> {
        let stored = match (&self.tie, self.base.contains(name)) {
            (Some(t), false) if name == t.output => t.input.as_str(),
            _ => name,
        };
        let (mut values, found) = self.base.read_f32(stored)?;
        if found != shape {
            return Err(ExportError::Tensor {
                tensor: name.into(),
                message: format!("shape {found:?} in the checkpoint, config.json says {shape:?}"),
            });
        }
        for patch in self.patches.get(name).into_iter().flatten() {
            apply_patch(
                &self.adapters[patch.adapter],
                patch,
                &mut values,
                shape,
                1.0,
            )?;
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ExportError::Tensor {
                tensor: name.into(),
                message: format!("value {} at index {i} is not finite", values[i]),
            });
        }
        Ok(values)
    }

    /// The expected tensors the checkpoint lacks.
    pub fn missing(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|n| {
                !self.base.contains(n) && !self.tie.as_ref().is_some_and(|t| t.output == **n)
            })
            .map(|n| n.to_string())
            .collect()
    }
}
