//! The one entry point for prompt-learning methods (STYLE rule 6): a forward call may carry a
//! prompt state, built by the method from its learned parameters. Models consume it; nothing else
//! checks which method made it.

use burn::tensor::Tensor;

/// What a prompt-learning method adds to a forward pass.
#[derive(Debug, Clone, Default)]
pub struct PromptState {
    /// Virtual-token embeddings prepended to the input embeddings: [batch, virtual, hidden]
    /// (prompt tuning, P-tuning v1). Their positions come first.
    pub input_embeds: Option<Tensor<3>>,
    /// Per-layer key/value prefixes, each `(k, v)` of [batch, kv_heads, prefix, head_dim]
    /// (prefix tuning, P-tuning v2, ChatGLM's `prefix_encoder`). They are always attended to.
    /// PEFT shifts the positions of real tokens by `prefix`; ChatGLM does not (its
    /// `get_position_ids` is `arange(seq)`, confirmed by the chatglm-tiny-ptuning-v2 fixtures).
    pub kv_prefix: Option<Vec<(Tensor<4>, Tensor<4>)>>,
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
}
