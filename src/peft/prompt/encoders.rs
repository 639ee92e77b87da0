//! The prompt encoders' modules and their tensors by PyTorch name (PEFT's `prompt_encoder`
//! submodule names: `embedding`, `mlp_head.N`, `lstm_head.*_l{k}[_reverse]`, `transform.N`;
//! LLaMA-Adapter's `model.layers.L.self_attn.adaption_*`).

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::AdapterError;
use crate::models::layers::Embedding;
use crate::models::linear::Linear;
use crate::models::prompt::{AdaptionPrompt, PromptState};
use crate::models::tensor_util::{tensor1, tensor2, to_vec, trainable, transpose};
use crate::peft::prompt::lstm::{BiLstm, LstmCell};

/// The base model's sizes a prompt encoder is built for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

pub use crate::peft::prompt::host::HostTensors;

pub fn linear_ids(name: &str, l: &Linear, out: &mut Vec<(String, ParamId)>) {
    out.push((format!("{name}.weight"), l.weight.id));
    if let Some(b) = &l.bias {
        out.push((format!("{name}.bias"), b.id));
    }
}

/// P-tuning v1 (p_tuning/model.py `PromptEncoder`): `embedding` [n, D], then for MLP
/// `mlp_head = Linear(D,h) → ReLU → Linear(h,h) → ReLU → Linear(h,D)`, for LSTM a bidirectional
/// `lstm_head` and `mlp_head = Linear(2h,2h) → ReLU → Linear(2h,D)`. Reloaded from PEFT's saved
/// output, both heads are absent and the embedding is the output.
#[derive(Module, Debug)]
pub struct PTuningEncoder {
    pub embedding: Embedding,
    pub lstm_head: Option<BiLstm>,
    /// The Linears of `mlp_head` (Sequential indices 0, 2, 4; ReLU between).
    pub mlp_head: Vec<Linear>,
}

impl PTuningEncoder {
    pub fn num_virtual_tokens(&self) -> usize {
        self.embedding.weight.lazy_shape().dims::<2>()[0]
    }

    /// The virtual-token embeddings: [n, D].
    pub fn output(&self) -> Tensor<2> {
        let mut x = self.embedding.weight.val();
        if let Some(lstm) = &self.lstm_head {
            x = lstm.forward(x);
        }
        let last = self.mlp_head.len().saturating_sub(1);
        for (i, l) in self.mlp_head.iter().enumerate() {
            x = l.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }

    /// Builds from `embedding.weight` [n, D] and, when present, the heads' tensors.
    pub fn read(
        host: &HostTensors,
        n: usize,
        d: usize,
        lstm_layers: usize,
        dropout: f64,
        device: &Device,
    ) -> Result<Self, AdapterError> {
        let embedding = host.embedding("embedding.weight", n, d, device)?;
        if !host.contains("mlp_head.0.weight") {
            return Ok(Self {
                embedding,
                lstm_head: None,
                mlp_head: Vec::new(),
            });
        }
        let h_of = |name: &str| host.map.get(name).map_or(0, |(s, _)| s[0]);
        if host.contains("lstm_head.weight_ih_l0") {
            let h = h_of("lstm_head.weight_hh_l0") / 4;
            let cell = |k: usize, suffix: &str| -> Result<LstmCell, AdapterError> {
                let input = if k == 0 { d } else { 2 * h };
                let part = |w: &str, b: &str, i: usize| -> Result<Linear, AdapterError> {
                    let wv = host.get(&format!("lstm_head.{w}_l{k}{suffix}"), &[4 * h, i])?;
                    let bv = host.get(&format!("lstm_head.{b}_l{k}{suffix}"), &[4 * h])?;
                    Ok(Linear::new(
                        trainable(tensor2(transpose(&wv, 4 * h, i), [i, 4 * h], device)),
                        Some(trainable(tensor1(bv, device))),
                    ))
                };
                Ok(LstmCell {
                    ih: part("weight_ih", "bias_ih", input)?,
                    hh: part("weight_hh", "bias_hh", h)?,
                })
            };
            let forward = (0..lstm_layers)
                .map(|k| cell(k, ""))
                .collect::<Result<_, _>>()?;
            let reverse = (0..lstm_layers)
                .map(|k| cell(k, "_reverse"))
                .collect::<Result<_, _>>()?;
            let mlp_head = vec![
                host.linear("mlp_head.0", 2 * h, 2 * h, device)?,
                host.linear("mlp_head.2", 2 * h, d, device)?,
            ];
            return Ok(Self {
                embedding,
                lstm_head: Some(BiLstm::new(forward, reverse, dropout)),
                mlp_head,
            });
        }
        let h = h_of("mlp_head.0.weight");
        let mlp_head = vec![
            host.linear("mlp_head.0", d, h, device)?,
            host.linear("mlp_head.2", h, h, device)?,
            host.linear("mlp_head.4", h, d, device)?,
        ];
        Ok(Self {
            embedding,
            lstm_head: None,
            mlp_head,
        })
    }

    pub fn write(&self, out: &mut HostTensors) {
        out.insert_tensor("embedding.weight", self.embedding.weight.val());
        if let Some(lstm) = &self.lstm_head {
            for (cells, suffix) in [(&lstm.forward_cells, ""), (&lstm.reverse_cells, "_reverse")] {
                for (k, c) in cells.iter().enumerate() {
                    for (lin, w, b) in [
                        (&c.ih, "weight_ih", "bias_ih"),
                        (&c.hh, "weight_hh", "bias_hh"),
                    ] {
                        let (i, o) = (lin.in_features(), lin.out_features());
                        let wv = transpose(&to_vec(lin.weight.val()), i, o);
                        out.insert(&format!("lstm_head.{w}_l{k}{suffix}"), vec![o, i], wv);
                        if let Some(bias) = &lin.bias {
                            out.insert_tensor(&format!("lstm_head.{b}_l{k}{suffix}"), bias.val());
                        }
                    }
                }
            }
        }
        for (i, l) in self.mlp_head.iter().enumerate() {
            out.insert_linear(&format!("mlp_head.{}", 2 * i), l);
        }
    }

    pub fn param_ids(&self, out: &mut Vec<(String, ParamId)>) {
        out.push(("embedding.weight".into(), self.embedding.weight.id));
        if let Some(lstm) = &self.lstm_head {
            for (cells, suffix) in [(&lstm.forward_cells, ""), (&lstm.reverse_cells, "_reverse")] {
                for (k, c) in cells.iter().enumerate() {
                    for (lin, w, b) in [
                        (&c.ih, "weight_ih", "bias_ih"),
                        (&c.hh, "weight_hh", "bias_hh"),
                    ] {
                        out.push((format!("lstm_head.{w}_l{k}{suffix}"), lin.weight.id));
                        if let Some(bias) = &lin.bias {
                            out.push((format!("lstm_head.{b}_l{k}{suffix}"), bias.id));
                        }
                    }
                }
            }
        }
        for (i, l) in self.mlp_head.iter().enumerate() {
            linear_ids(&format!("mlp_head.{}", 2 * i), l, out);
        }
    }
}

/// How a flat prefix vector splits into layers: `[layers · 2 · kv_heads · head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    pub fn flat(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim
    }
}

/// Prefix tuning / P-tuning v2 (prefix_tuning/model.py `PrefixEncoder`): `embedding`
/// [n, layers·2·token_dim], or with `prefix_projection` `embedding` [n, token_dim] →
/// `transform = Linear(token_dim, h) → Tanh → Linear(h, layers·2·token_dim)`;
/// token_dim = kv_heads · head_dim (GQA, PEFT utils/other.py).
#[derive(Module, Debug)]
pub struct PrefixTuning {
    pub embedding: Embedding,
    /// `transform.0`, `transform.2` (empty without projection).
    pub transform: Vec<Linear>,
    #[module(skip)]
    pub shape: KvShape,
}

impl PrefixTuning {
    pub fn num_virtual_tokens(&self) -> usize {
        self.embedding.weight.lazy_shape().dims::<2>()[0]
    }

    /// The flat prefix vectors: [n, layers · 2 · kv_heads · head_dim].
    pub fn flat(&self) -> Tensor<2> {
        let x = self.embedding.weight.val();
        match self.transform.as_slice() {
            [first, second] => second.forward(tanh(first.forward(x))),
            _ => x,
        }
    }

    pub fn kv_prefix(&self, batch: usize) -> Vec<(Tensor<4>, Tensor<4>)> {
        let s = self.shape;
        PromptState::kv_from_flat(self.flat(), s.layers, s.kv_heads, s.head_dim, batch)
    }

    pub fn read(
        host: &HostTensors,
        n: usize,
        shape: KvShape,
        device: &Device,
    ) -> Result<Self, AdapterError> {
        let token_dim = shape.kv_heads * shape.head_dim;
        if host.contains("transform.0.weight") {
            let h = host.map.get("transform.0.weight").map_or(0, |(s, _)| s[0]);
            return Ok(Self {
                embedding: host.embedding("embedding.weight", n, token_dim, device)?,
                transform: vec![
                    host.linear("transform.0", token_dim, h, device)?,
                    host.linear("transform.2", h, shape.flat(), device)?,
                ],
                shape,
            });
        }
        Ok(Self {
            embedding: host.embedding("embedding.weight", n, shape.flat(), device)?,
            transform: Vec::new(),
            shape,
        })
    }

    pub fn write(&self, out: &mut HostTensors) {
        out.insert_tensor("embedding.weight", self.embedding.weight.val());
        for (i, l) in self.transform.iter().enumerate() {
            out.insert_linear(&format!("transform.{}", 2 * i), l);
        }
    }

    pub fn param_ids(&self, out: &mut Vec<(String, ParamId)>) {
        out.push(("embedding.weight".into(), self.embedding.weight.id));
        for (i, l) in self.transform.iter().enumerate() {
            linear_ids(&format!("transform.{}", 2 * i), l, out);
        }
    }
}

/// One layer's LLaMA-Adapter parameters (adaption_prompt/layer.py).
#[derive(Module, Debug)]
pub struct AdaptionLayer {
    /// [1, adapter_len, hidden]
    pub adaption_prompt: Param<Tensor<3>>,
    /// [1], zero at init.
    pub adaption_gate: Param<Tensor<1>>,
}

/// LLaMA-Adapter: prompts and gates of the top `layers.len()` decoder layers.
#[derive(Module, Debug)]
pub struct AdaptionPrompts {
    pub layers: Vec<AdaptionLayer>,
    #[module(skip)]
    pub first_layer: usize,
    #[module(skip)]
    pub num_layers: usize,
}

fn adaption_key(layer: usize, name: &str) -> String {
    format!("base_model.model.model.layers.{layer}.self_attn.{name}")
}

impl AdaptionPrompts {
    pub fn per_layer(&self) -> Vec<Option<AdaptionPrompt>> {
        (0..self.num_layers)
            .map(|l| {
                l.checked_sub(self.first_layer)
                    .and_then(|i| self.layers.get(i))
                    .map(|a| (a.adaption_prompt.val(), a.adaption_gate.val()))
            })
            .collect()
    }

    /// Reads the top `adapter_layers` of `num_layers` from PEFT's keys.
    pub fn read(
        host: &HostTensors,
        adapter_len: usize,
        adapter_layers: usize,
        dims: Dims,
        device: &Device,
    ) -> Result<Self, AdapterError> {
        let first_layer = dims.layers - adapter_layers;
        let layers = (first_layer..dims.layers)
            .map(|l| {
                let p = host.get(
                    &adaption_key(l, "adaption_prompt"),
                    &[1, adapter_len, dims.hidden],
                )?;
                let g = host.get(&adaption_key(l, "adaption_gate"), &[1])?;
                Ok(AdaptionLayer {
                    adaption_prompt: trainable(Tensor::from_data(
                        TensorData::new(p, [1, adapter_len, dims.hidden]),
                        device,
                    )),
                    adaption_gate: trainable(tensor1(g, device)),
                })
            })
            .collect::<Result<_, AdapterError>>()?;
        Ok(Self {
            layers,
            first_layer,
            num_layers: dims.layers,
        })
    }

    pub fn write(&self, out: &mut HostTensors) {
        for (i, a) in self.layers.iter().enumerate() {
            let l = self.first_layer + i;
            out.insert_tensor(&adaption_key(l, "adaption_prompt"), a.adaption_prompt.val());
            out.insert_tensor(&adaption_key(l, "adaption_gate"), a.adaption_gate.val());
        }
    }

    pub fn param_ids(&self, out: &mut Vec<(String, ParamId)>) {
        for (i, a) in self.layers.iter().enumerate() {
            let l = self.first_layer + i;
            out.push((adaption_key(l, "adaption_prompt"), a.adaption_prompt.id));
            out.push((adaption_key(l, "adaption_gate"), a.adaption_gate.id));
        }
    }
}
