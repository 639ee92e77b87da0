//! The module walker: decides which modules of a model an adapter config targets (PEFT's rules,
//! `peft::target`), attaches adapters there, and reports what it did, as PEFT's
//! `print_trainable_parameters`.

use std::fmt;

use crate::error::AdapterError;
use crate::models::CausalLm;
use crate::peft::adapter::LinearAdapter;
use crate::peft::config::{AdaLoraOptions, AdapterConfig, LoraOptions, Method};
use crate::peft::target::{pattern_value, suffix_match, Matcher, Targets};

/// PEFT's default `target_modules` per model type (utils/constants.py).
pub fn default_targets(model_type: &str, method: &Method) -> &'static [&'static str] {
    match (model_type, method) {
        ("chatglm", _) => &["query_key_value"],
        (_, Method::Ia3(_)) => &["k_proj", "v_proj", "down_proj"],
        _ => &["q_proj", "v_proj"],
    }
}

/// What to attach at one module.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Lora {
        r: usize,
        scale: f64,
        dora: bool,
        dropout: f64,
    },
    Ia3 {
        feedforward: bool,
    },
    /// AdaLoRA's SVD form with `init_r` ranks, of which `kept` survive pruning.
    AdaLora {
        init_r: usize,
        scale: f64,
        dropout: f64,
        kept: Vec<bool>,
    },
}

#[derive(Debug, Clone)]
pub struct Target {
    pub path: String,
    pub d_in: usize,
    pub d_out: usize,
    pub spec: Spec,
}

/// What an injection did.
#[derive(Debug, Clone)]
pub struct InjectionReport {
    pub matched: Vec<String>,
    pub trainable: usize,
    pub total: usize,
}

impl fmt::Display for InjectionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        };
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable, self.total, pct
        )
    }
}

/// Per-module rank and scale from `r`/`lora_alpha` and the rank/alpha patterns.
pub fn lora_spec(opts: &LoraOptions, path: &str) -> Result<Spec, AdapterError> {
    let r = pattern_value(&opts.rank_pattern, path)?.unwrap_or(opts.r);
    let alpha = pattern_value(&opts.alpha_pattern, path)?.unwrap_or(opts.lora_alpha);
    if r == 0 {
        return Err(AdapterError::Unsupported(format!("rank 0 for `{path}`")));
    }
    let scale = if opts.use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    };
    Ok(Spec::Lora {
        r,
        scale,
        dora: opts.use_dora,
        dropout: opts.lora_dropout,
    })
}

/// AdaLoRA's spec at `path`: `init_r` ranks, the boolean `rank_pattern` entry
/// (`<path>.lora_E`) when training has pruned some, and PEFT's scale `α / (ranknum + 1e-5)`
/// computed as its f32 `ranknum` parameter gives it.
pub fn adalora_spec(
    lora: &LoraOptions,
    ada: &AdaLoraOptions,
    path: &str,
) -> Result<Spec, AdapterError> {
    let key = format!("{path}.lora_E");
    let kept = ada
        .rank_pattern
        .iter()
        .find(|(k, _)| *k == key || k.strip_suffix(".default") == Some(key.as_str()))
        .map(|(_, v)| v.clone());
    let kept = match kept {
        Some(v) if v.len() != ada.init_r => {
            return Err(AdapterError::Unsupported(format!(
                "rank_pattern for `{key}` has {} entries but init_r is {}",
                v.len(),
                ada.init_r
            )))
        }
        Some(v) => v,
        None => vec![true; ada.init_r],
    };
    let alpha = if lora.lora_alpha > 0.0 {
        lora.lora_alpha
    } else {
        ada.init_r as f64
    };
    let ranknum = (ada.init_r as f32 + 1e-5f32) as f64;
    Ok(Spec::AdaLora {
        init_r: ada.init_r,
        scale: alpha / ranknum,
        dropout: lora.lora_dropout,
        kept,
    })
}

fn targets_match(targets: &Targets, path: &str) -> bool {
    match targets {
        Targets::Names(names) => names.iter().any(|n| suffix_match(path, n)),
        Targets::Regex(re) => {
            regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(path))
        }
        Targets::AllLinear => true,
    }
}

/// The modules `config` targets in `model`, with what to attach at each.
pub fn plan(
    model: &mut CausalLm,
    model_type: &str,
    config: &AdapterConfig,
) -> Result<Vec<Target>, AdapterError> {
    let matcher: Matcher = config.matcher(
        default_targets(model_type, &config.method),
        model.output_head(),
    )?;
    let mut targets = Vec::new();
    let mut all_paths = vec![model.embedding_path().to_string()];
    if matcher.matches(model.embedding_path(), false) {
        return Err(AdapterError::Unsupported(format!(
            "target `{}` is an embedding; LoRA on embeddings is not supported yet",
            model.embedding_path()
        )));
    }
    let mut matched = Vec::new();
    for (path, linear) in model.linears_mut() {
        all_paths.push(path.clone());
        if matcher.matches(&path, true) {
            matched.push((path, linear.in_features(), linear.out_features()));
        }
    }
    check_rank_budget(config, &matched)?;
    for (path, d_in, d_out) in matched {
        let spec = match &config.method {
            Method::Lora(opts) => lora_spec(opts, &path)?,
            Method::Ia3(opts) => Spec::Ia3 {
                feedforward: targets_match(&opts.feedforward_modules, &path),
            },
            Method::AdaLora(lora, ada) => adalora_spec(lora, ada, &path)?,
            Method::PromptLearning(_) => {
                return Err(AdapterError::Unsupported(format!(
                    "{} adapters are not supported yet",
                    config.peft_type.as_str()
                )))
            }
        };
        targets.push(Target {
            path,
            d_in,
            d_out,
            spec,
        });
    }
    if targets.is_empty() {
        let patterns = config
            .target_modules
            .as_ref()
            .map(Targets::describe)
            .unwrap_or_else(|| format!("{:?}", default_targets(model_type, &config.method)));
        let sample_paths = all_paths.into_iter().take(12).collect();
        return Err(AdapterError::NoMatchingTarget {
            patterns,
            sample_paths,
        });
    }
    Ok(targets)
}

/// The largest rank `config` gives any module, times every matched module's `in + out + 1`,
/// checked against the machine before any per-rank structure (AdaLoRA's rank mask, the factors)
/// is allocated.
fn check_rank_budget(
    config: &AdapterConfig,
    matched: &[(String, usize, usize)],
) -> Result<(), AdapterError> {
    let (rank, setting) = match &config.method {
        Method::Lora(o) => (
            o.rank_pattern.iter().map(|(_, r)| *r).fold(o.r, usize::max),
            "`r` (--r, or r / rank_pattern in adapter_config.json)",
        ),
        Method::AdaLora(_, a) => (
            a.init_r,
            "`init_r` (--init-r, or init_r in adapter_config.json)",
        ),
        _ => return Ok(()),
    };
    let params = matched.iter().try_fold(0u64, |total, (_, i, o)| {
        let width = (*i as u64).checked_add(*o as u64)?.checked_add(1)?;
        total.checked_add((rank as u64).checked_mul(width)?)
    });
    crate::io::budget::check(
        &format!(
            "the adapter on {} module(s) (weights, gradients, optimizer moments)",
            matched.len()
        ),
        setting,
        params.and_then(|n| n.checked_mul(16)),
    )
    .map_err(crate::error::LoadError::from)?;
    Ok(())
}

/// Parameters of the adapters `targets` asks for, with checked arithmetic (`None`: overflow).
fn adapter_parameters(targets: &[Target]) -> Option<u64> {
    targets.iter().try_fold(0u64, |total, t| {
        let (i, o) = (t.d_in as u64, t.d_out as u64);
        let n = match &t.spec {
            Spec::Lora { r, dora, .. } => (*r as u64)
                .checked_mul(i.checked_add(o)?)?
                .checked_add(if *dora { o } else { 0 })?,
            Spec::AdaLora { init_r, .. } => {
                (*init_r as u64).checked_mul(i.checked_add(o)?.checked_add(1)?)?
            }
            Spec::Ia3 { feedforward } => {
                if *feedforward {
                    i
                } else {
                    o
                }
            }
        };
        total.checked_add(n)
    })
}

/// Attaches one adapter per target, built by `build`, and reports parameter counts.
pub fn attach(
    model: &mut CausalLm,
    targets: &[Target],
    build: &mut dyn FnMut(&Target, &crate::models::Linear) -> Result<LinearAdapter, AdapterError>,
) -> Result<InjectionReport, AdapterError> {
    // Checked before the first tensor is allocated: `--r 1000000000` is an error naming `r`,
    // not an abort. f32 weights, their gradients and AdamW's two moments: 16 bytes each.
    crate::io::budget::check(
        &format!(
            "the adapter on {} module(s) (weights, gradients, optimizer moments)",
            targets.len()
        ),
        "`r` (--r, or r / init_r in adapter_config.json)",
        adapter_parameters(targets).and_then(|n| n.checked_mul(16)),
    )
    .map_err(crate::error::LoadError::from)?;
    let base_params = model.base_params();
    let mut trainable = 0;
    let mut by_path: std::collections::HashMap<&str, &Target> =
        targets.iter().map(|t| (t.path.as_str(), t)).collect();
    for (path, linear) in model.linears_mut() {
        if let Some(target) = by_path.remove(path.as_str()) {
            let adapter = build(target, linear)?;
            trainable += adapter.num_params();
            linear.adapter = Some(adapter);
        }
    }
    let total = base_params + trainable;
    Ok(InjectionReport {
        matched: targets.iter().map(|t| t.path.clone()).collect(),
        trainable,
        total,
    })
}
