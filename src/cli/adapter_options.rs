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
    /// lora, rslora, dora or ia3 (default lora, or the method of --adapter-config / --init-adapter).
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
        "adalora" | "prompt" | "ptuning" | "prefix" | "ptuning-v2" | "llama-adapter" => {
            bail!("--method {method} is not available in this version yet (supported: lora, rslora, dora, ia3)")
        }
        other => bail!("unknown --method {other} (supported: lora, rslora, dora, ia3)"),
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
    raw.entry("task_type").or_insert(json!("CAUSAL_LM"));
    Ok(AdapterConfig::from_json(Value::Object(raw), &source)?)
}
