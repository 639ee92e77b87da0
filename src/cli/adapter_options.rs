//! Adapter flags of `peft train` (`--method`, `--r`, `--alpha`, `--dropout`, `--target-modules`,
//! the prompt-learning options, `--adapter-config`, `--init-adapter`) turned into one PEFT
//! `AdapterConfig`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use peft::peft::AdapterConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(clap::Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AdapterOptions {
    /// lora, rslora, dora, ia3, adalora, prompt, ptuning, prefix, ptuning-v2 or llama-adapter
    /// (default: lora, or the method of --adapter-config / --init-adapter).
    #[arg(long)]
    pub method: Option<String>,
    /// A PEFT adapter_config.json to train, e.g. one of the presets in adapters/ (default: none).
    #[arg(long)]
    pub adapter_config: Option<PathBuf>,
    /// Start from an existing PEFT adapter: its config gives the method, its tensors the weights
    /// (default: none).
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// LoRA rank (default: 8).
    #[arg(long, visible_alias = "lora-r")]
    pub r: Option<usize>,
    /// LoRA alpha: the update is scaled by alpha / r (default: 16).
    #[arg(long, visible_alias = "lora-alpha")]
    pub alpha: Option<f64>,
    /// Dropout on the LoRA input (default: 0).
    #[arg(long, visible_alias = "lora-dropout")]
    pub dropout: Option<f64>,
    /// Comma-separated module names (suffix match), `all-linear` (or `all`, as LLaMA-Factory),
    /// or a regex (`re:...`) (default: every linear layer of the blocks).
    #[arg(long, visible_alias = "lora-target")]
    pub target_modules: Option<String>,
    /// Prompt, P-tuning, prefix, P-tuning v2: virtual tokens, which take context positions
    /// (default: 20).
    #[arg(long)]
    pub num_virtual_tokens: Option<usize>,
    /// Prompt tuning init: RANDOM, TEXT (with --prompt-tuning-init-text) or SAMPLE_VOCAB
    /// (default: RANDOM).
    #[arg(long)]
    pub prompt_tuning_init: Option<String>,
    /// Prompt tuning TEXT init: its tokens' embeddings (repeated / cut to the length) start the
    /// prompt (default: none).
    #[arg(long)]
    pub prompt_tuning_init_text: Option<String>,
    /// P-tuning prompt encoder: MLP or LSTM (default: MLP).
    #[arg(long)]
    pub encoder_reparameterization_type: Option<String>,
    /// P-tuning / prefix projection hidden size (default: the token dimension).
    #[arg(long)]
    pub encoder_hidden_size: Option<usize>,
    /// Prefix tuning: produce the prefix through embedding → Linear → tanh → Linear (default:
    /// true for `prefix`, false for `ptuning-v2`).
    #[arg(long)]
    pub prefix_projection: Option<bool>,
    /// LLaMA-Adapter: learned prompt tokens per adapted layer (default: 10).
    #[arg(long)]
    pub adapter_len: Option<usize>,
    /// LLaMA-Adapter: how many of the top layers to adapt (required for llama-adapter; default:
    /// none).
    #[arg(long)]
    pub adapter_layers: Option<usize>,
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
    // LLaMA-Factory spells all-linear `all` (`lora_target: all`).
    if s == "all-linear" || s == "all" {
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
        // Prompt-learning defaults: 20 virtual tokens (PEFT docs' examples); `prefix` is Li &
        // Liang's reparameterised prefix, `ptuning-v2` the deep prompt trained directly.
        "prompt" => {
            json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"})
        }
        "ptuning" => {
            json!({"peft_type": "P_TUNING", "num_virtual_tokens": 20, "encoder_reparameterization_type": "MLP"})
        }
        "prefix" => {
            json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20, "prefix_projection": true})
        }
        "ptuning-v2" => {
            json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20, "prefix_projection": false})
        }
        "llama-adapter" => json!({"peft_type": "ADAPTION_PROMPT", "adapter_len": 10}),
        "adalora" => {
            json!({"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "lora_alpha": 16, "target_modules": all})
        }
        other => bail!("unknown --method {other} (supported: {METHODS})"),
    };
    Ok(value.as_object().cloned().unwrap_or_default())
}

const METHODS: &str =
    "lora, rslora, dora, ia3, adalora, prompt, ptuning, prefix, ptuning-v2, llama-adapter";

/// The prompt-learning flags: (flag, config key, value, the peft_types it applies to).
fn prompt_flags(
    o: &AdapterOptions,
) -> Vec<(&'static str, &'static str, Value, &'static [&'static str])> {
    let mut out = Vec::new();
    let mut push = |flag, key, value: Option<Value>, types: &'static [&'static str]| {
        if let Some(v) = value {
            out.push((flag, key, v, types));
        }
    };
    const VIRTUAL: &[&str] = &["PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"];
    push(
        "--num-virtual-tokens",
        "num_virtual_tokens",
        o.num_virtual_tokens.map(|v| json!(v)),
        VIRTUAL,
    );
    push(
        "--prompt-tuning-init",
        "prompt_tuning_init",
        o.prompt_tuning_init
            .as_ref()
            .map(|v| json!(v.to_uppercase())),
        &["PROMPT_TUNING"],
    );
    push(
        "--prompt-tuning-init-text",
        "prompt_tuning_init_text",
        o.prompt_tuning_init_text.as_ref().map(|v| json!(v)),
        &["PROMPT_TUNING"],
    );
    push(
        "--encoder-reparameterization-type",
        "encoder_reparameterization_type",
        o.encoder_reparameterization_type
            .as_ref()
            .map(|v| json!(v.to_uppercase())),
        &["P_TUNING"],
    );
    push(
        "--encoder-hidden-size",
        "encoder_hidden_size",
        o.encoder_hidden_size.map(|v| json!(v)),
        &["P_TUNING", "PREFIX_TUNING"],
    );
    push(
        "--prefix-projection",
        "prefix_projection",
        o.prefix_projection.map(|v| json!(v)),
        &["PREFIX_TUNING"],
    );
    push(
        "--adapter-len",
        "adapter_len",
        o.adapter_len.map(|v| json!(v)),
        &["ADAPTION_PROMPT"],
    );
    push(
        "--adapter-layers",
        "adapter_layers",
        o.adapter_layers.map(|v| json!(v)),
        &["ADAPTION_PROMPT"],
    );
    out
}

/// Applies the method-specific flags, refusing those that do not belong to the method (they
/// would be silently ignored otherwise).
fn apply_method_flags(o: &AdapterOptions, raw: &mut Map<String, Value>) -> anyhow::Result<()> {
    let peft_type = raw
        .get("peft_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let prompt = matches!(
        peft_type.as_str(),
        "PROMPT_TUNING" | "P_TUNING" | "PREFIX_TUNING" | "ADAPTION_PROMPT"
    );
    if prompt {
        for (flag, given) in [
            ("--r", o.r.is_some()),
            ("--alpha", o.alpha.is_some()),
            ("--dropout", o.dropout.is_some()),
            ("--target-modules", o.target_modules.is_some()),
        ] {
            if given {
                bail!("{flag} does not apply to {peft_type}: prompt-learning methods add virtual tokens or prompts, not low-rank updates to target modules");
            }
        }
    }
    for (flag, key, value, types) in prompt_flags(o) {
        if !types.contains(&peft_type.as_str()) {
            bail!(
                "{flag} applies to {} only, not {peft_type}",
                types.join(", ")
            );
        }
        raw.insert(key.into(), value);
    }
    if peft_type == "ADAPTION_PROMPT" && raw.get("adapter_layers").is_none_or(Value::is_null) {
        bail!("--adapter-layers is required for llama-adapter: how many of the top decoder layers get adaption prompts (the LLaMA-Adapter paper adapts the top 30 of LLaMA-7B's 32)");
    }
    Ok(())
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
    apply_method_flags(o, &mut raw)?;
    raw.entry("task_type").or_insert(json!("CAUSAL_LM"));
    Ok(AdapterConfig::from_json(Value::Object(raw), &source)?)
}

/// Prompt tuning's TEXT init needs the text's token ids (PEFT tokenizes with special tokens,
/// e.g. BOS) and, for PEFT to reload the config, `tokenizer_name_or_path`.
pub fn tokenize_init_text(
    config: &mut AdapterConfig,
    tokenizer: &peft::tokenizer::TextTokenizer,
    model: &Path,
) -> anyhow::Result<()> {
    use peft::peft::prompt::{PromptInit, PromptKind, PromptOptions};
    use peft::peft::Method;
    if let Method::PromptLearning(PromptOptions {
        kind: PromptKind::PromptTuning {
            init: PromptInit::Text { text, ids },
        },
        ..
    }) = &mut config.method
    {
        let tokens = tokenizer
            .encode(text, true)
            .context("tokenizing --prompt-tuning-init-text")?;
        if tokens.is_empty() {
            bail!("--prompt-tuning-init-text {text:?} has no tokens");
        }
        *ids = Some(tokens.into_iter().map(i64::from).collect());
        if config
            .raw
            .get("tokenizer_name_or_path")
            .is_none_or(Value::is_null)
        {
            config.raw.insert(
                "tokenizer_name_or_path".into(),
                json!(model.display().to_string()),
            );
        }
    }
    Ok(())
}
