//! One adapter folder, read for merging: its config, its memory-mapped weights, and its tensor
//! keys grouped by the module they adapt.
//!
//! PEFT saves `base_model.model.<module path>.<parameter>` (PEFT.md §1.9–1.10), e.g.
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` adapts the base tensor
//! `model.layers.0.self_attn.q_proj.weight`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{LoadError, MergeError};
use crate::io::Checkpoint;
use crate::peft::config::{AdapterConfig, Method, WEIGHTS_FILE};

const KEY_PREFIX: &str = "base_model.model.";

/// The adapter parameters one module can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Param {
    /// LoRA `lora_A.weight` [r, in] (AdaLoRA: `lora_A`).
    A,
    /// LoRA `lora_B.weight` [out, r] (AdaLoRA: `lora_B`).
    B,
    /// AdaLoRA singular values `lora_E` [r, 1].
    E,
    /// DoRA `lora_magnitude_vector` [out].
    Magnitude,
    /// LoRA on an embedding: `lora_embedding_A` [r, num_embeddings].
    EmbeddingA,
    /// LoRA on an embedding: `lora_embedding_B` [dim, r].
    EmbeddingB,
    /// IA3 `ia3_l`: [out, 1], or [1, in] for feed-forward modules.
    Ia3,
}

/// Suffixes in the order they are tried (longest first, so `.lora_A.weight` wins over `.lora_A`).
const SUFFIXES: &[(&str, Param)] = &[
    (".lora_A.weight", Param::A),
    (".lora_B.weight", Param::B),
    (".lora_magnitude_vector.weight", Param::Magnitude),
    (".lora_magnitude_vector", Param::Magnitude),
    (".lora_embedding_A", Param::EmbeddingA),
    (".lora_embedding_B", Param::EmbeddingB),
    (".lora_A", Param::A),
    (".lora_B", Param::B),
    (".lora_E", Param::E),
    (".ia3_l", Param::Ia3),
];

/// Splits an adapter key into (module path, parameter).
pub fn classify(key: &str) -> Option<(&str, Param)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    SUFFIXES
        .iter()
        .find_map(|(suffix, param)| rest.strip_suffix(suffix).map(|module| (module, *param)))
}

/// A loaded adapter: config, weights and `module path -> {param -> adapter key}`.
pub struct Adapter {
    pub dir: PathBuf,
    pub file: PathBuf,
    pub config: AdapterConfig,
    pub weights: Checkpoint,
    pub modules: BTreeMap<String, BTreeMap<Param, String>>,
}

/// Why a prompt-learning method has nothing to fold.
const PROMPT_REASON: &str = "prompt-learning methods add virtual tokens (or per-layer key/value prefixes) to the \
input; they change no weight matrix, so there is no weight to fold into; serve the base model with the adapter instead";

impl Adapter {
    /// Reads the config and opens the weights; refuses methods that cannot be merged and keys
    /// this merge does not understand.
    pub fn load(dir: &Path) -> Result<Self, MergeError> {
        let config = AdapterConfig::load_dir(dir)?;
        if let Method::PromptLearning(_) = config.method {
            return Err(MergeError::NotMergeable {
                dir: dir.to_path_buf(),
                peft_type: config.peft_type.as_str().into(),
                reason: PROMPT_REASON,
            });
        }
        let file = dir.join(WEIGHTS_FILE);
        if !file.is_file() {
            if dir.join("adapter_model.bin").is_file() {
                return Err(LoadError::PickleCheckpoint {
                    dir: dir.to_path_buf(),
                }
                .into());
            }
            return Err(LoadError::MissingFile {
                path: file,
                what: "adapter weights",
            }
            .into());
        }
        let weights = Checkpoint::open_files(std::slice::from_ref(&file))?;
        let mut modules: BTreeMap<String, BTreeMap<Param, String>> = BTreeMap::new();
        for entry in weights.entries() {
            let (module, param) =
                classify(&entry.name).ok_or_else(|| MergeError::UnknownAdapterKey {
                    file: file.clone(),
                    key: entry.name.clone(),
                })?;
            modules
                .entry(module.to_string())
                .or_default()
                .insert(param, entry.name.clone());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            config,
            weights,
            modules,
        })
    }

    /// Shape of an adapter tensor (present by construction of `modules`).
    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.weights
            .get(key)
            .map(|e| e.shape.clone())
            .unwrap_or_default()
    }

    /// Reads an adapter tensor as f32.
    pub fn read(&self, key: &str) -> Result<Vec<f32>, MergeError> {
        let entry = self
            .weights
            .get(key)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: key.to_string(),
            })?;
        crate::io::dtype::to_f32(entry.dtype, self.weights.bytes(entry)).ok_or_else(|| {
            MergeError::NotFloat {
                file: self.file.clone(),
                tensor: key.to_string(),
                dtype: format!("{:?}", entry.dtype),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_module_and_parameter() {
        let k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
        assert_eq!(
            classify(k),
            Some(("model.layers.0.self_attn.q_proj", Param::A))
        );
        assert_eq!(
            classify("base_model.model.model.layers.1.mlp.up_proj.lora_E"),
            Some(("model.layers.1.mlp.up_proj", Param::E))
        );
        assert_eq!(
            classify("base_model.model.x.lora_magnitude_vector"),
            Some(("x", Param::Magnitude))
        );
        assert_eq!(classify("base_model.model.lm_head.weight"), None);
        assert_eq!(classify("model.layers.0.q_proj.lora_A.weight"), None);
    }
}
