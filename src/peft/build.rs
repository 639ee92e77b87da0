//! Building adapters: freshly initialised for training (PEFT's inits), or from the tensors of a
//! PEFT `adapter_model.safetensors`.

use burn::nn::DropoutConfig;
use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::AdapterError;
use crate::models::tensor_util::{tensor1, tensor2, to_vec, trainable};
use crate::models::Linear;
use crate::peft::adalora::AdaLora;
use crate::peft::adapter::LinearAdapter;
use crate::peft::config::LoraInit;
use crate::peft::ia3::Ia3;
use crate::peft::lora::Lora;
use crate::peft::walker::{Spec, Target};

/// Host values of one adapter, in PEFT's orientation: `lora_a: [r, in]`, `lora_b: [out, r]`.
#[derive(Debug, Clone)]
pub enum AdapterValues {
    Lora {
        lora_a: Vec<f32>,
        lora_b: Vec<f32>,
        magnitude: Option<Vec<f32>>,
    },
    Ia3 {
        ia3_l: Vec<f32>,
    },
    /// AdaLoRA's kept ranks only (`k` = kept count): `lora_a: [k, in]`, `lora_e: [k]`,
    /// `lora_b: [out, k]`.
    AdaLora {
        lora_a: Vec<f32>,
        lora_e: Vec<f32>,
        lora_b: Vec<f32>,
    },
}

pub(crate) fn uniform(n: usize, bound: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
}

/// A standard normal sample (Box–Muller).
pub(crate) fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Fresh values as PEFT initialises them (tuners/lora/layer.py `reset_lora_parameters`,
/// ia3/layer.py): kaiming-uniform(a = √5) gives U(±1/√fan_in).
pub fn init_values(target: &Target, init: LoraInit, rng: &mut StdRng) -> AdapterValues {
    let (i, o) = (target.d_in, target.d_out);
    match target.spec {
        Spec::Lora { r, .. } => {
            let lora_a = match init {
                LoraInit::Gaussian => (0..r * i).map(|_| normal(rng) / r as f32).collect(),
                LoraInit::Default | LoraInit::Random => {
                    uniform(r * i, 1.0 / (i as f32).sqrt(), rng)
                }
            };
            let lora_b = match init {
                LoraInit::Random => uniform(o * r, 1.0 / (r as f32).sqrt(), rng),
                _ => vec![0.0; o * r],
            };
            AdapterValues::Lora {
                lora_a,
                lora_b,
                magnitude: None,
            }
        }
        Spec::Ia3 { feedforward } => AdapterValues::Ia3 {
            ia3_l: vec![1.0; if feedforward { i } else { o }],
        },
        // PEFT `AdaLoraLayer.reset_lora_parameters`: Λ = 0, Q and P ~ N(0, 0.02).
        Spec::AdaLora { init_r, .. } => AdapterValues::AdaLora {
            lora_a: (0..init_r * i).map(|_| 0.02 * normal(rng)).collect(),
            lora_e: vec![0.0; init_r],
            lora_b: (0..o * init_r).map(|_| 0.02 * normal(rng)).collect(),
        },
    }
}

/// Places the rows of the `k` kept ranks back at their positions among `init_r`, zeros elsewhere:
/// a pruned rank has Λ = 0 and contributes nothing.
fn scatter_ranks(kept_rows: &[f32], kept: &[bool], row_len: usize) -> Vec<f32> {
    let mut out = vec![0.0; kept.len() * row_len];
    let mut src = kept_rows.chunks_exact(row_len.max(1));
    for (slot, _) in kept.iter().enumerate().filter(|(_, &k)| k) {
        if let Some(row) = src.next() {
            out[slot * row_len..(slot + 1) * row_len].copy_from_slice(row);
        }
    }
    out
}

/// DoRA's magnitude at init: ‖W + s·B·A‖ per output row (PEFT `DoraLinearLayer.update_layer`).
fn dora_magnitude(linear: &Linear, lora: &Lora) -> Vec<f32> {
    let delta = lora
        .lora_a
        .val()
        .matmul(lora.lora_b.val())
        .mul_scalar(lora.scale);
    let w = linear.weight_f32() + delta;
    to_vec(w.powi_scalar(2).sum_dim(0).sqrt())
}

/// Builds the burn adapter for `target` from host values (PEFT orientation).
pub fn build(
    target: &Target,
    linear: &Linear,
    values: AdapterValues,
    device: &Device,
) -> Result<LinearAdapter, AdapterError> {
    let (i, o) = (target.d_in, target.d_out);
    match (&target.spec, values) {
        (
            Spec::Lora {
                r,
                scale,
                dora,
                dropout,
            },
            AdapterValues::Lora {
                lora_a,
                lora_b,
                magnitude,
            },
        ) => {
            let r = *r;
            let a = crate::models::tensor_util::transpose(&lora_a, r, i);
            let b = crate::models::tensor_util::transpose(&lora_b, o, r);
            let dropout = DropoutConfig::new(*dropout).init();
            let mut lora = Lora {
                lora_a: trainable(tensor2(a, [i, r], device)),
                lora_b: trainable(tensor2(b, [r, o], device)),
                magnitude: None,
                scale: *scale,
                dropout,
            };
            if *dora {
                let m = match magnitude {
                    Some(m) => m,
                    None => dora_magnitude(linear, &lora),
                };
                lora.magnitude = Some(trainable(tensor1(m, device)));
            }
            Ok(LinearAdapter::Lora(lora))
        }
        (
            Spec::AdaLora {
                init_r,
                scale,
                dropout,
                kept,
            },
            AdapterValues::AdaLora {
                lora_a,
                lora_e,
                lora_b,
            },
        ) => {
            let r = *init_r;
            let k = kept.iter().filter(|&&x| x).count();
            let (a, e, b) = if k == r {
                (lora_a, lora_e, lora_b)
            } else {
                // P is [out, k]: scatter its columns through its transpose.
                let b_rows = crate::models::tensor_util::transpose(&lora_b, o, k);
                let b_full = scatter_ranks(&b_rows, kept, o);
                (
                    scatter_ranks(&lora_a, kept, i),
                    scatter_ranks(&lora_e, kept, 1),
                    crate::models::tensor_util::transpose(&b_full, r, o),
                )
            };
            let a = crate::models::tensor_util::transpose(&a, r, i);
            let b = crate::models::tensor_util::transpose(&b, o, r);
            Ok(LinearAdapter::AdaLora(AdaLora {
                lora_a: trainable(tensor2(a, [i, r], device)),
                lora_e: trainable(tensor1(e, device)),
                lora_b: trainable(tensor2(b, [r, o], device)),
                scale: *scale,
                dropout: DropoutConfig::new(*dropout).init(),
                kept: kept.clone(),
            }))
        }
        (Spec::Ia3 { feedforward }, AdapterValues::Ia3 { ia3_l }) => Ok(LinearAdapter::Ia3(Ia3 {
            ia3_l: trainable(tensor1(ia3_l, device)),
            feedforward: *feedforward,
        })),
        _ => Err(AdapterError::Unsupported(format!(
            "adapter values do not fit the method at `{}`",
            target.path
        ))),
    }
}
