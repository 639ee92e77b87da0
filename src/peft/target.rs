//! PEFT's module matching rules (peft tuners_utils.py `check_target_module_exists`,
//! utils/other.py `get_pattern_key`):
//! - a list of names matches a path equal to a name or ending with `.` + name;
//! - a single string is a regex that must match the whole path;
//! - `"all-linear"` is every linear layer except the output head;
//! - `layers_to_transform` keeps only paths whose layer index (after `layers_pattern`, or any
//!   `.<digits>.` segment) is listed; `exclude_modules` removes paths by the same rules;
//! - `rank_pattern`/`alpha_pattern` keys match as `(.*\.)?(key)$` anchored at the start.

use regex::Regex;

use crate::error::AdapterError;

/// `target_modules` as PEFT stores it: a list of names, or one regex string.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Names(Vec<String>),
    Regex(String),
    AllLinear,
}

impl Targets {
    /// From the JSON value of `target_modules` (a list, a string, or null).
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::String(s) if s == "all-linear" => Some(Self::AllLinear),
            serde_json::Value::String(s) => Some(Self::Regex(s.clone())),
            serde_json::Value::Array(items) => Some(Self::Names(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            )),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Names(n) => serde_json::json!(n),
            Self::Regex(r) => serde_json::json!(r),
            Self::AllLinear => serde_json::json!("all-linear"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Names(n) => format!("{n:?}"),
            Self::Regex(r) => format!("regex `{r}`"),
            Self::AllLinear => "\"all-linear\"".into(),
        }
    }
}

/// A compiled matcher for one adapter config.
#[derive(Debug, Clone)]
pub struct Matcher {
    targets: Compiled,
    exclude: Option<Compiled>,
    layers: Option<Vec<usize>>,
    layers_pattern: Vec<String>,
    output_head: Vec<String>,
}

#[derive(Debug, Clone)]
enum Compiled {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

/// Options that restrict where targets apply.
#[derive(Debug, Clone, Default)]
pub struct MatchOptions {
    pub exclude: Option<Targets>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub layers_pattern: Vec<String>,
    /// Module paths excluded by `"all-linear"` (the output head: `lm_head`, `transformer.output_layer`).
    pub output_head: Vec<String>,
}

fn full_regex(pattern: &str) -> Result<Regex, AdapterError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| AdapterError::Regex {
        pattern: pattern.to_string(),
        message: e.to_string(),
    })
}

fn compile(targets: &Targets) -> Result<Compiled, AdapterError> {
    Ok(match targets {
        Targets::Names(n) => Compiled::Names(n.clone()),
        Targets::Regex(r) => Compiled::Regex(full_regex(r)?),
        Targets::AllLinear => Compiled::AllLinear,
    })
}

/// True when `path` equals `name` or ends with `.name`.
pub fn suffix_match(path: &str, name: &str) -> bool {
    path == name
        || (path.len() > name.len()
            && path.ends_with(name)
            && path.as_bytes()[path.len() - name.len() - 1] == b'.')
}

impl Matcher {
    pub fn new(targets: &Targets, options: MatchOptions) -> Result<Self, AdapterError> {
        Ok(Self {
            targets: compile(targets)?,
            exclude: options.exclude.as_ref().map(compile).transpose()?,
            layers: options.layers_to_transform,
            layers_pattern: options.layers_pattern,
            output_head: options.output_head,
        })
    }

    fn matches_compiled(&self, compiled: &Compiled, path: &str, is_linear: bool) -> bool {
        match compiled {
            Compiled::Names(names) => names.iter().any(|n| suffix_match(path, n)),
            Compiled::Regex(re) => re.is_match(path),
            Compiled::AllLinear => is_linear && !self.output_head.iter().any(|h| h == path),
        }
    }

    /// Whether the module at `path` (a linear layer when `is_linear`) is a target.
    pub fn matches(&self, path: &str, is_linear: bool) -> bool {
        if let Some(ex) = &self.exclude {
            if self.matches_compiled(ex, path, is_linear) {
                return false;
            }
        }
        if !self.matches_compiled(&self.targets, path, is_linear) {
            return false;
        }
        // PEFT applies layers_to_transform only to list/all-linear targets; a regex is taken as is.
        match (&self.layers, &self.targets) {
            (Some(layers), Compiled::Names(_) | Compiled::AllLinear) => {
                layer_index(path, &self.layers_pattern).is_some_and(|i| layers.contains(&i))
            }
            _ => true,
        }
    }
}

/// The layer index of a path: the number after one of `patterns` (`layers.3.`), or, with no
/// pattern, the first `.<digits>.` segment (PEFT: `r".*\.[^.]*\.(\d+)\."`, which finds the last
/// such segment, so we search from the end).
pub fn layer_index(path: &str, patterns: &[String]) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    for i in (1..parts.len().saturating_sub(1)).rev() {
        let Ok(index) = parts[i].parse::<usize>() else {
            continue;
        };
        if patterns.is_empty() || patterns.iter().any(|p| p == parts[i - 1]) {
            return Some(index);
        }
    }
    None
}

/// The first pattern key (in file order) matching `path` as `(.*\.)?(key)$`, as PEFT's
/// `get_pattern_key`.
pub fn pattern_value<T: Clone>(
    patterns: &[(String, T)],
    path: &str,
) -> Result<Option<T>, AdapterError> {
    for (key, value) in patterns {
        let re =
            Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| AdapterError::Regex {
                pattern: key.clone(),
                message: e.to_string(),
            })?;
        if re.is_match(path) {
            return Ok(Some(value.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_match_requires_a_dot_boundary() {
        assert!(suffix_match("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(suffix_match("q_proj", "q_proj"));
        assert!(!suffix_match("model.layers.0.self_attn.xq_proj", "q_proj"));
    }

    #[test]
    fn layer_index_reads_the_number_after_the_pattern() {
        assert_eq!(layer_index("model.layers.12.mlp.up_proj", &[]), Some(12));
        assert_eq!(
            layer_index("model.layers.12.mlp.up_proj", &["layers".into()]),
            Some(12)
        );
        assert_eq!(layer_index("model.h.3.attn", &["layers".into()]), None);
    }
}
