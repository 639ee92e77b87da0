//! Rotary position embeddings (Su et al. 2021, arXiv 2104.09864) in transformers' Llama layout:
//! `rotate_half` over the two halves of each head (not interleaved pairs), with the `linear` and
//! `llama3` frequency scalings of transformers' `modeling_rope_utils.py`. Frequencies are computed
//! in f32 as transformers does.

use burn::tensor::{Device, Tensor, TensorData};

/// How `rope_scaling` / `rope_parameters` change the frequencies.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (= inv_freq / factor).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's piecewise scaling by wavelength.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

#[derive(Debug, Clone)]
pub struct Rope {
    /// [head_dim / 2]
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        let base = theta as f32;
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let inv_freq = match *scaling {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                inv_freq
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                        if medium {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        };
        Self { inv_freq, head_dim }
    }

    /// cos and sin for each position: positions [batch, seq] (row-major) -> two [batch, 1, seq, head_dim].
    pub fn cos_sin(
        &self,
        positions: &[usize],
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(batch * seq * self.head_dim);
        let mut sin = Vec::with_capacity(batch * seq * self.head_dim);
        for &p in positions {
            let freqs: Vec<f32> = self.inv_freq.iter().map(|f| f * p as f32).collect();
            for k in 0..self.head_dim {
                let angle = freqs[k % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = [batch, 1, seq, self.head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// x·cos + rotate_half(x)·sin, where rotate_half([x1, x2]) = [−x2, x1] over the last dim.
/// x: [batch, heads, seq, head_dim]; cos, sin: [batch, 1, seq, head_dim].
/// Fused on flex (`kernels::rope`, which keeps this composition as its reference).
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    crate::kernels::rope::rope(x, cos, sin)
}
