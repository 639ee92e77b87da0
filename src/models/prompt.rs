//! The one entry point for prompt-learning methods (STYLE rule 6): a forward call may carry a
//! prompt state, built by the method from its learned parameters. Models consume it; nothing else
//! checks which method made it.

use burn::tensor::Tensor;

/// One layer's LLaMA-Adapter prompt: `(adaption_prompt [1, adapter_len, hidden], adaption_gate [1])`.
pub type AdaptionPrompt = (Tensor<3>, Tensor<1>);

/// What a prompt-learning method adds to a forward pass.
#[derive(Debug, Clone, Default)]
pub struct PromptState {
    /// Virtual-token embeddings prepended to the input embeddings: [batch, virtual, hidden]
    /// (prompt tuning, P-tuning v1). Their positions come first (`0..virtual`); they are fed at
    /// prefill only and then live in the KV cache, as PEFT's `prepare_inputs_for_generation`.
    pub input_embeds: Option<Tensor<3>>,
    /// Per-layer key/value prefixes, each `(k, v)` of [batch, kv_heads, prefix, head_dim]
    /// (prefix tuning, P-tuning v2, ChatGLM's `prefix_encoder`). They are always attended to.
    /// PEFT shifts the positions of real tokens by `prefix` (the prefix is the first `prefix`
    /// entries of transformers' `DynamicCache`, so `cache_position` starts there); ChatGLM does
    /// not (its `get_position_ids` is `arange(seq)`, confirmed by the chatglm-tiny-ptuning-v2
    /// fixtures).
    pub kv_prefix: Option<Vec<(Tensor<4>, Tensor<4>)>>,
    /// LLaMA-Adapter, per layer (`None` below the top `adapter_layers`): PEFT's `AdaptedAttention`.
    pub adaption: Option<Vec<Option<AdaptionPrompt>>>,
}

impl PromptState {
    /// Number of prefix key/value positions.
    pub fn prefix_len(&self) -> usize {
        self.kv_prefix
            .as_ref()
            .and_then(|p| p.first())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    /// Number of prepended virtual tokens.
    pub fn virtual_tokens(&self) -> usize {
        self.input_embeds.as_ref().map_or(0, |e| e.dims()[1])
    }

    /// Layer `layer`'s adaption prompt, if it has one.
    pub fn adaption(&self, layer: usize) -> Option<&AdaptionPrompt> {
        self.adaption
            .as_ref()
            .and_then(|a| a.get(layer))
            .and_then(Option::as_ref)
    }

    /// Per-layer prefixes from the flat per-token vectors PEFT and ChatGLM both use:
    /// flat [prefix, layers · 2 · kv_heads · head_dim], each token `[K_0 | V_0 | K_1 | V_1 | …]`,
    /// every block head-major (PEFT `get_prompt`: `view(B, p, 2L, H, d).permute(2, 0, 3, 1, 4)
    /// .split(2)`) -> layers × `(k, v)` of [batch, kv_heads, prefix, head_dim].
    pub fn kv_from_flat(
        flat: Tensor<2>,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        batch: usize,
    ) -> Vec<(Tensor<4>, Tensor<4>)> {
        let p = flat.dims()[0];
        // [p, 2L·H·d] -> [p, 2L, H, d] -> [2L, H, p, d]
        let all = flat
            .reshape([p, layers * 2, kv_heads, head_dim])
            .permute([1, 2, 0, 3]);
        let one = |i: usize| -> Tensor<4> {
            all.clone()
                .slice([i..i + 1, 0..kv_heads, 0..p, 0..head_dim])
                .expand([batch, kv_heads, p, head_dim])
        };
        (0..layers).map(|l| (one(2 * l), one(2 * l + 1))).collect()
    }
}

/// `layer`'s keys/values with the prompt's key/value prefix in front, broadcast over the batch
/// (PEFT passes the prefix as `past_key_values`, so it comes first and carries no rotary).
pub fn prepend_kv_prefix(
    prompt: Option<&PromptState>,
    layer: usize,
    k: Tensor<4>,
    v: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    match prompt
        .and_then(|p| p.kv_prefix.as_ref())
        .and_then(|p| p.get(layer))
    {
        Some((pk, pv)) => {
            let b = k.dims()[0];
            let [_, groups, len, dim] = pk.dims();
            (
                Tensor::cat(vec![pk.clone().expand([b, groups, len, dim]), k], 2),
                Tensor::cat(vec![pv.clone().expand([b, groups, len, dim]), v], 2),
            )
        }
        None => (k, v),
    }
}
