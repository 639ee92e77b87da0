//! Llama decoder in burn, as transformers' `LlamaForCausalLM` (eager attention, f32).
//! Fields are named as the checkpoint keys: `model.layers.N.self_attn.q_proj`, `lm_head`, ...

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use crate::models::cache::KvCache;
use crate::models::layers::{Embedding, RmsNorm};
use crate::models::linear::Linear;
use crate::models::mask::Inputs;
use crate::models::rope::{apply_rotary, Rope};
use crate::models::tensor_util::ids_tensor;

use super::LlamaConfig;

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

#[derive(Module, Debug)]
pub struct LlamaForCausalLm {
    pub model: LlamaModel,
    /// `None` when the output head is tied to `model.embed_tokens`.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub rope: Rope,
}

/// Per-call values shared by every layer.
struct Step<'a> {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Tensor<4, burn::tensor::Bool>,
    config: &'a LlamaConfig,
}

impl Mlp {
    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// [batch, kv_heads, seq, d] -> [batch, kv_heads * groups, seq, d] (GQA/MQA: each KV head serves
/// `groups` query heads, as transformers' `repeat_kv`).
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, groups, s, d])
        .reshape([b, h * groups, s, d])
}

impl Attention {
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
        let (h, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, s, h, d])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let q = apply_rotary(q, &step.cos, &step.sin);
        let k = apply_rotary(k, &step.cos, &step.sin);
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v),
            None => (k, v),
        };
        let k = repeat_kv(k, h / kvh);
        let v = repeat_kv(v, h / kvh);
        let keys = k.dims()[2];
        let mask = step.mask.clone().expand([b, h, s, keys]);
        let options = AttentionModuleOptions {
            scale: Some(1.0 / (d as f64).sqrt()),
            softcap: None,
            is_causal: false,
        };
        let out = attention(q, k, v, Some(mask), None, options);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        step: &Step,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), step, layer, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

impl LlamaForCausalLm {
    /// Hidden states after the final norm: [batch, seq, hidden]. With a cache, only the new
    /// positions are computed and appended.
    pub fn hidden_states(&self, inputs: &Inputs, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let device = self.model.embed_tokens.weight.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let positions = inputs.positions(past);
        let (cos, sin) = self
            .rope
            .cos_sin(&positions, inputs.batch, inputs.seq, &device);
        let mask = inputs.attention_mask(past, 0, &device);
        let step = Step {
            cos,
            sin,
            mask,
            config: &self.config,
        };
        let mut x = self.model.embed_tokens.forward(ids_tensor(
            &inputs.ids,
            inputs.batch,
            inputs.seq,
            &device,
        ));
        for (i, layer) in self.model.layers.iter().enumerate() {
            x = layer.forward(x, &step, i, cache.as_deref_mut());
        }
        if let Some(cache) = cache {
            cache.advance(inputs.seq);
        }
        self.model.norm.forward(x)
    }

    /// hidden: [batch, seq, hidden] -> logits [batch, seq, vocab]
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(
                self.model
                    .embed_tokens
                    .weight
                    .val()
                    .transpose()
                    .unsqueeze::<3>(),
            ),
        }
    }

    /// Logits for every position: [batch, seq, vocab].
    pub fn forward(&self, inputs: &Inputs, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.logits(self.hidden_states(inputs, cache))
    }
}
