//! Adapter flags of `peft train` (`--method`, `--r`, `--alpha`, `--dropout`, `--target-modules`,
//! `--adapter-config`, `--init-adapter`) turned into one PEFT `AdapterConfig`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use peft::peft::AdapterConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AdapterOptions {
    /// lora, rslora, dora, ia3 or adalora (default lora, or the method of --adapter-config / --init-adapter).
    #[arg(long)]
    pub method: Option<String>,
    /// A PEFT adapter_config.json to train (e.g. one of the presets in adapters/).
    #[arg(long)]
    pub adapter_config: Option<PathBuf>,
    /// Start from an existing PEFT adapter: its config gives the method, its tensors the weights.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    #[arg(long)]
    pub r: Option<usize>,
    #[arg(long)]
    pub alpha: Option<f64>,
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Comma-separated module names (suffix match), `all-linear`, or a regex (`re:...`).
    #[arg(long)]
    pub target_modules: Option<String>,
    // AdaLoRA's options (PEFT `AdaLoraConfig` field names in parentheses); kept in this struct
    // because serde's `flatten` does not nest under `deny_unknown_fields`.
    /// AdaLoRA: ranks every module starts with (`init_r`, default 12).
    #[arg(long)]
    pub init_r: Option<usize>,
    /// AdaLoRA: average rank left after pruning (`target_r`, default 8).
    #[arg(long)]
    pub target_r: Option<usize>,
    /// AdaLoRA: warm-up steps before pruning starts (`tinit`, default 0).
    #[arg(long)]
    pub tinit: Option<usize>,
    /// AdaLoRA: final steps with the rank pattern fixed (`tfinal`, default 0).
    #[arg(long)]
    pub tfinal: Option<usize>,
    /// AdaLoRA: steps between two budget allocations (`deltaT`, default 1).
    #[arg(long)]
    pub delta_t: Option<usize>,
    /// AdaLoRA: EMA factor of the sensitivity (`beta1`, default 0.85).
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdaLoRA: EMA factor of the uncertainty (`beta2`, default 0.85).
    #[arg(long)]
    pub beta2: Option<f64>,
    /// AdaLoRA: weight of the orthogonality penalty (`orth_reg_weight`, default 0.5).
    #[arg(long)]
    pub orth_reg_weight: Option<f64>,
    /// AdaLoRA: steps of the budget schedule (`total_step`; default: the run's step count).
    #[arg(long)]
    pub total_step: Option<usize>,
}

impl AdapterOptions {
    /// The AdaLoRA flags given, as `(adapter_config.json key, flag, value)`.
    fn adalora_given(&self) -> Vec<(&'static str, &'static str, Value)> {
        let mut out = Vec::new();
        let mut put = |key, flag, v: Option<Value>| {
            if let Some(v) = v {
                out.push((key, flag, v));
            }
        };
        put("init_r", "--init-r", self.init_r.map(|v| json!(v)));
        put("target_r", "--target-r", self.target_r.map(|v| json!(v)));
        put("tinit", "--tinit", self.tinit.map(|v| json!(v)));
        put("tfinal", "--tfinal", self.tfinal.map(|v| json!(v)));
        put("deltaT", "--delta-t", self.delta_t.map(|v| json!(v)));
        put("beta1", "--beta1", self.beta1.map(|v| json!(v)));
        put("beta2", "--beta2", self.beta2.map(|v| json!(v)));
        put(
            "orth_reg_weight",
            "--orth-reg-weight",
            self.orth_reg_weight.map(|v| json!(v)),
        );
        put(
            "total_step",
            "--total-step",
            self.total_step.map(|v| json!(v)),
        );
        out
    }
}

fn targets_json(s: &str) -> Value {
    if s == "all-linear" {
        json!("all-linear")
    } else if let Some(re) = s.strip_prefix("re:") {
        json!(re)
    } else {
        json!(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>())
    }
}

/// The base config of a method name, with PEFT's defaults and our sensible targets.
fn method_json(method: &str, model_type: &str) -> anyhow::Result<Map<String, Value>> {
    let all: Value = if model_type == "chatglm" {
        json!(["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])
    } else {
        json!([
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ])
    };
    let value = match method {
        "lora" => json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": all}),
        "rslora" => {
            json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true, "target_modules": all})
        }
        "dora" => {
            json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": true, "target_modules": all})
        }
        "ia3" if model_type == "chatglm" => {
            json!({"peft_type": "IA3", "target_modules": ["query_key_value", "dense_4h_to_h"], "feedforward_modules": ["dense_4h_to_h"]})
        }
        "ia3" => {
            json!({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]})
        }
        "adalora" => {
            json!({"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "lora_alpha": 16, "target_modules": all})
        }
        "prompt" | "ptuning" | "prefix" | "ptuning-v2" | "llama-adapter" => {
            bail!("--method {method} is not available in this version yet (supported: lora, rslora, dora, ia3, adalora)")
        }
        other => bail!("unknown --method {other} (supported: lora, rslora, dora, ia3, adalora)"),
    };
    Ok(value.as_object().cloned().unwrap_or_default())
}

fn read_json(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    value
        .as_object()
        .cloned()
        .with_context(|| format!("{}: expected a JSON object", path.display()))
}

/// Builds the adapter config: a file (`--adapter-config`, or `--init-adapter`'s), else the
/// method's defaults; then the flags on top.
pub fn adapter_config(o: &AdapterOptions, model_type: &str) -> anyhow::Result<AdapterConfig> {
    let (mut raw, source) = match (&o.adapter_config, &o.init_adapter) {
        (Some(file), _) => (read_json(file)?, file.clone()),
        (None, Some(dir)) => (
            read_json(&dir.join("adapter_config.json"))?,
            dir.join("adapter_config.json"),
        ),
        (None, None) => (
            method_json(o.method.as_deref().unwrap_or("lora"), model_type)?,
            PathBuf::from("--method"),
        ),
    };
    if o.adapter_config.is_some() || o.init_adapter.is_some() {
        if let Some(method) = &o.method {
            let wanted = method_json(method, model_type)?;
            if wanted.get("peft_type") != raw.get("peft_type") {
                bail!(
                    "--method {method} contradicts {} (peft_type {})",
                    source.display(),
                    raw.get("peft_type").unwrap_or(&Value::Null)
                );
            }
        }
    }
    if let Some(r) = o.r {
        raw.insert("r".into(), json!(r));
    }
    if let Some(a) = o.alpha {
        raw.insert("lora_alpha".into(), json!(a));
    }
    if let Some(d) = o.dropout {
        if !(0.0..1.0).contains(&d) {
            bail!("--dropout must be in [0, 1)");
        }
        raw.insert("lora_dropout".into(), json!(d));
    }
    if let Some(t) = &o.target_modules {
        raw.insert("target_modules".into(), targets_json(t));
    }
    let adalora_flags = o.adalora_given();
    if let Some((_, flag, _)) = adalora_flags.first() {
        if raw.get("peft_type") != Some(&json!("ADALORA")) {
            bail!("{flag} applies to --method adalora only");
        }
    }
    for (key, _, value) in adalora_flags {
        raw.insert(key.into(), value);
    }
    raw.entry("task_type").or_insert(json!("CAUSAL_LM"));
    Ok(AdapterConfig::from_json(Value::Object(raw), &source)?)
}
