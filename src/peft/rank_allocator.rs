//! AdaLoRA's rank allocator, as PEFT's `RankAllocator` and `AdaLoraModel.update_and_allocate`
//! (tuners/adalora/{layer,model}.py; the same math as the original
//! QingruZhang/AdaLoRA `loralib/adalora.py`, paper §3.2–3.3):
//!
//! - sensitivity `I = |p ⊙ ∇p|` per element of every `lora_A`, `lora_E`, `lora_B`;
//! - smoothed `Ī ← β₁·Ī + (1 − β₁)·I` and uncertainty `Ū ← β₂·Ū + (1 − β₂)·|I − Ī|`;
//! - triplet score of singular value `i`: `s(Λᵢ) + mean_j s(Q_ij) + mean_j s(P_ji)`, `s = Ī ⊙ Ū`;
//! - budget from `init_r·n` down to `target_r·n` on a cubic schedule between `tinit` and
//!   `total_step − tfinal`; every `deltaT` steps the lowest-scored singular values get `Λ = 0`;
//!   at `total_step − tfinal` the pattern is fixed and re-applied after every later step.
//!
//! Scores are kept on the host in f32, as torch computes them; the tensors are small
//! (`r·(in + out + 1)` per module).

use std::collections::BTreeMap;

use burn::module::ParamId;
use burn::optim::GradientsParams;

use std::collections::HashMap;
use std::path::Path;

use crate::error::AdapterError;
use crate::io::{Checkpoint, OwnedTensor};
use crate::models::tensor_util::{tensor1, tensor2, to_vec, trainable};
use crate::models::CausalLm;
use crate::peft::adapter::LinearAdapter;
use crate::peft::config::AdaLoraOptions;

/// The smoothed sensitivity and uncertainty of one tensor.
#[derive(Debug, Clone)]
struct Ema {
    ipt: Vec<f32>,
    unc: Vec<f32>,
}

impl Ema {
    fn new(n: usize) -> Self {
        Self {
            ipt: vec![0.0; n],
            unc: vec![0.0; n],
        }
    }

    /// torch evaluates `β·x + (1 − β)·y` with both scalars rounded to f32 from Python floats.
    fn update(&mut self, p: &[f32], g: &[f32], beta1: f64, beta2: f64) {
        let (c1, c2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
        let (beta1, beta2) = (beta1 as f32, beta2 as f32);
        for (k, (&p, &g)) in p.iter().zip(g).enumerate() {
            let ipt = (p * g).abs();
            self.ipt[k] = beta1 * self.ipt[k] + c1 * ipt;
            self.unc[k] = beta2 * self.unc[k] + c2 * (ipt - self.ipt[k]).abs();
        }
    }

    fn score(&self, k: usize) -> f32 {
        self.ipt[k] * self.unc[k]
    }
}

/// Per-module state: EMAs of `a` [in, r], `e` [r], `b` [r, out] (burn orientation).
#[derive(Debug, Clone)]
struct ModuleState {
    d_in: usize,
    d_out: usize,
    a: Ema,
    e: Ema,
    b: Ema,
}

/// Gradients of one module's three tensors, captured before the optimizer consumes them.
#[derive(Debug, Clone)]
struct ModuleGrads {
    a: Vec<f32>,
    e: Vec<f32>,
    b: Vec<f32>,
}

/// What one allocation step did, for logging and the progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allocation {
    /// Total ranks allowed now.
    pub budget: usize,
    /// Ranks currently kept across all modules.
    pub kept: usize,
    /// Whether singular values were masked at this step.
    pub masked: bool,
}

#[derive(Debug, Clone)]
pub struct RankAllocator {
    options: AdaLoraOptions,
    total_step: usize,
    init_budget: usize,
    target_budget: usize,
    /// Sorted by module path, as PEFT sorts its `name_set`.
    state: BTreeMap<String, ModuleState>,
    grads: BTreeMap<String, ModuleGrads>,
    /// The fixed pattern once `total_step − tfinal` is reached.
    final_pattern: Option<BTreeMap<String, Vec<bool>>>,
    pub last: Option<Allocation>,
}

/// Checks AdaLoRA's options against the run length before training starts (PEFT's
/// `AdaLoraConfig.__post_init__` and `RankAllocator.__init__`).
pub fn validate(options: &AdaLoraOptions, total_step: usize) -> Result<(), AdapterError> {
    let bad = |m: String| Err(AdapterError::Unsupported(format!("AdaLoRA: {m}")));
    if total_step == 0 {
        return bad("total_step must be > 0".into());
    }
    if options.target_r > options.init_r {
        return bad(format!(
            "target_r ({}) must not exceed init_r ({})",
            options.target_r, options.init_r
        ));
    }
    if options.init_r == 0 {
        return bad("init_r must be > 0".into());
    }
    if options.tinit + options.tfinal >= total_step {
        return bad(format!(
            "tinit ({}) must be < total_step − tfinal ({} − {}): no step would be left for allocating ranks",
            options.tinit, total_step, options.tfinal
        ));
    }
    if options.delta_t == 0 {
        return bad("deltaT must be ≥ 1".into());
    }
    for (name, b) in [("beta1", options.beta1), ("beta2", options.beta2)] {
        if !(b > 0.0 && b < 1.0) {
            return bad(format!("{name} must be in (0, 1), got {b}"));
        }
    }
    if !(options.orth_reg_weight >= 0.0) {
        return bad(format!(
            "orth_reg_weight must be ≥ 0, got {}",
            options.orth_reg_weight
        ));
    }
    Ok(())
}

fn adalora_modules(model: &mut CausalLm) -> Vec<(String, &mut crate::peft::adalora::AdaLora)> {
    model
        .linears_mut()
        .into_iter()
        .filter_map(|(path, linear)| match &mut linear.adapter {
            Some(LinearAdapter::AdaLora(svd)) => Some((path, svd)),
            _ => None,
        })
        .collect()
}

fn grad_of<const D: usize>(grads: &GradientsParams, id: ParamId, scale: f64) -> Option<Vec<f32>> {
    grads
        .get::<D>(id)
        .map(|g| to_vec(burn::tensor::Tensor::<D>::from_inner(g).mul_scalar(scale)))
}

impl RankAllocator {
    /// An allocator for the AdaLoRA modules attached to `model`.
    pub fn new(
        model: &mut CausalLm,
        options: AdaLoraOptions,
        total_step: usize,
    ) -> Result<Self, AdapterError> {
        validate(&options, total_step)?;
        let mut state = BTreeMap::new();
        let mut init_budget = 0;
        for (path, svd) in adalora_modules(model) {
            let [d_in, r] = svd.lora_a.lazy_shape().dims::<2>();
            let [_, d_out] = svd.lora_b.lazy_shape().dims::<2>();
            init_budget += r;
            state.insert(
                path,
                ModuleState {
                    d_in,
                    d_out,
                    a: Ema::new(d_in * r),
                    e: Ema::new(r),
                    b: Ema::new(r * d_out),
                },
            );
        }
        if state.is_empty() {
            return Err(AdapterError::Unsupported(
                "AdaLoRA: the model carries no AdaLoRA modules".into(),
            ));
        }
        let target_budget = options.target_r * state.len();
        Ok(Self {
            options,
            total_step,
            init_budget,
            target_budget,
            state,
            grads: BTreeMap::new(),
            final_pattern: None,
            last: None,
        })
    }

    pub fn total_step(&self) -> usize {
        self.total_step
    }

    /// PEFT `budget_schedule`: (budget, whether to mask at this step).
    pub fn budget_schedule(&self, step: usize) -> (usize, bool) {
        let o = &self.options;
        let t = self.total_step;
        if step <= o.tinit {
            (self.init_budget, false)
        } else if step > t - o.tfinal {
            (self.target_budget, true)
        } else {
            let mul = 1.0 - (step - o.tinit) as f64 / (t - o.tfinal - o.tinit) as f64;
            let span = self.init_budget as f64 - self.target_budget as f64;
            let budget = (span * mul.powi(3) + self.target_budget as f64) as usize;
            (budget, step % o.delta_t == 0)
        }
    }

    /// The orthogonality penalty `orth_reg_weight · mean(‖A·Aᵀ − I‖_F, ‖Bᵀ·B − I‖_F)` over every
    /// `lora_A` and `lora_B` (PEFT `AdaLoraModel.forward`), or `None` when its weight is 0.
    pub fn orth_penalty(&self, model: &CausalLm) -> Option<burn::tensor::Tensor<1>> {
        if self.options.orth_reg_weight == 0.0 {
            return None;
        }
        let mut model = model.clone();
        let mut total: Option<burn::tensor::Tensor<1>> = None;
        let mut count = 0;
        for (_, svd) in adalora_modules(&mut model) {
            let p = svd.orth_penalty();
            total = Some(match total {
                Some(t) => t + p,
                None => p,
            });
            count += 2;
        }
        total.map(|t| {
            t.div_scalar(count as f64)
                .mul_scalar(self.options.orth_reg_weight)
        })
    }

    /// Keeps this step's gradients (times the clipping factor, as torch's in-place clipping
    /// leaves them in `p.grad`) for the sensitivity update after the optimizer step.
    pub fn observe_grads(&mut self, model: &CausalLm, grads: &GradientsParams, scale: f64) {
        self.grads.clear();
        let mut model = model.clone();
        for (path, svd) in adalora_modules(&mut model) {
            let (Some(a), Some(e), Some(b)) = (
                grad_of::<2>(grads, svd.lora_a.id, scale),
                grad_of::<1>(grads, svd.lora_e.id, scale),
                grad_of::<2>(grads, svd.lora_b.id, scale),
            ) else {
                continue;
            };
            self.grads.insert(path, ModuleGrads { a, e, b });
        }
    }

    /// PEFT's `update_and_allocate(step)`, called after the optimizer step with the 0-based index
    /// of the step just taken: updates the scores from the updated weights and this step's
    /// gradients, and masks singular values when the schedule says so.
    pub fn update_and_allocate(&mut self, model: &mut CausalLm, step: usize) -> Allocation {
        let boundary = self.total_step - self.options.tfinal;
        let allocation = if step < boundary {
            self.update_scores(model);
            let (budget, mask) = self.budget_schedule(step);
            if mask {
                self.mask_to_budget(model, budget);
            }
            Allocation {
                budget,
                kept: 0,
                masked: mask,
            }
        } else if step == boundary {
            let (budget, _) = self.budget_schedule(step);
            let pattern = self.mask_to_budget(model, budget);
            self.final_pattern = Some(pattern);
            for s in self.state.values_mut() {
                let r = s.e.ipt.len();
                *s = ModuleState {
                    d_in: s.d_in,
                    d_out: s.d_out,
                    a: Ema::new(s.d_in * r),
                    e: Ema::new(r),
                    b: Ema::new(r * s.d_out),
                };
            }
            Allocation {
                budget,
                kept: 0,
                masked: true,
            }
        } else {
            if let Some(pattern) = &self.final_pattern {
                for (path, svd) in adalora_modules(model) {
                    if let Some(kept) = pattern.get(&path) {
                        svd.apply_mask(kept.clone());
                    }
                }
            }
            Allocation {
                budget: self.target_budget,
                kept: 0,
                masked: true,
            }
        };
        let kept = adalora_modules(model)
            .iter()
            .map(|(_, svd)| svd.kept.iter().filter(|&&k| k).count())
            .sum();
        let allocation = Allocation { kept, ..allocation };
        self.last = Some(allocation);
        allocation
    }

    /// Writes what an exact resume needs and PEFT's cut adapter file cannot hold: every module's
    /// full-rank tensors (pruned ranks included), the score EMAs, and the fixed pattern.
    pub fn save_state(&self, model: &mut CausalLm, path: &Path) -> Result<(), AdapterError> {
        let mut tensors = Vec::new();
        let mut kept = serde_json::Map::new();
        for (name, svd) in adalora_modules(model) {
            let a = to_vec(svd.lora_a.val());
            let e = to_vec(svd.lora_e.val());
            let b = to_vec(svd.lora_b.val());
            tensors.push((
                format!("{name}.a"),
                OwnedTensor::from_f32(vec![a.len()], &a),
            ));
            tensors.push((
                format!("{name}.e"),
                OwnedTensor::from_f32(vec![e.len()], &e),
            ));
            tensors.push((
                format!("{name}.b"),
                OwnedTensor::from_f32(vec![b.len()], &b),
            ));
            kept.insert(name.clone(), serde_json::json!(svd.kept));
            if let Some(s) = self.state.get(&name) {
                for (part, ema) in [("a", &s.a), ("e", &s.e), ("b", &s.b)] {
                    let n = ema.ipt.len();
                    tensors.push((
                        format!("{name}.{part}.ipt"),
                        OwnedTensor::from_f32(vec![n], &ema.ipt),
                    ));
                    tensors.push((
                        format!("{name}.{part}.unc"),
                        OwnedTensor::from_f32(vec![n], &ema.unc),
                    ));
                }
            }
        }
        let mut meta = HashMap::new();
        meta.insert(
            "kept".to_string(),
            serde_json::Value::Object(kept).to_string(),
        );
        meta.insert(
            "final_pattern".to_string(),
            serde_json::to_string(&self.final_pattern).unwrap_or_default(),
        );
        crate::io::write_safetensors_atomic(path, &tensors, Some(meta))?;
        Ok(())
    }

    /// Restores `save_state`'s file into `model` (whose AdaLoRA modules were loaded from the cut
    /// PEFT file) and into this allocator.
    pub fn restore_state(&mut self, model: &mut CausalLm, path: &Path) -> Result<(), AdapterError> {
        let file = Checkpoint::open_files(&[path.to_path_buf()])?;
        let bad = |m: String| AdapterError::Config {
            path: path.to_path_buf(),
            message: m,
        };
        let meta = file.metadata().cloned().unwrap_or_default();
        let kept: HashMap<String, Vec<bool>> = meta
            .get("kept")
            .and_then(|k| serde_json::from_str(k).ok())
            .ok_or_else(|| bad("missing the kept-rank metadata".into()))?;
        self.final_pattern = meta
            .get("final_pattern")
            .and_then(|k| serde_json::from_str(k).ok())
            .flatten();
        for (name, svd) in adalora_modules(model) {
            let [d_in, r] = svd.lora_a.lazy_shape().dims::<2>();
            let [_, d_out] = svd.lora_b.lazy_shape().dims::<2>();
            let read = |key: String, n: usize| -> Result<Vec<f32>, AdapterError> {
                let (v, _) = file
                    .read_f32(&key)
                    .map_err(|_| bad(format!("missing tensor `{key}`")))?;
                if v.len() != n {
                    return Err(bad(format!(
                        "`{key}` holds {} values, expected {n}",
                        v.len()
                    )));
                }
                Ok(v)
            };
            let device = svd.lora_a.val().device();
            svd.lora_a = trainable(tensor2(
                read(format!("{name}.a"), d_in * r)?,
                [d_in, r],
                &device,
            ));
            svd.lora_e = trainable(tensor1(read(format!("{name}.e"), r)?, &device));
            svd.lora_b = trainable(tensor2(
                read(format!("{name}.b"), r * d_out)?,
                [r, d_out],
                &device,
            ));
            svd.kept = kept
                .get(&name)
                .cloned()
                .filter(|k| k.len() == r)
                .ok_or_else(|| bad(format!("no kept ranks for `{name}`")))?;
            if let Some(s) = self.state.get_mut(&name) {
                for (part, n) in [("a", d_in * r), ("e", r), ("b", r * d_out)] {
                    let ema = Ema {
                        ipt: read(format!("{name}.{part}.ipt"), n)?,
                        unc: read(format!("{name}.{part}.unc"), n)?,
                    };
                    match part {
                        "a" => s.a = ema,
                        "e" => s.e = ema,
                        _ => s.b = ema,
                    }
                }
            }
        }
        Ok(())
    }

    fn update_scores(&mut self, model: &mut CausalLm) {
        let (b1, b2) = (self.options.beta1, self.options.beta2);
        for (path, svd) in adalora_modules(model) {
            let (Some(state), Some(g)) = (self.state.get_mut(&path), self.grads.get(&path)) else {
                continue;
            };
            state.a.update(&to_vec(svd.lora_a.val()), &g.a, b1, b2);
            state.e.update(&to_vec(svd.lora_e.val()), &g.e, b1, b2);
            state.b.update(&to_vec(svd.lora_b.val()), &g.b, b1, b2);
        }
        self.grads.clear();
    }

    /// Triplet scores of every module's singular values (PEFT `mask_to_budget`/`_combine_ipt`).
    fn triplet_scores(&self) -> BTreeMap<String, Vec<f32>> {
        self.state
            .iter()
            .map(|(path, s)| {
                let r = s.e.ipt.len();
                let scores = (0..r)
                    .map(|j| {
                        // Q row j is column j of `a` [in, r]; P column j is row j of `b` [r, out].
                        let a_mean = (0..s.d_in)
                            .map(|i| s.a.score(i * r + j) as f64)
                            .sum::<f64>()
                            / s.d_in as f64;
                        let b_mean = (0..s.d_out)
                            .map(|o| s.b.score(j * s.d_out + o) as f64)
                            .sum::<f64>()
                            / s.d_out as f64;
                        s.e.score(j) + (a_mean as f32 + b_mean as f32)
                    })
                    .collect();
                (path.clone(), scores)
            })
            .collect()
    }

    /// Masks every singular value scoring at or below the `(init_budget − budget)`-th smallest
    /// score (`torch.kthvalue`), and returns the pattern.
    fn mask_to_budget(&self, model: &mut CausalLm, budget: usize) -> BTreeMap<String, Vec<bool>> {
        let scores = self.triplet_scores();
        let k = self.init_budget.saturating_sub(budget);
        let threshold = if k == 0 {
            f32::NEG_INFINITY
        } else {
            let mut all: Vec<f32> = scores.values().flatten().copied().collect();
            all.sort_by(|a, b| a.total_cmp(b));
            all[k - 1]
        };
        let pattern: BTreeMap<String, Vec<bool>> = scores
            .into_iter()
            .map(|(path, s)| (path, s.iter().map(|&v| v > threshold).collect()))
            .collect();
        for (path, svd) in adalora_modules(model) {
            if let Some(kept) = pattern.get(&path) {
                svd.apply_mask(kept.clone());
            }
        }
        pattern
    }
}
