//! Range checks of `adapter_config.json` values, run when the file is read: a value outside the
//! range PEFT assumes (a dropout of 1.5, a rank of 0, a NaN alpha) is an error naming the key,
//! not a panic or NaN weights later. Flags reach the same checks, as they are merged into the
//! same JSON first.

use std::path::Path;

use crate::error::AdapterError;
use crate::peft::config::{AdaLoraOptions, LoraOptions};

fn err(path: &Path, message: impl Into<String>) -> AdapterError {
    AdapterError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Ranges PEFT assumes but does not always check (a value outside them gives NaN or a panic
/// later): a rank of at least 1, a finite alpha, a dropout probability in [0, 1).
pub(crate) fn check_lora(o: &LoraOptions, path: &Path) -> Result<(), AdapterError> {
    if o.r == 0 {
        return Err(err(path, "`r` must be at least 1"));
    }
    if !o.lora_alpha.is_finite() {
        return Err(err(
            path,
            format!("`lora_alpha` must be finite, found {}", o.lora_alpha),
        ));
    }
    if !(0.0..1.0).contains(&o.lora_dropout) {
        return Err(err(
            path,
            format!("`lora_dropout` must be in [0, 1), found {}", o.lora_dropout),
        ));
    }
    if let Some((k, _)) = o.rank_pattern.iter().find(|(_, r)| *r == 0) {
        return Err(err(path, format!("`rank_pattern.{k}` must be at least 1")));
    }
    if let Some((k, a)) = o.alpha_pattern.iter().find(|(_, a)| !a.is_finite()) {
        return Err(err(
            path,
            format!("`alpha_pattern.{k}` must be finite, found {a}"),
        ));
    }
    Ok(())
}

/// AdaLoRA's EMA factors are probabilities-like weights in [0, 1); the budget runs from `init_r`
/// down to `target_r`, and `deltaT` divides the step count.
pub(crate) fn check_adalora(o: &AdaLoraOptions, path: &Path) -> Result<(), AdapterError> {
    for (key, v) in [("beta1", o.beta1), ("beta2", o.beta2)] {
        if !(0.0..1.0).contains(&v) {
            return Err(err(path, format!("`{key}` must be in [0, 1), found {v}")));
        }
    }
    if !(o.orth_reg_weight.is_finite() && o.orth_reg_weight >= 0.0) {
        return Err(err(
            path,
            format!(
                "`orth_reg_weight` must be a finite number >= 0, found {}",
                o.orth_reg_weight
            ),
        ));
    }
    if o.init_r == 0 || o.delta_t == 0 {
        return Err(err(path, "`init_r` and `deltaT` must be at least 1"));
    }
    if o.target_r > o.init_r {
        return Err(err(
            path,
            format!(
                "target_r ({}) must not exceed init_r ({})",
                o.target_r, o.init_r
            ),
        ));
    }
    Ok(())
}
