//! The one validation layer of the commands' options, run before any work (ripgrep's args →
//! validated plan): every float option finite and in its range, every size at least 1, and every
//! `--out` away from the inputs it could destroy. clap parses `nan` and `inf` as valid `f64`s and
//! `serde_json` writes them as `null`, so nothing downstream would notice.

use std::path::Path;

use anyhow::bail;
use peft::io::paths::check_out_against_inputs;
use peft::peft::AdapterConfig;
use serde_json::Value;

use super::adapter_options::AdapterOptions;
use super::data_options::DataOptions;
use super::train::TrainOptions;

/// The range a float option must lie in.
#[derive(Clone, Copy)]
pub enum Range {
    /// Any finite number.
    Finite,
    /// > 0.
    Positive,
    /// >= 0.
    NonNegative,
    /// [0, 1).
    Unit,
}

/// Refuses a NaN, an infinity, or a value outside `range`, naming the flag.
pub fn float(flag: &str, value: Option<f64>, range: Range) -> anyhow::Result<()> {
    let Some(v) = value else {
        return Ok(());
    };
    let (ok, want) = match range {
        Range::Finite => (v.is_finite(), "a finite number"),
        Range::Positive => (v.is_finite() && v > 0.0, "a finite number > 0"),
        Range::NonNegative => (v.is_finite() && v >= 0.0, "a finite number >= 0"),
        Range::Unit => ((0.0..1.0).contains(&v), "a number in [0, 1)"),
    };
    if !ok {
        bail!("{flag} must be {want}, got {v}");
    }
    Ok(())
}

/// Refuses 0 for a count that must be at least 1.
pub fn at_least_one(flag: &str, value: Option<usize>) -> anyhow::Result<()> {
    if value == Some(0) {
        bail!("{flag} must be a positive integer (at least 1)");
    }
    Ok(())
}

fn adapter_options(a: &AdapterOptions) -> anyhow::Result<()> {
    float("--alpha", a.alpha, Range::Finite)?;
    float("--dropout", a.dropout, Range::Unit)?;
    float("--beta1", a.beta1, Range::Unit)?;
    float("--beta2", a.beta2, Range::Unit)?;
    float("--orth-reg-weight", a.orth_reg_weight, Range::NonNegative)?;
    for (flag, v) in [
        ("--r", a.r),
        ("--num-virtual-tokens", a.num_virtual_tokens),
        ("--encoder-hidden-size", a.encoder_hidden_size),
        ("--adapter-len", a.adapter_len),
        ("--adapter-layers", a.adapter_layers),
        ("--init-r", a.init_r),
        ("--delta-t", a.delta_t),
    ] {
        at_least_one(flag, v)?;
    }
    Ok(())
}

pub fn data_options(d: &DataOptions) -> anyhow::Result<()> {
    float("--eval-split", d.eval_split, Range::Unit)?;
    at_least_one("--max-len", d.max_len)?;
    at_least_one("--pack", d.pack)
}

/// Every option of `peft train` that can be checked without reading a file.
pub fn train_options(o: &TrainOptions) -> anyhow::Result<()> {
    float("--lr", o.lr, Range::Positive)?;
    float("--eps", o.eps, Range::Positive)?;
    float("--weight-decay", o.weight_decay, Range::NonNegative)?;
    float("--warmup-ratio", o.warmup_ratio, Range::Unit)?;
    float("--max-grad-norm", o.max_grad_norm, Range::NonNegative)?;
    float("--max-train-minutes", o.max_train_minutes, Range::Positive)?;
    at_least_one("--batch-size", o.batch_size)?;
    at_least_one("--grad-accum", o.grad_accum)?;
    adapter_options(&o.adapter)?;
    data_options(&o.data)?;
    Ok(())
}

/// The inputs of `peft train` that `--out` must stay away from (the `--resume` checkpoint is
/// the run's own output, so it may lie inside `--out`).
pub fn train_out(o: &TrainOptions, out: &Path) -> anyhow::Result<()> {
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    if let Some(m) = &o.model {
        inputs.push(("--model folder", m));
    }
    if let Some(d) = &o.data.data {
        inputs.push(("--data file", d));
    }
    if let Some(d) = &o.data.eval_data {
        inputs.push(("--eval-data file", d));
    }
    if let Some(c) = &o.adapter.adapter_config {
        inputs.push(("--adapter-config file", c));
    }
    if let Some(a) = &o.adapter.init_adapter {
        inputs.push(("--init-adapter folder", a));
    }
    Ok(check_out_against_inputs(out, &inputs)?)
}

/// adapter_config.json keys a flag sets, compared with the checkpoint's on `--resume`.
fn keys_given(a: &AdapterOptions) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if a.method.is_some() || a.adapter_config.is_some() || a.init_adapter.is_some() {
        keys.extend(["peft_type", "use_dora", "use_rslora"]);
    }
    for (given, key) in [
        (a.r.is_some(), "r"),
        (a.alpha.is_some(), "lora_alpha"),
        (a.dropout.is_some(), "lora_dropout"),
        (a.target_modules.is_some(), "target_modules"),
        (a.num_virtual_tokens.is_some(), "num_virtual_tokens"),
        (
            a.encoder_reparameterization_type.is_some(),
            "encoder_reparameterization_type",
        ),
        (a.prefix_projection.is_some(), "prefix_projection"),
        (a.adapter_len.is_some(), "adapter_len"),
        (a.adapter_layers.is_some(), "adapter_layers"),
        (a.init_r.is_some(), "init_r"),
        (a.target_r.is_some(), "target_r"),
    ] {
        if given {
            keys.push(key);
        }
    }
    keys
}

/// JSON values equal as PEFT means them: 16 == 16.0, a missing key == null == false, and a
/// target list equal as a set (PEFT stores `target_modules` as a set).
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    let norm = |v: Option<&Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Value::Null,
        Some(Value::Array(items)) => {
            let mut items: Vec<String> = items.iter().map(Value::to_string).collect();
            items.sort();
            items.dedup();
            Value::from(items)
        }
        Some(v) => v.clone(),
    };
    match (norm(a), norm(b)) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (x, y) => x == y,
    }
}

/// A `--resume` continues the checkpoint's adapter: a flag that asks for another one (another
/// `--method`, `--r`, ...) is a contradiction, refused before any work.
pub fn resume_matches(
    a: &AdapterOptions,
    model_type: &str,
    checkpoint: &AdapterConfig,
    ckpt_dir: &Path,
) -> anyhow::Result<()> {
    let keys = keys_given(a);
    if keys.is_empty() {
        return Ok(());
    }
    let wanted = super::adapter_options::adapter_config(a, model_type)?;
    for key in keys {
        let (want, have) = (wanted.raw.get(key), checkpoint.raw.get(key));
        if !same(want, have) {
            let show = |v: Option<&Value>| v.map_or("unset".to_string(), Value::to_string);
            bail!(
                "--resume {}: the checkpoint's adapter has {key} = {}, but the options ask for {key} = {}; drop the option to continue the checkpoint, or start a new run",
                ckpt_dir.display(),
                show(have),
                show(want)
            );
        }
    }
    Ok(())
}

/// The memory one training micro-batch needs, checked before the first step: the logits with
/// their log-softmax and gradient (3 × vocab floats per position) and the activations autodiff
/// keeps per layer (about 16 × hidden floats per position), all f32.
pub fn batch_budget(dir: &peft::models::ModelDir, batch: usize, seq: usize) -> anyhow::Result<()> {
    use peft::models::loaded::Family;
    let (vocab, hidden, layers) = match &dir.family {
        Family::Llama(c) => (c.vocab_size, c.hidden_size, c.num_hidden_layers),
        Family::ChatGlm(c) => (c.padded_vocab_size, c.hidden_size, c.num_layers),
    };
    let per_position = (3 * vocab as u64).checked_add(16 * (hidden as u64) * (layers as u64));
    let bytes = per_position
        .and_then(|p| p.checked_mul(batch as u64))
        .and_then(|p| p.checked_mul(seq as u64))
        .and_then(|p| p.checked_mul(4));
    peft::io::budget::check(
        &format!("one training batch of {batch} × {seq} tokens"),
        "--batch-size or --max-len (or --pack)",
        bytes,
    )?;
    Ok(())
}
