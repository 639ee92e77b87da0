//! The adapters a linear layer can carry: a closed enum dispatched by `match`.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::Linear;
use crate::peft::adalora::AdaLora;
use crate::peft::ia3::Ia3;
use crate::peft::lora::Lora;

#[derive(Module, Debug)]
pub enum LinearAdapter {
    /// LoRA, rsLoRA (a different scale) and DoRA (a magnitude vector).
    Lora(Lora),
    Ia3(Ia3),
    /// AdaLoRA's SVD form.
    AdaLora(AdaLora),
}

impl LinearAdapter {
    /// x: [..., in] -> [..., out]
    pub fn forward<const D: usize>(&self, base: &Linear, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Lora(lora) => lora.forward(base, x),
            Self::Ia3(ia3) => ia3.forward(base, x),
            Self::AdaLora(svd) => svd.forward(base, x),
        }
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        match self {
            Self::Lora(lora) => lora.num_params(),
            Self::Ia3(ia3) => ia3.num_params(),
            Self::AdaLora(svd) => svd.num_params(),
        }
    }
}
