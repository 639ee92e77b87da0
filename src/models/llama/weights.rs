//! Loading a Llama checkpoint: every expected key is read (memory-mapped, one tensor at a time),
//! its shape checked, widened to f32 and, for linear weights, transposed from PyTorch's
//! `[out, in]` to burn's `[in, out]`. With a bf16/f16 `base_dtype` (`--base-dtype`), linear and
//! embedding weights are narrowed to it in the same pass, tensor by tensor. Missing tensors are
//! reported together; unexpected ones are listed in a warning.

use std::collections::BTreeSet;

use burn::tensor::{DType, Device, Tensor};

use crate::error::LoadError;
use crate::gguf::base::GgufBase;
use crate::io::Checkpoint;
use crate::models::layers::{Embedding, RmsNorm};
use crate::models::linear::Linear;
use crate::models::rope::Rope;
use crate::models::tensor_util::{base_tensor2, frozen, tensor1};
use crate::quant::{BaseQuant, QMatrix, QuantWeight};

use super::model::{Attention, DecoderLayer, LlamaModel, Mlp};
use super::{LlamaConfig, LlamaForCausalLm};

/// Reads tensors by name, remembering which were used and which were missing.
pub struct Reader<'a> {
    pub checkpoint: &'a Checkpoint,
    pub device: &'a Device,
    pub used: BTreeSet<String>,
    pub missing: Vec<String>,
    /// The dtype frozen linear and embedding weights are stored in (`--base-dtype`); norms and
    /// biases stay f32.
    pub base_dtype: DType,
    /// `--quantize-base`: frozen linear weights quantized tensor by tensor as they load.
    pub quant: Option<BaseQuant>,
    /// `--model file.gguf`: tensors come from the GGUF file instead of `checkpoint`, its
    /// quantized linear weights kept in their blocks.
    pub gguf: Option<&'a GgufBase>,
}

impl<'a> Reader<'a> {
    pub fn new(checkpoint: &'a Checkpoint, device: &'a Device) -> Self {
        Self {
            checkpoint,
            device,
            used: BTreeSet::new(),
            missing: Vec::new(),
            base_dtype: DType::F32,
            quant: None,
            gguf: None,
        }
    }

    /// Frozen linear and embedding weights narrowed to `dtype` tensor by tensor as they load.
    pub fn with_base_dtype(mut self, dtype: DType) -> Self {
        self.base_dtype = dtype;
        self
    }

    /// Frozen linear weights quantized with `quant` as they load (`--quantize-base`).
    pub fn with_quant(mut self, quant: Option<BaseQuant>) -> Self {
        self.quant = quant;
        self
    }

    /// Tensors read from the GGUF file `base` (`--model file.gguf`).
    pub fn with_gguf(mut self, base: &'a GgufBase) -> Self {
        self.gguf = Some(base);
        self
    }

    /// Whether the source holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        match self.gguf {
            Some(g) => g.contains(name),
            None => self.checkpoint.contains(name),
        }
    }

    /// A GGUF error as a load error naming the file.
    fn gguf_error(&self, e: crate::error::GgufError) -> LoadError {
        LoadError::Config {
            path: self
                .gguf
                .map(|g| g.path().to_path_buf())
                .unwrap_or_default(),
            message: e.to_string(),
        }
    }

    /// A frozen base matrix `[rows, cols]` in `base_dtype`, transposed from `[cols, rows]` when
    /// `transposed_from`.
    fn base(
        &self,
        name: &str,
        values: Vec<f32>,
        shape: [usize; 2],
        transposed_from: bool,
    ) -> Result<Tensor<2>, LoadError> {
        base_tensor2(values, shape, transposed_from, self.base_dtype, self.device).ok_or_else(
            || LoadError::UnsupportedDtype {
                path: std::path::PathBuf::from("--base-dtype"),
                tensor: name.to_string(),
                dtype: format!("{:?}", self.base_dtype),
            },
        )
    }

    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>, LoadError> {
        if !self.contains(name) {
            self.missing.push(name.to_string());
            return Ok(None);
        }
        self.used.insert(name.to_string());
        if let Some(g) = self.gguf {
            let values = g.read_f32(name).map_err(|e| self.gguf_error(e))?;
            // The GGUF plan checked every shape against the config already.
            let n: usize = shape.iter().product();
            return match values {
                Some(v) if v.len() == n => Ok(Some(v)),
                _ => Err(LoadError::ShapeMismatch {
                    tensor: name.to_string(),
                    expected: shape.to_vec(),
                    actual: Vec::new(),
                }),
            };
        }
        self.checkpoint.read_f32_shaped(name, shape).map(Some)
    }

    /// A `[out, in]` linear weight (+ optional bias) as a frozen burn `Linear`.
    pub fn linear(
        &mut self,
        path: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        let name = format!("{path}.weight");
        // A GGUF base's quantized weight stays in its own blocks.
        let from_gguf = match self.gguf {
            Some(g) => g.quantized(&name).map_err(|e| self.gguf_error(e))?,
            None => None,
        };
        if let Some(q) = from_gguf.filter(|q| q.rows == d_out && q.cols == d_in) {
            self.used.insert(name);
            let bias = if bias {
                let b = self
                    .read(&format!("{path}.bias"), &[d_out])?
                    .unwrap_or_else(|| vec![0.0; d_out]);
                Some(frozen(tensor1(b, self.device)))
            } else {
                None
            };
            let q = QuantWeight(std::sync::Arc::new(q));
            return Ok(Linear::quantized(q, bias, self.device));
        }
        let w = self.read(&name, &[d_out, d_in])?.unwrap_or_default();
        let bias = if bias {
            let b = self
                .read(&format!("{path}.bias"), &[d_out])?
                .unwrap_or_else(|| vec![0.0; d_out]);
            Some(frozen(tensor1(b, self.device)))
        } else {
            None
        };
        // `--quantize-base`: this one tensor is quantized from its [out, in] values (the block
        // layout's own orientation) and its f32 copy dropped before the next is read.
        if let Some(scheme) = self.quant.filter(|_| !w.is_empty()) {
            match QMatrix::quantize(scheme, &w, d_out, d_in) {
                Some(q) => {
                    let q = QuantWeight(std::sync::Arc::new(q));
                    return Ok(Linear::quantized(q, bias, self.device));
                }
                None => tracing::warn!(
                    "{name}: {d_in} inputs are not whole {}-value blocks; kept unquantized",
                    scheme.block()
                ),
            }
        }
        let weight = if w.is_empty() {
            self.base(&name, vec![0.0; d_in * d_out], [d_in, d_out], false)?
        } else {
            self.base(&name, w, [d_in, d_out], true)?
        };
        Ok(Linear::new(frozen(weight), bias))
    }

    pub fn vector(
        &mut self,
        name: &str,
        n: usize,
    ) -> Result<burn::module::Param<burn::tensor::Tensor<1>>, LoadError> {
        let v = self.read(name, &[n])?.unwrap_or_else(|| vec![0.0; n]);
        Ok(frozen(tensor1(v, self.device)))
    }

    pub fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<burn::module::Param<burn::tensor::Tensor<2>>, LoadError> {
        let v = self
            .read(name, &[rows, cols])?
            .unwrap_or_else(|| vec![0.0; rows * cols]);
        Ok(frozen(self.base(name, v, [rows, cols], false)?))
    }

    /// Fails with every missing tensor; warns about tensors nobody read.
    pub fn finish(self) -> Result<(), LoadError> {
        if !self.missing.is_empty() {
            return Err(LoadError::MissingTensors {
                tensors: self.missing,
            });
        }
        let keys: Vec<&str> = match self.gguf {
            Some(g) => g.keys().collect(),
            None => self.checkpoint.entries().map(|e| e.name.as_str()).collect(),
        };
        let unused: Vec<&str> = keys
            .into_iter()
            .filter(|n| !self.used.contains(*n))
            .collect();
        if !unused.is_empty() {
            tracing::warn!(
                "ignoring {} unexpected tensor(s): {}",
                unused.len(),
                unused.join(", ")
            );
        }
        Ok(())
    }
}

fn layer(r: &mut Reader, c: &LlamaConfig, l: usize) -> Result<DecoderLayer, LoadError> {
    let p = format!("model.layers.{l}");
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
    let norm = |r: &mut Reader, name: String| -> Result<RmsNorm, LoadError> {
        Ok(RmsNorm {
            weight: r.vector(&name, h)?,
            eps: c.rms_norm_eps,
        })
    };
    Ok(DecoderLayer {
        self_attn: Attention {
            q_proj: r.linear(&format!("{p}.self_attn.q_proj"), h, q, c.qkv_bias)?,
            k_proj: r.linear(&format!("{p}.self_attn.k_proj"), h, kv, c.qkv_bias)?,
            v_proj: r.linear(&format!("{p}.self_attn.v_proj"), h, kv, c.qkv_bias)?,
            o_proj: r.linear(&format!("{p}.self_attn.o_proj"), q, h, c.o_bias)?,
        },
        mlp: Mlp {
            gate_proj: r.linear(&format!("{p}.mlp.gate_proj"), h, i, c.mlp_bias)?,
            up_proj: r.linear(&format!("{p}.mlp.up_proj"), h, i, c.mlp_bias)?,
            down_proj: r.linear(&format!("{p}.mlp.down_proj"), i, h, c.mlp_bias)?,
        },
        input_layernorm: norm(r, format!("{p}.input_layernorm.weight"))?,
        post_attention_layernorm: norm(r, format!("{p}.post_attention_layernorm.weight"))?,
    })
}

/// Builds the model from a checkpoint on `device`.
pub fn load(
    config: LlamaConfig,
    checkpoint: &Checkpoint,
    device: &Device,
) -> Result<LlamaForCausalLm, LoadError> {
    load_with_base_dtype(config, checkpoint, device, DType::F32)
}

/// As `load`, with the frozen linear and embedding weights stored in `base_dtype`.
pub fn load_with_base_dtype(
    config: LlamaConfig,
    checkpoint: &Checkpoint,
    device: &Device,
    base_dtype: DType,
) -> Result<LlamaForCausalLm, LoadError> {
    load_base(config, checkpoint, device, base_dtype, None)
}

/// As `load_with_base_dtype`, the frozen linear weights quantized with `quant` (`--quantize-base`).
pub fn load_base(
    config: LlamaConfig,
    checkpoint: &Checkpoint,
    device: &Device,
    base_dtype: DType,
    quant: Option<BaseQuant>,
) -> Result<LlamaForCausalLm, LoadError> {
    let r = Reader::new(checkpoint, device)
        .with_base_dtype(base_dtype)
        .with_quant(quant);
    assemble(r, config)
}

/// The model from a GGUF file read in place (`--model file.gguf`): its quantized linear weights
/// stay quantized; `quant` (`--quantize-base`) quantizes the ones stored as F32/F16/BF16.
pub fn load_gguf(
    config: LlamaConfig,
    base: &GgufBase,
    device: &Device,
    base_dtype: DType,
    quant: Option<BaseQuant>,
) -> Result<LlamaForCausalLm, LoadError> {
    let empty = Checkpoint::empty();
    let r = Reader::new(&empty, device)
        .with_base_dtype(base_dtype)
        .with_quant(quant)
        .with_gguf(base);
    assemble(r, config)
}

fn assemble(mut r: Reader, config: LlamaConfig) -> Result<LlamaForCausalLm, LoadError> {
    let embed_tokens = Embedding {
        weight: r.matrix(
            "model.embed_tokens.weight",
            config.vocab_size,
            config.hidden_size,
        )?,
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        layers.push(layer(&mut r, &config, l)?);
    }
    let norm = RmsNorm {
        weight: r.vector("model.norm.weight", config.hidden_size)?,
        eps: config.rms_norm_eps,
    };
    // Tied checkpoints usually omit lm_head.weight; when tied, transformers ignores it if present.
    let lm_head = if config.tie_word_embeddings {
        if r.contains("lm_head.weight") {
            r.used.insert("lm_head.weight".into());
        }
        None
    } else {
        Some(r.linear("lm_head", config.hidden_size, config.vocab_size, false)?)
    };
    r.finish()?;
    let rope = Rope::new(config.head_dim, config.rope_theta, &config.rope_scaling);
    Ok(LlamaForCausalLm {
        model: LlamaModel {
            embed_tokens,
            layers,
            norm,
        },
        lm_head,
        prompt_encoder: None,
        config,
        rope,
        gradient_checkpointing: false,
    })
}
