//! Small layers shared by the model families: token embedding and RMSNorm, with fields named as
//! the checkpoint keys (`weight`).

use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor};

/// Token embedding, `weight: [vocab, hidden]` (same orientation as PyTorch).
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// ids: [batch, seq] -> [batch, seq, hidden]
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let out = burn::tensor::module::embedding(self.weight.val(), ids);
        // A bf16 decoding copy (`CausalLm::cast_decode_weights`): the model computes in f32.
        if out.dtype() == DType::F32 {
            out
        } else {
            out.cast(DType::F32)
        }
    }
}

/// RMSNorm as transformers' `LlamaRMSNorm`: `w · x / sqrt(mean(x²) + eps)`, computed in f32.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// x: [batch, seq, hidden] -> [batch, seq, hidden]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let normed = x * (variance + self.eps).sqrt().recip();
        normed * self.weight.val().unsqueeze::<3>()
    }
}
