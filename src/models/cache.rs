//! Key/value cache for incremental decoding: per layer, keys and values of every position seen so
//! far, [batch, kv_heads, past, head_dim]. Each step appends only the new positions, so a decoding
//! step costs one token's projections plus attention over the cache.

use burn::tensor::Tensor;

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
    /// Leading cached positions that are prompt-tuning virtual tokens (fed at prefill): always
    /// visible, and absent from the caller's attention mask.
    pub virtual_tokens: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            virtual_tokens: 0,
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends this step's keys/values for `layer` and returns the full ones.
    pub fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Records that `n` new positions were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
