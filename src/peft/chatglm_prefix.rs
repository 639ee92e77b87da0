//! ChatGLM's native P-tuning v2 (THUDM ChatGLM2/3 `modeling_chatglm.py`, `PrefixEncoder` and
//! `ChatGLMModel.get_prompt`): `pre_seq_len` learned key/value prefixes for every layer.
//!
//! Tensors (PyTorch orientation, keys as THUDM's `ptuning/main.py` saves them):
//! - `transformer.prefix_encoder.embedding.weight`: [pre_seq_len, kv_size],
//!   kv_size = num_layers · 2 · multi_query_group_num · kv_channels;
//! - with `prefix_projection`: `transformer.prefix_encoder.trans.0.{weight,bias}` [hidden, kv_size]
//!   and `trans.2.{weight,bias}` [kv_size, hidden], `trans = Linear → Tanh → Linear`.
//!
//! Each prefix token's vector is `view(num_layers·2, groups, kv_channels)`: entries `2l` and
//! `2l + 1` are layer `l`'s key and value (`permute([2, 1, 0, 3, 4]).split(2)`). That is PEFT's
//! PREFIX_TUNING `prompt_embeddings` layout with `token_dim = groups · kv_channels` and
//! `num_attention_heads = groups`, so conversion copies the (projected) values unchanged.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::tanh;
use burn::tensor::{Device, Tensor};
use serde_json::{json, Map, Value};

use crate::error::AdapterError;
use crate::io::{Checkpoint, OwnedTensor};
use crate::models::chatglm::ChatGlmConfig;
use crate::models::layers::Embedding;
use crate::models::linear::Linear;
use crate::models::prompt::PromptState;
use crate::models::tensor_util::{tensor1, tensor2, to_vec, trainable, transpose};

pub const WEIGHTS_FILE: &str = "prefix_encoder.safetensors";
pub const CONFIG_FILE: &str = "ptuning_config.json";
pub const KEY_PREFIX: &str = "transformer.prefix_encoder.";
/// PEFT's tensor key for prompt-learning adapters.
pub const PEFT_KEY: &str = "prompt_embeddings";

/// `ptuning_config.json`: the two model-config fields that switch P-tuning v2 on.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PtuningConfig {
    pub pre_seq_len: usize,
    #[serde(default)]
    pub prefix_projection: bool,
}

/// The projection MLP `trans`. Field names stand for the `Sequential` indices `trans.0`, `trans.2`
/// (`trans.1` is the Tanh).
#[derive(Module, Debug)]
pub struct PrefixMlp {
    /// `trans.0`: [kv_size] -> [hidden]
    pub trans_0: Linear,
    /// `trans.2`: [hidden] -> [kv_size]
    pub trans_2: Linear,
}

/// Shapes the prefix is viewed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixShape {
    pub num_layers: usize,
    pub groups: usize,
    pub kv_channels: usize,
    pub hidden_size: usize,
}

impl PrefixShape {
    pub fn of(config: &ChatGlmConfig) -> Self {
        Self {
            num_layers: config.num_layers,
            groups: config.kv_groups,
            kv_channels: config.kv_channels,
            hidden_size: config.hidden_size,
        }
    }

    pub fn kv_size(&self) -> usize {
        self.num_layers * 2 * self.groups * self.kv_channels
    }
}

#[derive(Module, Debug)]
pub struct PrefixEncoder {
    /// [pre_seq_len, kv_size]
    pub embedding: Embedding,
    pub trans: Option<PrefixMlp>,
    /// `torch.nn.Dropout(0.1)` on the prefix, as `ChatGLMModel.get_prompt` (active in training only).
    pub dropout: Dropout,
    #[module(skip)]
    pub shape: PrefixShape,
}

fn config_err(path: &Path, message: String) -> AdapterError {
    AdapterError::Config {
        path: path.to_path_buf(),
        message,
    }
}

/// Reads `name` (or the same key without `transformer.prefix_encoder.`, as THUDM's loading code
/// strips it) with the expected PyTorch shape.
fn read(file: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<f32>, AdapterError> {
    let full = format!("{KEY_PREFIX}{name}");
    let key = if file.contains(&full) {
        full
    } else if file.contains(name) {
        name.to_string()
    } else {
        return Err(AdapterError::MissingTensor { tensor: full });
    };
    let entry = file.get(&key).ok_or_else(|| AdapterError::MissingTensor {
        tensor: key.clone(),
    })?;
    if entry.shape != shape {
        return Err(AdapterError::ShapeMismatch {
            tensor: key,
            expected: shape.to_vec(),
            actual: entry.shape.clone(),
        });
    }
    Ok(file.read_f32(&key)?.0)
}

/// A `[out, in]` linear (+ bias) read into burn's orientation, trainable.
fn read_linear(
    file: &Checkpoint,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Result<Linear, AdapterError> {
    let w = transpose(
        &read(file, &format!("{name}.weight"), &[d_out, d_in])?,
        d_out,
        d_in,
    );
    let b = read(file, &format!("{name}.bias"), &[d_out])?;
    Ok(Linear::new(
        trainable(tensor2(w, [d_in, d_out], device)),
        Some(trainable(tensor1(b, device))),
    ))
}

fn linear_tensors(name: &str, linear: &Linear) -> Vec<(String, OwnedTensor)> {
    let (i, o) = (linear.in_features(), linear.out_features());
    let mut out = vec![(
        format!("{KEY_PREFIX}{name}.weight"),
        OwnedTensor::from_f32(vec![o, i], &transpose(&to_vec(linear.weight.val()), i, o)),
    )];
    if let Some(b) = &linear.bias {
        out.push((
            format!("{KEY_PREFIX}{name}.bias"),
            OwnedTensor::from_f32(vec![o], &to_vec(b.val())),
        ));
    }
    out
}

impl PrefixEncoder {
    /// From host values: `embedding` [pre_seq_len, kv_size] and, with projection, the MLP.
    fn from_parts(
        shape: PrefixShape,
        embedding: Vec<f32>,
        pre_seq_len: usize,
        trans: Option<PrefixMlp>,
        device: &Device,
    ) -> Self {
        let weight = trainable(tensor2(embedding, [pre_seq_len, shape.kv_size()], device));
        Self {
            embedding: Embedding { weight },
            trans,
            dropout: DropoutConfig::new(0.1).init(),
            shape,
        }
    }

    pub fn pre_seq_len(&self) -> usize {
        self.embedding.weight.lazy_shape().dims::<2>()[0]
    }

    /// Loads `ptuning_config.json` + `prefix_encoder.safetensors` from `dir` for a model of `config`.
    pub fn load_dir(
        dir: &Path,
        config: &ChatGlmConfig,
        device: &Device,
    ) -> Result<Self, AdapterError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| config_err(&config_path, e.to_string()))?;
        let ptuning: PtuningConfig =
            serde_json::from_str(&text).map_err(|e| config_err(&config_path, e.to_string()))?;
        if ptuning.pre_seq_len == 0 {
            return Err(config_err(
                &config_path,
                "pre_seq_len must be positive".into(),
            ));
        }
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(config_err(&weights, format!("missing {WEIGHTS_FILE}")));
        }
        let file = Checkpoint::open_files(&[weights])?;
        let shape = PrefixShape::of(config);
        let (kv, h) = (shape.kv_size(), shape.hidden_size);
        let embedding = read(&file, "embedding.weight", &[ptuning.pre_seq_len, kv])?;
        let trans = if ptuning.prefix_projection {
            Some(PrefixMlp {
                trans_0: read_linear(&file, "trans.0", kv, h, device)?,
                trans_2: read_linear(&file, "trans.2", h, kv, device)?,
            })
        } else {
            None
        };
        Ok(Self::from_parts(
            shape,
            embedding,
            ptuning.pre_seq_len,
            trans,
            device,
        ))
    }

    /// Writes `ptuning_config.json` and `prefix_encoder.safetensors` (THUDM's keys) into `dir`.
    pub fn save_dir(&self, dir: &Path) -> Result<(), AdapterError> {
        std::fs::create_dir_all(dir).map_err(|e| config_err(dir, e.to_string()))?;
        let (p, kv) = (self.pre_seq_len(), self.shape.kv_size());
        let mut tensors = vec![(
            format!("{KEY_PREFIX}embedding.weight"),
            OwnedTensor::from_f32(vec![p, kv], &to_vec(self.embedding.weight.val())),
        )];
        if let Some(mlp) = &self.trans {
            tensors.extend(linear_tensors("trans.0", &mlp.trans_0));
            tensors.extend(linear_tensors("trans.2", &mlp.trans_2));
        }
        crate::io::write_safetensors_atomic(&dir.join(WEIGHTS_FILE), &tensors, None)?;
        let ptuning = PtuningConfig {
            pre_seq_len: p,
            prefix_projection: self.trans.is_some(),
        };
        let text =
            serde_json::to_string_pretty(&ptuning).map_err(|e| config_err(dir, e.to_string()))?;
        crate::io::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
        Ok(())
    }

    /// The prefix vectors, after the projection when there is one: [pre_seq_len, kv_size].
    pub fn prefix(&self) -> Tensor<2> {
        let x = self.embedding.weight.val();
        match &self.trans {
            None => x,
            Some(mlp) => mlp.trans_2.forward(tanh(mlp.trans_0.forward(x))),
        }
    }

    /// Per-layer `(k, v)`, each [batch, groups, pre_seq_len, kv_channels], for the model's forward.
    pub fn prompt_state(&self, batch: usize) -> PromptState {
        let s = self.shape;
        let flat = self.dropout.forward(self.prefix());
        PromptState {
            kv_prefix: Some(PromptState::kv_from_flat(
                flat,
                s.num_layers,
                s.groups,
                s.kv_channels,
                batch,
            )),
            ..PromptState::default()
        }
    }

    /// PEFT's PREFIX_TUNING files for this prefix: `adapter_config.json` (as JSON) and the
    /// `prompt_embeddings` [pre_seq_len, kv_size] tensor (the projected values: PEFT saves only
    /// those, prefix_tuning/model.py).
    pub fn to_peft(&self) -> (Value, OwnedTensor) {
        let s = self.shape;
        let token_dim = s.groups * s.kv_channels;
        let config = json!({
            "peft_type": "PREFIX_TUNING",
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": self.pre_seq_len(),
            "num_layers": s.num_layers,
            "token_dim": token_dim,
            "num_attention_heads": s.groups,
            "num_transformer_submodules": 1,
            "encoder_hidden_size": token_dim,
            "prefix_projection": false,
            "init_weights": null,
            "inference_mode": true,
            "base_model_name_or_path": null,
            "revision": null,
            "modules_to_save": null,
            "auto_mapping": null,
        });
        let values = to_vec(self.prefix());
        (
            config,
            OwnedTensor::from_f32(vec![self.pre_seq_len(), s.kv_size()], &values),
        )
    }

    /// Writes PEFT's `adapter_config.json` + `adapter_model.safetensors` into `dir`.
    pub fn save_peft_dir(&self, dir: &Path) -> Result<(), AdapterError> {
        std::fs::create_dir_all(dir).map_err(|e| config_err(dir, e.to_string()))?;
        let (config, tensor) = self.to_peft();
        crate::io::write_safetensors_atomic(
            &dir.join(crate::peft::config::WEIGHTS_FILE),
            &[(PEFT_KEY.to_string(), tensor)],
            None,
        )?;
        let text =
            serde_json::to_string_pretty(&config).map_err(|e| config_err(dir, e.to_string()))?;
        crate::io::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())?;
        Ok(())
    }

    /// Reads a PEFT PREFIX_TUNING folder whose layout fits ChatGLM (`token_dim` =
    /// groups · kv_channels) into a prefix without projection.
    pub fn from_peft_dir(
        dir: &Path,
        config: &ChatGlmConfig,
        device: &Device,
    ) -> Result<Self, AdapterError> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| config_err(&path, e.to_string()))?;
        let map: Map<String, Value> =
            serde_json::from_str(&text).map_err(|e| config_err(&path, e.to_string()))?;
        let field = |k: &str| map.get(k).and_then(Value::as_u64).map(|v| v as usize);
        if map.get("peft_type").and_then(Value::as_str) != Some("PREFIX_TUNING") {
            return Err(config_err(&path, "expected peft_type PREFIX_TUNING".into()));
        }
        let shape = PrefixShape::of(config);
        let token_dim = shape.groups * shape.kv_channels;
        let p = field("num_virtual_tokens")
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                config_err(
                    &path,
                    "num_virtual_tokens must be a positive integer".into(),
                )
            })?;
        if field("num_layers") != Some(shape.num_layers) || field("token_dim") != Some(token_dim) {
            return Err(config_err(&path, format!(
                "num_layers {:?} and token_dim {:?} do not fit this ChatGLM model (needs num_layers {} and token_dim = multi_query_group_num · kv_channels = {token_dim}; PEFT's own prefix tuning on ChatGLM records hidden_size instead, peft#919)",
                field("num_layers"), field("token_dim"), shape.num_layers
            )));
        }
        let file = Checkpoint::open_files(&[dir.join(crate::peft::config::WEIGHTS_FILE)])?;
        let entry = file
            .get(PEFT_KEY)
            .ok_or_else(|| AdapterError::MissingTensor {
                tensor: PEFT_KEY.into(),
            })?;
        if entry.shape != [p, shape.kv_size()] {
            return Err(AdapterError::ShapeMismatch {
                tensor: PEFT_KEY.into(),
                expected: vec![p, shape.kv_size()],
                actual: entry.shape.clone(),
            });
        }
        let values = file.read_f32(PEFT_KEY)?.0;
        Ok(Self::from_parts(shape, values, p, None, device))
    }
}
