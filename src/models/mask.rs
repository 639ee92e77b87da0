//! Model inputs on the host: token ids, which key positions are real (padding mask), and position
//! ids. The causal + padding mask is built here, as a description for the attention kernel
//! ([`AttnMask`]) or as one boolean tensor (true = masked out).

use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::kernels::attention::AttnMask;

/// One forward call's inputs. `key_mask` covers the cached and the new positions, as HF's
/// `attention_mask` does; `positions` defaults to `past + i`.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// [batch, seq], row-major.
    pub ids: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// [batch, past + seq]: true where the key is a real token.
    pub key_mask: Option<Vec<bool>>,
    /// [batch, seq]
    pub positions: Option<Vec<usize>>,
}

impl Inputs {
    /// A batch without padding.
    pub fn new(ids: Vec<i64>, batch: usize, seq: usize) -> Self {
        Self {
            ids,
            batch,
            seq,
            key_mask: None,
            positions: None,
        }
    }

    /// From HF-style `input_ids` and `attention_mask` (0/1) rows.
    pub fn with_mask(ids: Vec<i64>, mask: &[i64], batch: usize, seq: usize) -> Self {
        Self {
            ids,
            batch,
            seq,
            key_mask: Some(mask.iter().map(|&m| m != 0).collect()),
            positions: None,
        }
    }

    /// Position ids: explicit, or `past + i` for every row.
    pub fn positions(&self, past: usize) -> Vec<usize> {
        match &self.positions {
            Some(p) => p.clone(),
            None => (0..self.batch)
                .flat_map(|_| (0..self.seq).map(move |i| past + i))
                .collect(),
        }
    }

    /// The same inputs with `prepended` virtual tokens before the new ones and `cached` virtual
    /// tokens at the start of the cache (prompt tuning): their keys are always visible, as PEFT
    /// prepends ones to `attention_mask`; explicit positions of the real tokens move up by the
    /// virtual count, the prepended ones take `0..prepended`. `ids` of the prepended positions
    /// are placeholders (their embeddings come from the prompt encoder).
    pub fn with_virtual(&self, prepended: usize, cached: usize) -> Self {
        if prepended + cached == 0 {
            return self.clone();
        }
        let seq = self.seq + prepended;
        let row_keys = self
            .key_mask
            .as_ref()
            .map_or(0, |m| m.len() / self.batch.max(1));
        let (mut ids, mut key_mask, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for b in 0..self.batch {
            ids.extend(std::iter::repeat_n(0, prepended));
            ids.extend_from_slice(&self.ids[b * self.seq..(b + 1) * self.seq]);
            if let Some(m) = &self.key_mask {
                key_mask.extend(std::iter::repeat_n(true, prepended + cached));
                key_mask.extend_from_slice(&m[b * row_keys..(b + 1) * row_keys]);
            }
            if let Some(p) = &self.positions {
                positions.extend(0..prepended);
                let shift = prepended + cached;
                positions.extend(
                    p[b * self.seq..(b + 1) * self.seq]
                        .iter()
                        .map(|x| x + shift),
                );
            }
        }
        Self {
            ids,
            batch: self.batch,
            seq,
            key_mask: self.key_mask.as_ref().map(|_| key_mask),
            positions: self.positions.as_ref().map(|_| positions),
        }
    }

    /// The mask of [`Inputs::attention_mask`] as a description: `prefix` always-visible keys,
    /// then the `past + seq` keys padded by `key_mask`; causal with offset `prefix + past`.
    pub fn attn_mask(&self, past: usize, prefix: usize) -> AttnMask {
        let keys = past + self.seq;
        let key_valid = self.key_mask.as_ref().map(|m| {
            (0..self.batch)
                .flat_map(|b| {
                    std::iter::repeat_n(true, prefix)
                        .chain(m[b * keys..(b + 1) * keys].iter().copied())
                })
                .collect()
        });
        AttnMask {
            key_valid,
            causal_offset: Some(prefix + past),
        }
    }

    /// The attention mask [batch, 1, seq, prefix + past + seq], true = masked: a key is hidden when it
    /// is padding or lies after the query (causal). `prefix` virtual keys (prefix tuning) are
    /// always visible.
    pub fn attention_mask(&self, past: usize, prefix: usize, device: &Device) -> Tensor<4, Bool> {
        let keys = past + self.seq;
        let total = prefix + keys;
        let mut masked = Vec::with_capacity(self.batch * self.seq * total);
        for b in 0..self.batch {
            for q in 0..self.seq {
                masked.extend(std::iter::repeat_n(false, prefix));
                for k in 0..keys {
                    let padding = self.key_mask.as_ref().is_some_and(|m| !m[b * keys + k]);
                    masked.push(padding || k > past + q);
                }
            }
        }
        Tensor::from_data(
            TensorData::new(masked, [self.batch, 1, self.seq, total]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_tokens_are_visible_keys_and_shift_explicit_positions() {
        let mut inputs = Inputs::with_mask(vec![5, 6, 7, 8], &[1, 0, 1, 1], 2, 2);
        inputs.positions = Some(vec![0, 1, 0, 1]);
        let ext = inputs.with_virtual(3, 0);
        assert_eq!((ext.batch, ext.seq), (2, 5));
        assert_eq!(ext.ids, [0, 0, 0, 5, 6, 0, 0, 0, 7, 8]);
        let mask = ext.key_mask.unwrap();
        assert_eq!(
            mask,
            [true, true, true, true, false, true, true, true, true, true]
        );
        assert_eq!(ext.positions.unwrap(), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        // A decoding step after a prefill that cached 3 virtual tokens: the caller's mask covers
        // its own tokens only.
        let step = Inputs::with_mask(vec![9], &[1, 1], 1, 1).with_virtual(0, 3);
        assert_eq!(step.key_mask.unwrap(), [true; 5]);
    }
}
