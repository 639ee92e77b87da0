//! From adapters to patches: which fold applies to which base tensor, with every shape, dtype and
//! rank checked against the base checkpoint before anything is written.

use std::collections::BTreeMap;

use safetensors::Dtype;

use crate::error::MergeError;
use crate::io::TensorEntry;
use crate::merge::adapter::{Adapter, Param};
use crate::merge::delta::{adalora_scale, lora_scale};
use crate::peft::config::{AdaLoraOptions, LoraOptions, Method};
use crate::peft::target::{pattern_value, MatchOptions, Matcher};

/// One change to one base tensor. Keys name tensors in the adapter's file.
#[derive(Debug, Clone)]
pub enum Fold {
    /// `W += s·B·A` (LoRA, rsLoRA). A: [r, in], B: [out, r].
    LowRank { a: String, b: String, s: f32 },
    /// AdaLoRA: `W += s·B·(A⊙E)`. E: [r, 1].
    AdaLora {
        a: String,
        b: String,
        e: String,
        s: f32,
    },
    /// DoRA: `W = m/‖W + s·B·A‖_row · (W + s·B·A)`. magnitude: [out].
    Dora {
        a: String,
        b: String,
        magnitude: String,
        s: f32,
    },
    /// LoRA on an embedding: `W += s·(B_e·A_e)ᵀ`.
    Embedding { a: String, b: String, s: f32 },
    /// IA3 on a weight: scale output rows (or input columns for feed-forward modules).
    Ia3 { l: String, feedforward: bool },
    /// IA3 on the bias of a non-feed-forward module.
    Ia3Bias { l: String },
}

/// A fold from adapter `adapter` (index into the plan's adapters).
#[derive(Debug, Clone)]
pub struct Patch {
    pub adapter: usize,
    pub fold: Fold,
}

/// Base tensor name -> its patches, in the order the adapters were given.
pub type Patches = BTreeMap<String, Vec<Patch>>;

/// How to find the base tensor a module adapts: usually `<module>.weight` in the checkpoint; for a
/// tied output head that the checkpoint does not store, the input embedding.
pub trait BaseLookup {
    fn lookup(&self, tensor: &str) -> Option<&TensorEntry>;
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Everything `check` needs to name in an error.
struct Ctx<'a> {
    adapter: &'a Adapter,
    module: &'a str,
    params: &'a BTreeMap<Param, String>,
}

impl Ctx<'_> {
    fn key(&self, p: Param) -> Result<String, MergeError> {
        self.params
            .get(&p)
            .cloned()
            .ok_or_else(|| MergeError::IncompleteModule {
                file: self.adapter.file.clone(),
                module: self.module.to_string(),
                missing: format!("{p:?}"),
            })
    }

    /// Checks that adapter tensor `p` has shape `expected` (derived from the base tensor).
    fn check(
        &self,
        p: Param,
        base: &TensorEntry,
        expected: &[usize],
    ) -> Result<String, MergeError> {
        let key = self.key(p)?;
        let entry = self
            .adapter
            .weights
            .get(&key)
            .ok_or_else(|| MergeError::IncompleteModule {
                file: self.adapter.file.clone(),
                module: self.module.to_string(),
                missing: key.clone(),
            })?;
        if !is_float(entry.dtype) {
            let dtype = format!("{:?}", entry.dtype);
            return Err(MergeError::NotFloat {
                file: self.adapter.file.clone(),
                tensor: key,
                dtype,
            });
        }
        if entry.shape != expected {
            return Err(MergeError::ShapeMismatch {
                file: self.adapter.file.clone(),
                key,
                tensor: base.name.clone(),
                base: base.shape.clone(),
                expected: expected.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        Ok(key)
    }

    fn refuse_others(&self, allowed: &[Param]) -> Result<(), MergeError> {
        match self.params.iter().find(|(p, _)| !allowed.contains(p)) {
            Some((_, key)) => Err(MergeError::UnknownAdapterKey {
                file: self.adapter.file.clone(),
                key: key.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The base weight `<module>.weight`, which must exist, be a float tensor and be 2-D.
fn base_weight<'b>(ctx: &Ctx, base: &'b dyn BaseLookup) -> Result<&'b TensorEntry, MergeError> {
    let tensor = format!("{}.weight", ctx.module);
    let key = ctx.params.values().next().cloned().unwrap_or_default();
    let entry = base
        .lookup(&tensor)
        .ok_or_else(|| MergeError::MissingBaseTensor {
            file: ctx.adapter.file.clone(),
            key: key.clone(),
            tensor,
        })?;
    if !is_float(entry.dtype) {
        return Err(MergeError::NotFloat {
            file: ctx.adapter.file.clone(),
            tensor: entry.name.clone(),
            dtype: format!("{:?}", entry.dtype),
        });
    }
    if entry.shape.len() != 2 {
        let expected = vec![0, 0];
        return Err(MergeError::ShapeMismatch {
            file: ctx.adapter.file.clone(),
            key,
            tensor: entry.name.clone(),
            base: entry.shape.clone(),
            expected,
            actual: entry.shape.clone(),
        });
    }
    Ok(entry)
}

fn lora_folds(
    ctx: &Ctx,
    w: &TensorEntry,
    opts: &LoraOptions,
) -> Result<Vec<(String, Fold)>, MergeError> {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let r = pattern_value(&opts.rank_pattern, ctx.module)?.unwrap_or(opts.r);
    let alpha = pattern_value(&opts.alpha_pattern, ctx.module)?.unwrap_or(opts.lora_alpha);
    let s = lora_scale(alpha, r, opts.use_rslora);
    let target = format!("{}.weight", ctx.module);
    if ctx.params.contains_key(&Param::EmbeddingA) {
        ctx.refuse_others(&[Param::EmbeddingA, Param::EmbeddingB])?;
        // Embedding W: [num_embeddings, dim]; A_e: [r, num_embeddings]; B_e: [dim, r].
        let a = ctx.check(Param::EmbeddingA, w, &[r, out])?;
        let b = ctx.check(Param::EmbeddingB, w, &[inp, r])?;
        return Ok(vec![(target, Fold::Embedding { a, b, s })]);
    }
    let a = ctx.check(Param::A, w, &[r, inp])?;
    let b = ctx.check(Param::B, w, &[out, r])?;
    if opts.use_dora {
        ctx.refuse_others(&[Param::A, Param::B, Param::Magnitude])?;
        let magnitude = ctx.check(Param::Magnitude, w, &[out])?;
        return Ok(vec![(target, Fold::Dora { a, b, magnitude, s })]);
    }
    ctx.refuse_others(&[Param::A, Param::B])?;
    Ok(vec![(target, Fold::LowRank { a, b, s })])
}

fn adalora_folds(
    ctx: &Ctx,
    w: &TensorEntry,
    lora: &LoraOptions,
    ada: &AdaLoraOptions,
) -> Result<Vec<(String, Fold)>, MergeError> {
    ctx.refuse_others(&[Param::A, Param::B, Param::E])?;
    let (out, inp) = (w.shape[0], w.shape[1]);
    // After training, rank_pattern keeps a boolean mask per matrix and the saved tensors hold only
    // the kept rows (PEFT adalora/model.py `resize_state_dict_by_rank_pattern`).
    let mask_key = format!("{}.lora_E", ctx.module);
    let kept = match ada.rank_pattern.iter().find(|(k, _)| *k == mask_key) {
        Some((_, mask)) => mask.iter().filter(|b| **b).count(),
        None => ada.init_r,
    };
    let a = ctx.check(Param::A, w, &[kept, inp])?;
    let b = ctx.check(Param::B, w, &[out, kept])?;
    let e = ctx.check(Param::E, w, &[kept, 1])?;
    if kept == 0 {
        return Ok(Vec::new());
    }
    let s = adalora_scale(lora.lora_alpha, ada.init_r);
    Ok(vec![(
        format!("{}.weight", ctx.module),
        Fold::AdaLora { a, b, e, s },
    )])
}

fn ia3_folds(
    ctx: &Ctx,
    w: &TensorEntry,
    ff: &Matcher,
    base: &dyn BaseLookup,
) -> Result<Vec<(String, Fold)>, MergeError> {
    ctx.refuse_others(&[Param::Ia3])?;
    let (out, inp) = (w.shape[0], w.shape[1]);
    let feedforward = ff.matches(ctx.module, true);
    let expected = if feedforward { [1, inp] } else { [out, 1] };
    let l = ctx.check(Param::Ia3, w, &expected)?;
    let mut folds = vec![(
        format!("{}.weight", ctx.module),
        Fold::Ia3 {
            l: l.clone(),
            feedforward,
        },
    )];
    let bias = format!("{}.bias", ctx.module);
    if !feedforward {
        if let Some(b) = base.lookup(&bias) {
            if b.shape != [out] || !is_float(b.dtype) {
                let (file, key, tensor, base, actual) = (
                    ctx.adapter.file.clone(),
                    l,
                    bias,
                    b.shape.clone(),
                    b.shape.clone(),
                );
                return Err(MergeError::ShapeMismatch {
                    file,
                    key,
                    tensor,
                    base,
                    expected: vec![out],
                    actual,
                });
            }
            folds.push((bias, Fold::Ia3Bias { l }));
        }
    }
    Ok(folds)
}

/// Collects and checks every patch of every adapter.
pub fn collect(adapters: &[Adapter], base: &dyn BaseLookup) -> Result<Patches, MergeError> {
    let mut patches = Patches::new();
    for (index, adapter) in adapters.iter().enumerate() {
        let ff = match &adapter.config.method {
            Method::Ia3(o) => Some(Matcher::new(
                &o.feedforward_modules,
                MatchOptions::default(),
            )?),
            _ => None,
        };
        for (module, params) in &adapter.modules {
            let ctx = Ctx {
                adapter,
                module,
                params,
            };
            let w = base_weight(&ctx, base)?;
            let folds = match (&adapter.config.method, &ff) {
                (Method::Lora(o), _) => lora_folds(&ctx, w, o)?,
                (Method::AdaLora(l, a), _) => adalora_folds(&ctx, w, l, a)?,
                (Method::Ia3(_), Some(ff)) => ia3_folds(&ctx, w, ff, base)?,
                _ => Vec::new(),
            };
            for (tensor, fold) in folds {
                patches.entry(tensor).or_default().push(Patch {
                    adapter: index,
                    fold,
                });
            }
        }
    }
    Ok(patches)
}
