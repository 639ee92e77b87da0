//! What `peft compare` runs: the budget every method gets, the per-method presets
//! (`adapters/compare.toml`: a PEFT `adapter_config.json` and a learning rate per method) and the
//! `--set METHOD.KEY=VALUE` overrides on top of them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::CompareError;

/// The same training budget for every method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Optimizer steps.
    Steps(usize),
    /// Real (non-padding) training tokens; turned into steps over the shared data order.
    Tokens(usize),
    /// Minutes of optimizer steps (loading and checkpoints not counted), kept by each training
    /// child (`peft train --max-train-minutes`), so a resumed method trains only what is left.
    Minutes(f64),
}

impl FromStr for Budget {
    type Err = CompareError;
    fn from_str(s: &str) -> Result<Self, CompareError> {
        let bad = || CompareError::Budget(s.to_string());
        let (kind, n) = s.split_once('=').ok_or_else(bad)?;
        let n = n.trim();
        let count = || n.replace('_', "").parse::<usize>().ok().filter(|&n| n > 0);
        match kind.trim() {
            "steps" => count().map(Budget::Steps).ok_or_else(bad),
            "tokens" => count().map(Budget::Tokens).ok_or_else(bad),
            "minutes" => n
                .parse::<f64>()
                .ok()
                .filter(|m| *m > 0.0 && m.is_finite())
                .map(Budget::Minutes)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Steps(n) => write!(f, "steps={n}"),
            Budget::Tokens(n) => write!(f, "tokens={n}"),
            Budget::Minutes(m) => write!(f, "minutes={m}"),
        }
    }
}

/// The number of steps whose cumulative tokens first reach `budget`, given the per-step token
/// counts of each epoch in training order (`epoch_steps(e)`, as the data order of epoch `e`);
/// `None` when an epoch holds no tokens.
pub fn steps_for_tokens(
    epoch_steps: &mut dyn FnMut(usize) -> Vec<usize>,
    budget: usize,
) -> Option<usize> {
    let (mut steps, mut seen) = (0, 0);
    for epoch in 0.. {
        let counts = epoch_steps(epoch);
        if counts.iter().sum::<usize>() == 0 {
            return None;
        }
        for t in counts {
            if seen >= budget {
                return Some(steps);
            }
            steps += 1;
            seen += t;
        }
        if seen >= budget {
            return Some(steps);
        }
    }
    None
}

/// One `--set METHOD.KEY=VALUE`. VALUE is JSON when it parses as JSON (`16`, `true`,
/// `["q_proj","v_proj"]`), a string otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub method: String,
    pub key: String,
    pub value: Value,
}

impl FromStr for Override {
    type Err = CompareError;
    fn from_str(s: &str) -> Result<Self, CompareError> {
        let bad = || CompareError::Override(s.to_string());
        let (path, value) = s.split_once('=').ok_or_else(bad)?;
        let (method, key) = path.trim().split_once('.').ok_or_else(bad)?;
        if method.is_empty() || key.is_empty() {
            return Err(bad());
        }
        let value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| Value::String(value.trim().to_string()));
        Ok(Self {
            method: method.to_string(),
            key: key.to_string(),
            value,
        })
    }
}

/// One method's entry of `compare.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodPreset {
    /// A PEFT adapter_config.json, relative to the presets file. When the file does not exist the
    /// method trains with `peft train --method NAME` and its built-in defaults.
    pub preset: Option<PathBuf>,
    /// AdamW learning rate.
    pub lr: f64,
    /// Why this learning rate (shown nowhere; documentation for the reader of the file).
    #[serde(default)]
    pub why: Option<String>,
}

/// All presets of a `compare.toml`, by method name.
#[derive(Debug, Clone)]
pub struct Presets {
    pub path: PathBuf,
    pub methods: BTreeMap<String, MethodPreset>,
}

/// A method resolved against its preset and the overrides: what its `peft train` child gets.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSpec {
    pub name: String,
    /// The adapter config to train, or `None`: `peft train --method NAME` with its defaults.
    pub adapter_config: Option<Map<String, Value>>,
    pub lr: f64,
}

impl Presets {
    pub fn load(path: &Path) -> Result<Self, CompareError> {
        let err = |message: String| CompareError::Presets {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let methods: BTreeMap<String, MethodPreset> =
            toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Some((name, _)) = methods.iter().find(|(_, p)| !(p.lr > 0.0)) {
            return Err(err(format!("[{name}] lr must be > 0")));
        }
        Ok(Self {
            path: path.to_path_buf(),
            methods,
        })
    }

    pub fn get(&self, name: &str) -> Result<&MethodPreset, CompareError> {
        self.methods
            .get(name)
            .ok_or_else(|| CompareError::UnknownMethod {
                name: name.to_string(),
                presets: self.path.clone(),
                known: self.methods.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The preset of `name` for a `model_type` model with the overrides addressed to it applied
    /// (`lr` is the learning rate, every other key an adapter_config.json key). A preset
    /// `X.json` has a variant `X-MODEL_TYPE.json` beside it when the model family names its
    /// modules differently (`lora-chatglm.json` targets the fused `query_key_value`).
    pub fn spec(
        &self,
        name: &str,
        model_type: &str,
        overrides: &[Override],
    ) -> Result<MethodSpec, CompareError> {
        let preset = self.get(name)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let file = preset.preset.as_ref().map(|p| {
            let variant = p.with_file_name(format!(
                "{}-{model_type}.json",
                p.file_stem().unwrap_or_default().to_string_lossy()
            ));
            if dir.join(&variant).is_file() {
                dir.join(variant)
            } else {
                dir.join(p)
            }
        });
        let mut adapter_config = match file.filter(|f| f.is_file()) {
            Some(f) => Some(read_object(&f)?),
            None => None,
        };
        let mut lr = preset.lr;
        for o in overrides.iter().filter(|o| o.method == name) {
            if o.key == "lr" {
                lr = o.value.as_f64().filter(|&lr| lr > 0.0).ok_or_else(|| {
                    CompareError::Method(format!("--set {name}.lr: expected a positive number"))
                })?;
                continue;
            }
            let config = adapter_config.as_mut().ok_or_else(|| {
                CompareError::Method(format!(
                    "--set {name}.{}: {name} has no preset adapter_config.json in {} to apply it to",
                    o.key,
                    dir.display()
                ))
            })?;
            config.insert(o.key.clone(), o.value.clone());
        }
        Ok(MethodSpec {
            name: name.to_string(),
            adapter_config,
            lr,
        })
    }
}

impl MethodSpec {
    /// Clamps preset values the model cannot take to what it has (LLaMA-Adapter's
    /// `adapter_layers` 30, the paper's value for LLaMA-7B, on a model with fewer layers); one
    /// note per change, for the results.
    pub fn fit_to_model(&mut self, num_layers: usize) -> Vec<String> {
        let mut notes = Vec::new();
        let Some(config) = self.adapter_config.as_mut() else {
            return notes;
        };
        if let Some(n) = config.get("adapter_layers").and_then(Value::as_u64) {
            if n as usize > num_layers {
                config.insert("adapter_layers".into(), num_layers.into());
                notes.push(format!(
                    "adapter_layers {n} clamped to the model's {num_layers} layers"
                ));
            }
        }
        notes
    }
}

fn read_object(path: &Path) -> Result<Map<String, Value>, CompareError> {
    let err = |message: String| CompareError::Presets {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    match serde_json::from_str(&text).map_err(|e| err(e.to_string()))? {
        Value::Object(map) => Ok(map),
        _ => Err(err("expected a JSON object".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_layers_beyond_the_model_are_clamped_with_a_note() {
        let config = serde_json::json!({"peft_type": "ADAPTION_PROMPT", "adapter_layers": 30});
        let mut spec = MethodSpec {
            name: "llama-adapter".into(),
            adapter_config: config.as_object().cloned(),
            lr: 1e-3,
        };
        assert_eq!(
            spec.fit_to_model(2),
            ["adapter_layers 30 clamped to the model's 2 layers"]
        );
        assert_eq!(spec.adapter_config.as_ref().unwrap()["adapter_layers"], 2);
        assert!(spec.fit_to_model(2).is_empty(), "a value that fits is kept");
    }

    #[test]
    fn budgets_parse_and_reject_zero_or_unknown_kinds() {
        assert_eq!("steps=30".parse::<Budget>().ok(), Some(Budget::Steps(30)));
        assert_eq!(
            "tokens=20_000".parse::<Budget>().ok(),
            Some(Budget::Tokens(20_000))
        );
        assert_eq!(
            "minutes=2.5".parse::<Budget>().ok(),
            Some(Budget::Minutes(2.5))
        );
        for bad in ["steps=0", "steps", "epochs=2", "minutes=-1", "tokens=x"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn token_budget_counts_steps_across_epochs() {
        let mut epochs = |e: usize| {
            if e % 2 == 0 {
                vec![10, 20, 30]
            } else {
                vec![30, 20, 10]
            }
        };
        assert_eq!(steps_for_tokens(&mut epochs, 1), Some(1));
        assert_eq!(steps_for_tokens(&mut epochs, 10), Some(1));
        assert_eq!(steps_for_tokens(&mut epochs, 11), Some(2));
        assert_eq!(steps_for_tokens(&mut epochs, 60), Some(3));
        assert_eq!(steps_for_tokens(&mut epochs, 61), Some(4));
        assert_eq!(steps_for_tokens(&mut epochs, 91), Some(5));
        assert_eq!(steps_for_tokens(&mut |_| vec![0, 0], 5), None);
    }

    #[test]
    fn overrides_parse_json_values_and_fall_back_to_strings() {
        let o: Override = "lora.r=16".parse().unwrap();
        assert_eq!((o.method.as_str(), o.key.as_str()), ("lora", "r"));
        assert_eq!(o.value, serde_json::json!(16));
        let o: Override = "ia3.target_modules=[\"k_proj\"]".parse().unwrap();
        assert_eq!(o.value, serde_json::json!(["k_proj"]));
        let o: Override = "prefix.init=random".parse().unwrap();
        assert_eq!(o.value, serde_json::json!("random"));
        assert!("lora=16".parse::<Override>().is_err());
        assert!(".r=16".parse::<Override>().is_err());
    }

    #[test]
    fn spec_applies_overrides_to_the_preset_and_the_learning_rate() {
        let dir = std::env::temp_dir().join(format!("peft-compare-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("lora.json"), r#"{"peft_type": "LORA", "r": 8}"#).unwrap();
        std::fs::write(
            dir.join("compare.toml"),
            "[lora]\npreset = \"lora.json\"\nlr = 2e-4\n[prompt]\npreset = \"prompt.json\"\nlr = 3e-2\n",
        )
        .unwrap();
        let presets = Presets::load(&dir.join("compare.toml")).unwrap();
        let sets: Vec<Override> = ["lora.r=16", "lora.lr=1e-3", "prompt.lr=0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let lora = presets.spec("lora", "llama", &sets).unwrap();
        assert_eq!(lora.lr, 1e-3);
        assert_eq!(lora.adapter_config.unwrap()["r"], serde_json::json!(16));
        let prompt = presets.spec("prompt", "llama", &sets).unwrap();
        assert_eq!((prompt.lr, prompt.adapter_config), (0.1, None));
        let bad: Override = "prompt.num_virtual_tokens=8".parse().unwrap();
        assert!(presets.spec("prompt", "llama", &[bad]).is_err());
        std::fs::write(
            dir.join("lora-chatglm.json"),
            r#"{"peft_type": "LORA", "r": 2}"#,
        )
        .unwrap();
        let glm = presets.spec("lora", "chatglm", &[]).unwrap();
        assert_eq!(glm.adapter_config.unwrap()["r"], serde_json::json!(2));
        assert!(matches!(
            presets.spec("lroa", "llama", &[]),
            Err(CompareError::UnknownMethod { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
