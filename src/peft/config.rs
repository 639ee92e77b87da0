//! `adapter_config.json`, as PEFT reads and writes it (peft config.py, tuners/*/config.py).
//!
//! Reading accepts what PEFT writes: missing optional keys take PEFT's defaults, unknown keys are
//! ignored with a warning, and options we do not implement are refused with a clear error rather
//! than silently changing the numbers. Writing emits PEFT's full key set, sorted, so PEFT loads it.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::AdapterError;
use crate::peft::config_check::{check_adalora, check_lora};
use crate::peft::target::{MatchOptions, Matcher, Targets};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The PEFT version whose file format we follow (and the fixtures were made with).
pub const PEFT_VERSION: &str = "0.21.2";

/// PEFT's `peft_type` values we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    Lora,
    AdaLora,
    Ia3,
    PrefixTuning,
    PromptTuning,
    PTuning,
    AdaptionPrompt,
}

impl PeftType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "LORA" => Self::Lora,
            "ADALORA" => Self::AdaLora,
            "IA3" => Self::Ia3,
            "PREFIX_TUNING" => Self::PrefixTuning,
            "PROMPT_TUNING" => Self::PromptTuning,
            "P_TUNING" => Self::PTuning,
            "ADAPTION_PROMPT" => Self::AdaptionPrompt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lora => "LORA",
            Self::AdaLora => "ADALORA",
            Self::Ia3 => "IA3",
            Self::PrefixTuning => "PREFIX_TUNING",
            Self::PromptTuning => "PROMPT_TUNING",
            Self::PTuning => "P_TUNING",
            Self::AdaptionPrompt => "ADAPTION_PROMPT",
        }
    }

    /// Whether the method's weights can be folded into the base checkpoint.
    pub fn is_mergeable(self) -> bool {
        matches!(self, Self::Lora | Self::AdaLora | Self::Ia3)
    }
}

/// How LoRA factors start (`init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoraInit {
    /// PEFT's default: A kaiming-uniform (a = √5), B = 0.
    Default,
    /// A ~ N(0, 1/r), B = 0.
    Gaussian,
    /// Random A and B (PEFT's `false`, for tests: the adapter is not a no-op).
    Random,
}

/// Options shared by LoRA, rsLoRA, DoRA and AdaLoRA.
#[derive(Debug, Clone)]
pub struct LoraOptions {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub init: LoraInit,
    /// `(key, value)` in file order: the first matching key wins.
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
}

/// AdaLoRA's extra options (adalora/config.py).
#[derive(Debug, Clone)]
pub struct AdaLoraOptions {
    pub init_r: usize,
    pub target_r: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
    pub total_step: Option<usize>,
    /// After training: `{"<path>.lora_E": [kept?; init_r]}`.
    pub rank_pattern: Vec<(String, Vec<bool>)>,
}

/// IA3's options (ia3/config.py).
#[derive(Debug, Clone)]
pub struct Ia3Options {
    pub feedforward_modules: Targets,
}

/// The method-specific part of a config: a closed enum, dispatched by `match`.
#[derive(Debug, Clone)]
pub enum Method {
    Lora(LoraOptions),
    AdaLora(LoraOptions, AdaLoraOptions),
    Ia3(Ia3Options),
    /// Prompt tuning, P-tuning, prefix tuning / P-tuning v2, LLaMA-Adapter.
    PromptLearning(crate::peft::prompt::PromptOptions),
}

/// A parsed `adapter_config.json`.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub peft_type: PeftType,
    pub base_model_name_or_path: Option<String>,
    pub target_modules: Option<Targets>,
    pub exclude_modules: Option<Targets>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub layers_pattern: Vec<String>,
    pub method: Method,
    /// The JSON as read (or as built), kept so that fields we do not model survive a round trip.
    pub raw: Map<String, Value>,
}

fn err(path: &Path, message: impl Into<String>) -> AdapterError {
    AdapterError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Keys PEFT writes for each method; anything else is unknown to us and is warned about.
const COMMON_KEYS: &[&str] = &[
    "peft_type",
    "task_type",
    "auto_mapping",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "peft_version",
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
];
const LORA_KEYS: &[&str] = &[
    "r",
    "lora_alpha",
    "lora_dropout",
    "bias",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "rank_pattern",
    "alpha_pattern",
    "megatron_config",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "layer_replication",
    "lora_bias",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "qalora_group_size",
    "alora_invocation_tokens",
    "arrow_config",
    "ensure_weight_tying",
    "kasa_config",
    "monteclora_config",
    "use_bdlora",
    "velora_config",
];
const ADALORA_KEYS: &[&str] = &[
    "target_r",
    "init_r",
    "tinit",
    "tfinal",
    "deltaT",
    "beta1",
    "beta2",
    "orth_reg_weight",
    "total_step",
];
const IA3_KEYS: &[&str] = &["feedforward_modules", "init_ia3_weights"];

/// Keys that must hold their PEFT default (null, false, {} or []) because we do not implement them.
const MUST_BE_DEFAULT: &[&str] = &[
    "megatron_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "layer_replication",
    "lora_bias",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "alora_invocation_tokens",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "use_bdlora",
    "velora_config",
    "modules_to_save",
    "fan_in_fan_out",
    "loftq_config",
];

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn get_f64(
    raw: &Map<String, Value>,
    key: &str,
    default: f64,
    path: &Path,
) -> Result<f64, AdapterError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| err(path, format!("`{key}` must be a number, found {v}"))),
    }
}

fn get_usize(
    raw: &Map<String, Value>,
    key: &str,
    default: usize,
    path: &Path,
) -> Result<usize, AdapterError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            err(
                path,
                format!("`{key}` must be a non-negative integer, found {v}"),
            )
        }),
    }
}

fn get_bool(
    raw: &Map<String, Value>,
    key: &str,
    default: bool,
    path: &Path,
) -> Result<bool, AdapterError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| err(path, format!("`{key}` must be true or false, found {v}"))),
    }
}

fn get_targets(
    raw: &Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<Option<Targets>, AdapterError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let targets = Targets::from_json(v).ok_or_else(|| {
                err(
                    path,
                    format!("`{key}` must be a list of names or a regex string, found {v}"),
                )
            })?;
            // A bad regex is an error when the config is read, before any work.
            if let Targets::Regex(re) = &targets {
                regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| err(path, format!("`{key}`: invalid regex `{re}`: {e}")))?;
            }
            Ok(Some(targets))
        }
    }
}

fn get_pattern<T>(
    raw: &Map<String, Value>,
    key: &str,
    path: &Path,
    parse: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<(String, T)>, AdapterError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                parse(v)
                    .map(|t| (k.clone(), t))
                    .ok_or_else(|| err(path, format!("`{key}.{k}` has an invalid value {v}")))
            })
            .collect(),
        Some(v) => Err(err(path, format!("`{key}` must be an object, found {v}"))),
    }
}

fn parse_lora(raw: &Map<String, Value>, path: &Path) -> Result<LoraOptions, AdapterError> {
    for key in MUST_BE_DEFAULT {
        if let Some(v) = raw.get(*key) {
            if !is_default(v) {
                return Err(AdapterError::Unsupported(format!(
                    "{}: `{key}` = {v} is not supported",
                    path.display()
                )));
            }
        }
    }
    if let Some(bias) = raw.get("bias").and_then(Value::as_str) {
        if bias != "none" {
            return Err(AdapterError::Unsupported(format!(
                "{}: `bias` = \"{bias}\" (only \"none\")",
                path.display()
            )));
        }
    }
    let init = match raw.get("init_lora_weights") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => LoraInit::Default,
        Some(Value::Bool(false)) => LoraInit::Random,
        Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
        Some(v) => {
            return Err(AdapterError::Unsupported(format!(
                "{}: `init_lora_weights` = {v} (supported: true, false, \"gaussian\")",
                path.display()
            )))
        }
    };
    Ok(LoraOptions {
        r: get_usize(raw, "r", 8, path)?,
        lora_alpha: get_f64(raw, "lora_alpha", 8.0, path)?,
        lora_dropout: get_f64(raw, "lora_dropout", 0.0, path)?,
        use_rslora: get_bool(raw, "use_rslora", false, path)?,
        use_dora: get_bool(raw, "use_dora", false, path)?,
        init,
        rank_pattern: get_pattern(raw, "rank_pattern", path, |v| {
            v.as_u64().map(|x| x as usize)
        })?,
        alpha_pattern: get_pattern(raw, "alpha_pattern", path, Value::as_f64)?,
    })
}

fn parse_adalora(raw: &Map<String, Value>, path: &Path) -> Result<AdaLoraOptions, AdapterError> {
    let total_step = match raw.get("total_step") {
        None | Some(Value::Null) => None,
        Some(_) => Some(get_usize(raw, "total_step", 0, path)?),
    };
    let rank_pattern = get_pattern(raw, "rank_pattern", path, |v| {
        v.as_array().map(|a| {
            a.iter()
                .map(|b| b.as_bool().unwrap_or(false))
                .collect::<Vec<bool>>()
        })
    })
    .unwrap_or_default();
    Ok(AdaLoraOptions {
        init_r: get_usize(raw, "init_r", 12, path)?,
        target_r: get_usize(raw, "target_r", 8, path)?,
        tinit: get_usize(raw, "tinit", 0, path)?,
        tfinal: get_usize(raw, "tfinal", 0, path)?,
        delta_t: get_usize(raw, "deltaT", 1, path)?,
        beta1: get_f64(raw, "beta1", 0.85, path)?,
        beta2: get_f64(raw, "beta2", 0.85, path)?,
        orth_reg_weight: get_f64(raw, "orth_reg_weight", 0.5, path)?,
        total_step,
        rank_pattern,
    })
}

impl AdapterConfig {
    /// Reads `adapter_config.json` from an adapter folder.
    pub fn load_dir(dir: &Path) -> Result<Self, AdapterError> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Err(err(
                &path,
                "missing adapter_config.json (is this a PEFT adapter folder?)",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| err(&path, format!("invalid JSON: {e}")))?;
        Self::from_json(value, &path)
    }

    /// Parses a config object; `path` is only used in messages.
    pub fn from_json(value: Value, path: &Path) -> Result<Self, AdapterError> {
        let Value::Object(raw) = value else {
            return Err(err(path, "expected a JSON object"));
        };
        let peft_type_str = raw
            .get("peft_type")
            .and_then(Value::as_str)
            .ok_or_else(|| err(path, "missing `peft_type`"))?;
        let peft_type = PeftType::parse(peft_type_str).ok_or_else(|| {
            AdapterError::Unsupported(format!("{}: peft_type `{peft_type_str}`", path.display()))
        })?;
        let method_keys: Vec<&str> = match peft_type {
            PeftType::Lora => LORA_KEYS.to_vec(),
            PeftType::AdaLora => LORA_KEYS.iter().chain(ADALORA_KEYS).copied().collect(),
            PeftType::Ia3 => IA3_KEYS.to_vec(),
            _ => Vec::new(),
        };
        let method = match peft_type {
            PeftType::Lora => {
                let lora = parse_lora(&raw, path)?;
                check_lora(&lora, path)?;
                Method::Lora(lora)
            }
            PeftType::AdaLora => {
                let mut lora_raw = raw.clone();
                lora_raw.remove("rank_pattern");
                let lora = parse_lora(&lora_raw, path)?;
                if lora.use_dora {
                    return Err(AdapterError::Unsupported(format!(
                        "{}: AdaLoRA does not support use_dora",
                        path.display()
                    )));
                }
                let ada = parse_adalora(&raw, path)?;
                check_adalora(&ada, path)?;
                // AdaLoRA's `r` is unused (init_r is the rank); only alpha and dropout apply.
                check_lora(
                    &LoraOptions {
                        r: 1,
                        ..lora.clone()
                    },
                    path,
                )?;
                Method::AdaLora(lora, ada)
            }
            PeftType::Ia3 => {
                for key in ["modules_to_save", "fan_in_fan_out"] {
                    if raw.get(key).is_some_and(|v| !is_default(v)) {
                        return Err(AdapterError::Unsupported(format!(
                            "{}: `{key}` is not supported",
                            path.display()
                        )));
                    }
                }
                let ff = get_targets(&raw, "feedforward_modules", path)?
                    .unwrap_or(Targets::Names(Vec::new()));
                Method::Ia3(Ia3Options {
                    feedforward_modules: ff,
                })
            }
            other => Method::PromptLearning(crate::peft::prompt::PromptOptions::parse(
                other, &raw, path,
            )?),
        };
        if matches!(
            peft_type,
            PeftType::Lora | PeftType::AdaLora | PeftType::Ia3
        ) {
            for key in raw.keys() {
                if !COMMON_KEYS.contains(&key.as_str()) && !method_keys.contains(&key.as_str()) {
                    tracing::warn!("{}: ignoring unknown key `{key}`", path.display());
                }
            }
        }
        let layers_to_transform = match raw.get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as usize]),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|v| v.as_u64().map(|x| x as usize))
                    .collect(),
            ),
            Some(v) => {
                return Err(err(
                    path,
                    format!("`layers_to_transform` must be an int or a list, found {v}"),
                ))
            }
        };
        let layers_pattern = match raw.get("layers_pattern") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            peft_type,
            base_model_name_or_path: raw
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            target_modules: get_targets(&raw, "target_modules", path)?,
            exclude_modules: get_targets(&raw, "exclude_modules", path)?,
            layers_to_transform,
            layers_pattern,
            method,
            raw,
        })
    }

    /// The matcher for this config's `target_modules`; `default_targets` is used when the config
    /// names none (PEFT's per-architecture defaults).
    pub fn matcher(
        &self,
        default_targets: &[&str],
        output_head: &[&str],
    ) -> Result<Matcher, AdapterError> {
        let targets = self.target_modules.clone().unwrap_or_else(|| {
            Targets::Names(default_targets.iter().map(|s| s.to_string()).collect())
        });
        Matcher::new(
            &targets,
            MatchOptions {
                exclude: self.exclude_modules.clone(),
                layers_to_transform: self.layers_to_transform.clone(),
                layers_pattern: self.layers_pattern.clone(),
                output_head: output_head.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    /// The JSON PEFT would write: its full key set for the method, our values, sorted keys,
    /// `inference_mode: true`.
    pub fn to_json_string(&self) -> String {
        let mut out = defaults_for(self.peft_type);
        for (k, v) in &self.raw {
            out.insert(k.clone(), v.clone());
        }
        out.insert("peft_type".into(), json!(self.peft_type.as_str()));
        out.insert("inference_mode".into(), json!(true));
        out.insert("peft_version".into(), json!(PEFT_VERSION));
        out.entry("task_type").or_insert(json!("CAUSAL_LM"));
        // PEFT before 0.14 builds the config class from every key and fails on ones it does not
        // know (`LoraConfig.__init__() got an unexpected keyword argument`): keys added since
        // 0.13 are written only when they differ from the default.
        let defaults = defaults_for(self.peft_type);
        for key in newer_than_0_13(self.peft_type) {
            if out.get(*key) == defaults.get(*key) {
                out.remove(*key);
            }
        }
        let sorted: std::collections::BTreeMap<_, _> = out.into_iter().collect();
        let mut text = serde_json::to_string_pretty(&sorted).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Records AdaLoRA's boolean `rank_pattern` (`{"<path>.lora_E": [kept; init_r]}`), in the
    /// typed options and in the JSON written.
    pub fn set_adalora_rank_pattern(&mut self, pattern: Vec<(String, Vec<bool>)>) {
        if let Method::AdaLora(_, ada) = &mut self.method {
            let json: Map<String, Value> =
                pattern.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            self.raw.insert("rank_pattern".into(), Value::Object(json));
            ada.rank_pattern = pattern;
        }
    }

    /// Writes `adapter_config.json` into `dir` atomically.
    pub fn save_dir(&self, dir: &Path) -> Result<PathBuf, AdapterError> {
        let path = dir.join(CONFIG_FILE);
        crate::io::write_atomic(&path, self.to_json_string().as_bytes())?;
        Ok(path)
    }
}

/// Keys of PEFT 0.21.2's config classes that PEFT 0.13.2's lack
/// (`tests/fixtures/adapters/peft-0.13/fields.json`, made by the script beside it).
fn newer_than_0_13(peft_type: PeftType) -> &'static [&'static str] {
    const LORA: &[&str] = &[
        "alora_invocation_tokens",
        "arrow_config",
        "corda_config",
        "ensure_weight_tying",
        "eva_config",
        "exclude_modules",
        "kasa_config",
        "lora_bias",
        "lora_ga_config",
        "monteclora_config",
        "peft_version",
        "qalora_group_size",
        "target_parameters",
        "trainable_token_indices",
        "use_bdlora",
        "use_qalora",
        "velora_config",
    ];
    match peft_type {
        PeftType::Lora | PeftType::AdaLora => LORA,
        PeftType::Ia3 => &["exclude_modules", "peft_version"],
        PeftType::PrefixTuning => &["init_weights", "modules_to_save", "peft_version"],
        PeftType::PromptTuning | PeftType::PTuning => &["modules_to_save", "peft_version"],
        _ => &["peft_version"],
    }
}

/// PEFT 0.21.2's defaults for every key of a method's config.
fn defaults_for(peft_type: PeftType) -> Map<String, Value> {
    let common = json!({
        "auto_mapping": null, "base_model_name_or_path": null, "inference_mode": true, "peft_type": peft_type.as_str(),
        "peft_version": PEFT_VERSION, "revision": null, "task_type": "CAUSAL_LM",
    });
    let lora = json!({
        "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null, "bias": "none",
        "corda_config": null, "ensure_weight_tying": false, "eva_config": null, "exclude_modules": null,
        "fan_in_fan_out": false, "init_lora_weights": true, "kasa_config": null, "layer_replication": null,
        "layers_pattern": null, "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false,
        "lora_dropout": 0.0, "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core",
        "modules_to_save": null, "monteclora_config": null, "qalora_group_size": 16, "r": 8, "rank_pattern": {},
        "target_modules": null, "target_parameters": null, "trainable_token_indices": null, "use_bdlora": null,
        "use_dora": false, "use_qalora": false, "use_rslora": false, "velora_config": null,
    });
    let adalora = json!({
        "beta1": 0.85, "beta2": 0.85, "deltaT": 1, "init_r": 12, "orth_reg_weight": 0.5, "target_r": 8,
        "tfinal": 0, "tinit": 0, "total_step": null, "rank_pattern": null,
    });
    let ia3 = json!({
        "exclude_modules": null, "fan_in_fan_out": false, "feedforward_modules": null, "init_ia3_weights": true,
        "modules_to_save": null, "target_modules": null,
    });
    let prompt = crate::peft::prompt::config::defaults(peft_type);
    let mut out = Map::new();
    let parts: Vec<&Value> = match peft_type {
        PeftType::Lora => vec![&common, &lora],
        PeftType::AdaLora => vec![&common, &lora, &adalora],
        PeftType::Ia3 => vec![&common, &ia3],
        _ => vec![&common, &prompt],
    };
    for part in parts {
        if let Value::Object(m) = part {
            out.extend(m.clone());
        }
    }
    out
}
