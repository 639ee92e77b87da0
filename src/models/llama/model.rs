//! Llama decoder in burn, as transformers' `LlamaForCausalLM` (eager attention, f32).
//! Fields are named as the checkpoint keys: `model.layers.N.self_attn.q_proj`, `lm_head`, ...

use burn::module::Module;
use burn::tensor::{DType, Tensor};

use crate::kernels::attention::{attention, AttnMask};
use crate::kernels::cross_entropy::HeadLayout;
use crate::models::cache::KvCache;
use crate::models::layers::{Embedding, RmsNorm};
use crate::models::linear::Linear;
use crate::models::mask::Inputs;
use crate::models::prompt::{prepend_kv_prefix, AdaptionPrompt, PromptState};
use crate::models::rope::{apply_rotary, Rope};
use crate::models::tensor_util::ids_tensor;
use crate::peft::prompt::PromptEncoder;

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
    /// A prompt-learning method's trainable encoder (PEFT's `prompt_encoder`), if one is attached:
    /// every forward builds its [`PromptState`] from it.
    pub prompt_encoder: Option<PromptEncoder>,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub rope: Rope,
    /// `--gradient-checkpointing`: each decoder layer keeps only its input for the backward and
    /// recomputes its forward there ([`checkpointed`](crate::models::checkpointing::checkpointed)).
    #[module(skip)]
    pub gradient_checkpointing: bool,
}

/// Per-call values shared by every layer.
struct Step<'a> {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: AttnMask,
    prompt: Option<&'a PromptState>,
    config: &'a LlamaConfig,
}

impl Mlp {
    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj
            .forward(crate::kernels::swiglu::swiglu(gate, up))
    }
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
        // Prefix tuning: the layer's prefix keys/values come first (transformers' DynamicCache
        // built by PEFT `get_prompt`); they carry no rotary and never enter our cache.
        let (k, v) = prepend_kv_prefix(step.prompt, layer, k, v);
        let adapted = step
            .prompt
            .and_then(|p| p.adaption(layer))
            .map(|a| self.adaption(q.clone(), a, c));
        // GQA by head index inside the kernel (transformers' `repeat_kv` in the reference path).
        let out = attention(q, k, v, &step.mask, 1.0 / (d as f64).sqrt());
        let out = self
            .o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d]));
        match adapted {
            Some(extra) => out + extra,
            None => out,
        }
    }

    /// LLaMA-Adapter (PEFT `AdaptedAttention.forward`): the rotated queries attend to the layer's
    /// adaption prompt alone — keys/values `k_proj`/`v_proj` of the prompt, no rotary, softmax
    /// over the prompt tokens — scaled by the zero-initialised gate, then `o_proj` (applied
    /// separately, as PEFT adds `o_proj(adapter)` to the attention output).
    /// q: [batch, heads, seq, d] -> [batch, seq, hidden]
    fn adaption(
        &self,
        q: Tensor<4>,
        (prompt, gate): &AdaptionPrompt,
        c: &LlamaConfig,
    ) -> Tensor<3> {
        let [b, h, s, d] = q.dims();
        let kvh = c.num_key_value_heads;
        let len = prompt.dims()[1];
        let kv = |proj: &Linear| {
            proj.forward(prompt.clone())
                .reshape([1, len, kvh, d])
                .swap_dims(1, 2)
                .expand([b, kvh, len, d])
        };
        let (k, v) = (kv(&self.k_proj), kv(&self.v_proj));
        // softmax(q kᵀ / √d) v · gate: every query sees the whole prompt (no mask).
        let out = attention(q, k, v, &AttnMask::none(), 1.0 / (d as f64).sqrt())
            * gate.clone().reshape([1, 1, 1, 1]);
        let out = out.swap_dims(1, 2).reshape([b, s, h * d]);
        self.o_proj.forward(out)
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

/// One decoder layer under activation checkpointing: the closure owns what it needs from `step`
/// (rotary tables, mask, config) so the backward can re-run it.
fn checkpointed_layer(layer: &DecoderLayer, x: Tensor<3>, step: &Step, i: usize) -> Tensor<3> {
    let (cos, sin, mask) = (step.cos.clone(), step.sin.clone(), step.mask.clone());
    let config = step.config.clone();
    crate::models::checkpointing::checkpointed(layer, x, move |layer, x| {
        let step = Step {
            cos: cos.clone(),
            sin: sin.clone(),
            mask: mask.clone(),
            prompt: None,
            config: &config,
        };
        layer.forward(x, &step, i, None)
    })
}

impl LlamaForCausalLm {
    /// Hidden states after the final norm: [batch, seq, hidden]. With a cache, only the new
    /// positions are computed and appended. `prompt` (else the attached prompt encoder's state)
    /// adds virtual tokens, key/value prefixes or adaption prompts; the output covers the real
    /// tokens only.
    pub fn hidden_states(
        &self,
        inputs: &Inputs,
        cache: Option<&mut KvCache>,
        prompt: Option<&PromptState>,
    ) -> Tensor<3> {
        self.hidden_states_keeping(inputs, cache, prompt, 0)
    }

    /// `hidden_states` that also keeps the last `keep` virtual-token positions in front of the
    /// real ones: [batch, keep + seq, hidden] (the loss needs the last one, see
    /// [`CausalLm::forward_for_loss`](crate::models::CausalLm::forward_for_loss)).
    pub fn hidden_states_keeping(
        &self,
        inputs: &Inputs,
        mut cache: Option<&mut KvCache>,
        prompt: Option<&PromptState>,
        keep: usize,
    ) -> Tensor<3> {
        let device = self.model.embed_tokens.weight.device();
        let own = match (prompt, &self.prompt_encoder) {
            (None, Some(encoder)) => Some(encoder.prompt_state(inputs.batch)),
            _ => None,
        };
        let prompt = prompt.or(own.as_ref());
        let past = cache.as_ref().map_or(0, |c| c.len());
        // Virtual tokens enter at prefill only; afterwards they are the cache's first positions.
        let embeds = prompt
            .and_then(|p| p.input_embeds.clone())
            .filter(|_| past == 0);
        let prepended = embeds.as_ref().map_or(0, |e| e.dims()[1]);
        let cached = cache.as_ref().map_or(0, |c| c.virtual_tokens);
        let ext = inputs.with_virtual(prepended, cached);
        let prefix = prompt.map_or(0, PromptState::prefix_len);
        let positions: Vec<usize> = ext
            .positions(past)
            .into_iter()
            .map(|p| p + prefix)
            .collect();
        let (cos, sin) = self.rope.cos_sin(&positions, ext.batch, ext.seq, &device);
        let mask = ext.attn_mask(past, prefix);
        let step = Step {
            cos,
            sin,
            mask,
            prompt,
            config: &self.config,
        };
        let words = self.model.embed_tokens.forward(ids_tensor(
            &inputs.ids,
            inputs.batch,
            inputs.seq,
            &device,
        ));
        let mut x = match embeds {
            Some(e) => Tensor::cat(vec![e, words], 1),
            None => words,
        };
        // Checkpointing needs a layer whose only per-call inputs are shared constants: no cache
        // (inference), no per-layer prompt tensors (prefix tuning, LLaMA-Adapter: refused by the CLI).
        let recompute = self.gradient_checkpointing
            && cache.is_none()
            && prompt.is_none_or(|p| p.kv_prefix.is_none() && p.adaption.is_none());
        for (i, layer) in self.model.layers.iter().enumerate() {
            x = match recompute {
                true => checkpointed_layer(layer, x, &step, i),
                false => layer.forward(x, &step, i, cache.as_deref_mut()),
            };
        }
        if let Some(cache) = cache {
            cache.advance(ext.seq);
            cache.virtual_tokens += prepended;
        }
        let x = if prepended > 0 {
            let [b, t, hidden] = x.dims();
            x.slice([0..b, prepended - keep.min(prepended)..t, 0..hidden])
        } else {
            x
        };
        self.model.norm.forward(x)
    }

    /// hidden: [batch, seq, hidden] -> logits [batch, seq, vocab]
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                // One 2-D matmul on the transposed view of the tied embedding: a 3-D matmul
                // would reshape (on flex: copy) the whole [vocab, hidden] matrix every call.
                let [b, s, h] = hidden.dims();
                let weight = self.model.embed_tokens.weight.val();
                let hidden = crate::models::ggml_activations::for_tied_head(hidden, weight.dtype());
                if let Some(logits) = crate::kernels::gemv::few_rows_linear_t(&hidden, &weight) {
                    return logits;
                }
                let vocab = weight.dims()[0];
                let weight = if weight.dtype() == DType::F32 {
                    weight
                } else {
                    weight.cast(DType::F32)
                };
                hidden
                    .reshape([b * s, h])
                    .matmul(weight.transpose())
                    .reshape([b, s, vocab])
            }
        }
    }

    /// The output head's weight when the fused loss can take it: the tied embedding
    /// ([vocab, hidden]) or a plain frozen `lm_head` ([hidden, vocab]).
    pub fn output_head(&self) -> Option<(Tensor<2>, HeadLayout)> {
        match &self.lm_head {
            Some(head) => head
                .plain_frozen_weight()
                .map(|w| (w, HeadLayout::HiddenMajor)),
            None => {
                let weight = self.model.embed_tokens.weight.val();
                (!weight.is_require_grad()).then_some((weight, HeadLayout::VocabMajor))
            }
        }
    }

    /// Logits for every real position: [batch, seq, vocab].
    pub fn forward(
        &self,
        inputs: &Inputs,
        cache: Option<&mut KvCache>,
        prompt: Option<&PromptState>,
    ) -> Tensor<3> {
        self.logits(self.hidden_states(inputs, cache, prompt))
    }
}
