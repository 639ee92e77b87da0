//! ChatGLM2/3 decoder in burn, as THUDM's `modeling_chatglm.py` (ChatGLM3-6B), in f32. Fields are
//! named as the checkpoint keys: `transformer.encoder.layers.N.self_attention.query_key_value`,
//! `transformer.output_layer`, ...
//!
//! The reference runs sequence-first (`[seq, batch, heads, dim]`); we run batch-first
//! (`[batch, heads, seq, dim]`) as the Llama code does, which changes no value.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::kernels::attention::{attention, AttnMask};
use crate::kernels::cross_entropy::HeadLayout;
use crate::models::cache::KvCache;
use crate::models::layers::{Embedding, RmsNorm};
use crate::models::linear::Linear;
use crate::models::mask::Inputs;
use crate::models::prompt::{prepend_kv_prefix, PromptState};
use crate::models::tensor_util::ids_tensor;
use crate::peft::prompt::PromptEncoder;

use super::ChatGlmConfig;

#[derive(Module, Debug)]
pub struct GlmEmbedding {
    pub word_embeddings: Embedding,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    /// Fused q | k | v: [hidden] -> [(heads + 2·groups) · kv_channels].
    pub query_key_value: Linear,
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct Mlp {
    /// Fused gate | up for SwiGLU: [hidden] -> [2 · ffn_hidden_size].
    pub dense_h_to_4h: Linear,
    pub dense_4h_to_h: Linear,
}

#[derive(Module, Debug)]
pub struct GlmBlock {
    pub input_layernorm: RmsNorm,
    pub self_attention: SelfAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct GlmTransformer {
    pub layers: Vec<GlmBlock>,
    /// Present when `post_layer_norm`.
    pub final_layernorm: Option<RmsNorm>,
}

#[derive(Module, Debug)]
pub struct ChatGlmModel {
    pub embedding: GlmEmbedding,
    pub encoder: GlmTransformer,
    pub output_layer: Linear,
    /// P-tuning v2 (`transformer.prefix_encoder`, present when `pre_seq_len` is set): every
    /// forward builds its key/value prefixes from it.
    pub prefix_encoder: Option<PromptEncoder>,
}

#[derive(Module, Debug)]
pub struct ChatGlmForConditionalGeneration {
    pub transformer: ChatGlmModel,
    #[module(skip)]
    pub config: ChatGlmConfig,
    #[module(skip)]
    pub rope: GlmRope,
    /// `--gradient-checkpointing`: each block keeps only its input for the backward and
    /// recomputes its forward there ([`checkpointed`](crate::models::checkpointing::checkpointed)).
    #[module(skip)]
    pub gradient_checkpointing: bool,
}

/// ChatGLM's rotary embedding (`RotaryEmbedding(kv_channels // 2)`): it rotates only the first
/// half of each head's dims, as interleaved pairs `(x[2i], x[2i+1])` (`apply_rotary_pos_emb`).
#[derive(Debug, Clone)]
pub struct GlmRope {
    /// θ_i = 1 / base^(2i / rot_dim), i < rot_dim / 2; base = 10000 · rope_ratio.
    inv_freq: Vec<f32>,
    /// kv_channels / 2
    rot_dim: usize,
}

impl GlmRope {
    pub fn new(config: &ChatGlmConfig) -> Self {
        let rot_dim = config.kv_channels / 2;
        let base = (10000.0 * config.rope_ratio) as f32;
        let inv_freq = (0..rot_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / rot_dim as f32))
            .collect();
        Self { inv_freq, rot_dim }
    }

    /// positions [batch, seq] (row-major) -> cos, sin: [batch, 1, seq, rot_dim / 2, 1]
    fn cos_sin(
        &self,
        positions: &[usize],
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> (Tensor<5>, Tensor<5>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in positions {
            for f in &self.inv_freq {
                // `torch.outer(seq_idx, theta)` in f32, as the reference cache.
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = [batch, 1, seq, self.rot_dim / 2, 1];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// x: [batch, heads, seq, d] -> same; pairs of the first `rot_dim` dims rotated, the rest passed
    /// (fused on flex: `kernels::rope::rope_pairs`, which keeps the composition as its reference).
    fn apply(&self, x: Tensor<4>, cos: &Tensor<5>, sin: &Tensor<5>) -> Tensor<4> {
        crate::kernels::rope::rope_pairs(x, cos, sin, self.rot_dim)
    }
}

/// Per-call values shared by every layer.
struct Step<'a> {
    cos: Tensor<5>,
    sin: Tensor<5>,
    /// Causal + padding over prefix + past + seq keys.
    mask: AttnMask,
    rope: &'a GlmRope,
    prompt: Option<&'a PromptState>,
    config: &'a ChatGlmConfig,
}

impl Mlp {
    /// SwiGLU: `silu(x[..., :ffn]) * x[..., ffn:]` on the fused projection (reference `swiglu`).
    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let fused = self.dense_h_to_4h.forward(x);
        self.dense_4h_to_h
            .forward(crate::kernels::swiglu::swiglu_packed(fused))
    }
}

impl SelfAttention {
    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(
        &self,
        x: Tensor<3>,
        step: &Step,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let c = step.config;
        let [b, s, _] = x.dims();
        let (h, g, d) = (c.num_attention_heads, c.kv_groups, c.kv_channels);
        let qkv = self.query_key_value.forward(x);
        // split([heads·d, groups·d, groups·d], dim=-1) as the reference.
        let q = qkv
            .clone()
            .slice([0..b, 0..s, 0..h * d])
            .reshape([b, s, h, d])
            .swap_dims(1, 2);
        let k = qkv
            .clone()
            .slice([0..b, 0..s, h * d..(h + g) * d])
            .reshape([b, s, g, d])
            .swap_dims(1, 2);
        let v = qkv
            .slice([0..b, 0..s, (h + g) * d..(h + 2 * g) * d])
            .reshape([b, s, g, d])
            .swap_dims(1, 2);
        let q = step.rope.apply(q, &step.cos, &step.sin);
        let k = step.rope.apply(k, &step.cos, &step.sin);
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v),
            None => (k, v),
        };
        // P-tuning v2: the layer's prefix keys/values come first (`torch.cat((cache_k, key_layer))`
        // with the prefix as `past_key_values`); they carry no rotary.
        let (k, v) = prepend_kv_prefix(step.prompt, layer, k, v);
        // Each group serves `h / g` consecutive query heads (`unsqueeze(-2).expand(...)` in the
        // reference's multi-query branch): indexed inside the kernel. torch's
        // scaled_dot_product_attention with its default scale 1/√d (the fixtures' note).
        let out = attention(q, k, v, &step.mask, 1.0 / (d as f64).sqrt());
        self.dense
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

impl GlmBlock {
    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(
        &self,
        x: Tensor<3>,
        step: &Step,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attn = self
            .self_attention
            .forward(normed.clone(), step, layer, cache);
        let residual = if step.config.apply_residual_connection_post_layernorm {
            normed
        } else {
            x
        };
        let h = residual + attn;
        let normed = self.post_attention_layernorm.forward(h.clone());
        let residual = if step.config.apply_residual_connection_post_layernorm {
            normed.clone()
        } else {
            h
        };
        residual + self.mlp.forward(normed)
    }
}

/// One block under activation checkpointing: the closure owns what it needs from `step`.
fn checkpointed_block(layer: &GlmBlock, x: Tensor<3>, step: &Step, i: usize) -> Tensor<3> {
    let (cos, sin, mask) = (step.cos.clone(), step.sin.clone(), step.mask.clone());
    let (rope, config) = (step.rope.clone(), step.config.clone());
    crate::models::checkpointing::checkpointed(layer, x, move |layer, x| {
        let step = Step {
            cos: cos.clone(),
            sin: sin.clone(),
            mask: mask.clone(),
            rope: &rope,
            prompt: None,
            config: &config,
        };
        layer.forward(x, &step, i, None)
    })
}

impl ChatGlmForConditionalGeneration {
    /// Hidden states after the final norm: [batch, seq, hidden]. With a cache, only the new
    /// positions are computed and appended; `prompt`'s key/value prefixes are attended to by
    /// every position and never enter the cache.
    pub fn hidden_states(
        &self,
        inputs: &Inputs,
        mut cache: Option<&mut KvCache>,
        prompt: Option<&PromptState>,
    ) -> Tensor<3> {
        let device = self.transformer.embedding.word_embeddings.weight.device();
        let own = match (prompt, &self.transformer.prefix_encoder) {
            (None, Some(encoder)) => Some(encoder.prompt_state(inputs.batch)),
            _ => None,
        };
        let prompt = prompt.or(own.as_ref());
        let past = cache.as_ref().map_or(0, |c| c.len());
        // Positions are `arange(seq)` (reference `get_position_ids`), not shifted by `pre_seq_len`.
        let positions = inputs.positions(past);
        let (cos, sin) = self
            .rope
            .cos_sin(&positions, inputs.batch, inputs.seq, &device);
        let prefix = prompt.map_or(0, PromptState::prefix_len);
        // `get_masks`: prefix columns all visible, then causal + padding over the real keys.
        let mask = inputs.attn_mask(past, prefix);
        let step = Step {
            cos,
            sin,
            mask,
            rope: &self.rope,
            prompt,
            config: &self.config,
        };
        let ids = ids_tensor(&inputs.ids, inputs.batch, inputs.seq, &device);
        let mut x = self.transformer.embedding.word_embeddings.forward(ids);
        // No cache (inference) and no per-layer prefixes (P-tuning v2: refused by the CLI).
        let recompute = self.gradient_checkpointing
            && cache.is_none()
            && prompt.is_none_or(|p| p.kv_prefix.is_none());
        for (i, layer) in self.transformer.encoder.layers.iter().enumerate() {
            x = match recompute {
                true => checkpointed_block(layer, x, &step, i),
                false => layer.forward(x, &step, i, cache.as_deref_mut()),
            };
        }
        if let Some(cache) = cache {
            cache.advance(inputs.seq);
        }
        match &self.transformer.encoder.final_layernorm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }

    /// hidden: [batch, seq, hidden] -> logits [batch, seq, vocab]
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.transformer.output_layer.forward(hidden)
    }

    /// The output layer's weight ([hidden, vocab]) when the fused loss can take it.
    pub fn output_head(&self) -> Option<(Tensor<2>, HeadLayout)> {
        self.transformer
            .output_layer
            .plain_frozen_weight()
            .map(|w| (w, HeadLayout::HiddenMajor))
    }

    /// Logits for every position: [batch, seq, vocab].
    pub fn forward(
        &self,
        inputs: &Inputs,
        cache: Option<&mut KvCache>,
        prompt: Option<&PromptState>,
    ) -> Tensor<3> {
        self.logits(self.hidden_states(inputs, cache, prompt))
    }
}
