//! AdamW exactly as torch's single-tensor implementation (torch/optim/adamw.py):
//!
//! ```text
//! θ ← θ·(1 − lr·λ)
//! m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
//! θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! burn's own AdamW differs in defaults and puts ε elsewhere; ours also keeps its state keyed by
//! parameter id so that checkpoints can name it. Global-norm clipping (torch's
//! `clip_grad_norm_`: one norm over all gradients) is here too; burn clips per tensor.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// First and second moments of one parameter, flattened, on the inner (non-autodiff) device.
#[derive(Debug, Clone)]
pub struct Moments {
    pub exp_avg: Tensor<1>,
    pub exp_avg_sq: Tensor<1>,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken (torch's `step`, shared by all parameters here).
    pub step: u64,
    pub state: HashMap<ParamId, Moments>,
}

struct NormVisitor<'a> {
    grads: &'a GradientsParams,
    sum_sq: f64,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sum_sq += g.powi_scalar(2).sum().into_scalar::<f32>() as f64;
        }
    }
}

/// The L2 norm over every gradient of `model`'s parameters.
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    let mut v = NormVisitor { grads, sum_sq: 0.0 };
    model.visit(&mut v);
    v.sum_sq.sqrt()
}

struct UpdateMapper<'a> {
    optim: &'a mut AdamW,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
}

impl ModuleMapper for UpdateMapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let theta: Tensor<1> = tensor.inner().flatten(0, D - 1);
        let g: Tensor<1> = grad.inner().flatten(0, D - 1).mul_scalar(self.grad_scale);
        let updated = self.optim.update(id, theta, g, self.lr).reshape(shape);
        let mut value = Tensor::from_inner(updated);
        if require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            state: HashMap::new(),
        }
    }

    fn update(&mut self, id: ParamId, theta: Tensor<1>, g: Tensor<1>, lr: f64) -> Tensor<1> {
        let c = self.config;
        let t = self.step as i32;
        let m = self.state.remove(&id).unwrap_or_else(|| Moments {
            exp_avg: g.zeros_like(),
            exp_avg_sq: g.zeros_like(),
        });
        let theta = theta.mul_scalar(1.0 - lr * c.weight_decay);
        let exp_avg = m.exp_avg.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let exp_avg_sq =
            m.exp_avg_sq.mul_scalar(c.beta2) + (g.clone() * g).mul_scalar(1.0 - c.beta2);
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let denom = exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias2_sqrt)
            .add_scalar(c.eps);
        let theta = theta - (exp_avg.clone() / denom).mul_scalar(lr / bias1);
        self.state.insert(
            id,
            Moments {
                exp_avg,
                exp_avg_sq,
            },
        );
        theta
    }

    /// One optimizer step over every parameter with a gradient; gradients are multiplied by
    /// `grad_scale` first (global-norm clipping).
    pub fn step<M: Module>(
        &mut self,
        model: M,
        mut grads: GradientsParams,
        lr: f64,
        grad_scale: f64,
    ) -> M {
        self.step += 1;
        let mut mapper = UpdateMapper {
            optim: self,
            grads: &mut grads,
            lr,
            grad_scale,
        };
        model.map(&mut mapper)
    }
}

/// torch's `clip_grad_norm_` factor: `max_norm / (norm + 1e-6)` when the norm exceeds it.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if max > 0.0 && norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}
