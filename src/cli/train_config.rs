//! `peft train --config FILE`: a TOML file of options, keys spelled as the flags (`max-len`) or
//! in snake_case (`max_len`), HF / LLaMA-Factory names accepted (`learning_rate`, `lora_r`, ...).
//! An unknown key is an error that lists the accepted ones with a did-you-mean. The options a run
//! resolved to are written back as `OUT/run.toml`, which `peft train --config OUT/run.toml`
//! replays.

use std::path::Path;

use anyhow::{bail, Context};
use peft::train::run::RunConfig;
use serde_json::{Map, Value};

use super::train::TrainOptions;

/// HF Trainer / PEFT / LLaMA-Factory names and ours (flag spelling). The same pairs are clap
/// aliases of the flags (a test checks that every one parses).
pub const ALIASES: &[(&str, &str)] = &[
    ("learning-rate", "lr"),
    ("num-train-epochs", "epochs"),
    ("per-device-train-batch-size", "batch-size"),
    ("gradient-accumulation-steps", "grad-accum"),
    ("lora-r", "r"),
    ("lora-alpha", "alpha"),
    ("lora-dropout", "dropout"),
    ("lora-target", "target-modules"),
    ("cutoff-len", "max-len"),
    ("lr-scheduler-type", "lr-scheduler"),
];

/// The file name of the resolved options in the output folder.
pub const RUN_FILE: &str = "run.toml";

/// Keys a config file may hold, in flag spelling.
fn accepted_keys() -> Vec<String> {
    match serde_json::to_value(TrainOptions::default()) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Levenshtein distance, for the did-you-mean of an unknown key.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A file key in flag spelling: snake_case → kebab-case, aliases → our names.
fn canonical(key: &str) -> String {
    let kebab = key.replace('_', "-");
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == kebab)
        .map_or(kebab.clone(), |(_, ours)| ours.to_string())
}

/// The file's table with canonical keys; an unknown key is an error naming the file.
fn normalize(table: toml::Table, path: &Path) -> anyhow::Result<Map<String, Value>> {
    let accepted = accepted_keys();
    let mut out = Map::new();
    for (key, value) in table {
        let name = canonical(&key);
        if !accepted.contains(&name) {
            let aliases = ALIASES.iter().map(|(alias, _)| alias.to_string());
            let best = accepted
                .iter()
                .cloned()
                .chain(aliases)
                .map(|k| (distance(&name, &k), k))
                .min();
            let hint = match best {
                Some((d, k)) if d <= 3 => format!(" (did you mean `{k}`?)"),
                _ => String::new(),
            };
            bail!(
                "{}: unknown option `{key}`{hint}; accepted keys (kebab-case or snake_case): {}",
                path.display(),
                accepted.join(", ")
            );
        }
        if out.contains_key(&name) {
            bail!(
                "{}: `{key}` is given twice (as `{name}` or an alias)",
                path.display()
            );
        }
        out.insert(name, serde_json::to_value(value)?);
    }
    Ok(out)
}

/// Flags over file: every flag given on the command line replaces the file's value.
pub fn merge(cli: &TrainOptions, file: Option<&Path>) -> anyhow::Result<TrainOptions> {
    let Some(path) = file else {
        return Ok(cli.clone());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let from_file: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
    let mut merged = normalize(from_file, path)?;
    if let Value::Object(c) = serde_json::to_value(cli)? {
        for (k, v) in c {
            if !(v.is_null() || v == Value::Bool(false)) {
                merged.insert(k, v);
            }
        }
    }
    serde_json::from_value(Value::Object(merged))
        .with_context(|| format!("{}: invalid option value", path.display()))
}

/// AdamW's `(beta1, beta2)`: `--adam-beta1/--adam-beta2` (HF's names) or `--betas b1,b2`.
pub fn adam_betas(o: &TrainOptions) -> anyhow::Result<(f64, f64)> {
    if o.betas.is_some() && (o.adam_beta1.is_some() || o.adam_beta2.is_some()) {
        bail!("give AdamW's betas as --adam-beta1/--adam-beta2 or as --betas, not both");
    }
    let (b1, b2) = match &o.betas {
        Some(s) => parse_betas(s)?,
        None => (o.adam_beta1.unwrap_or(0.9), o.adam_beta2.unwrap_or(0.999)),
    };
    if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
        bail!("AdamW betas must be in [0, 1): got {b1}, {b2}");
    }
    Ok((b1, b2))
}

fn parse_betas(s: &str) -> anyhow::Result<(f64, f64)> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("--betas must be two numbers, e.g. 0.9,0.999")?;
    match parts[..] {
        [b1, b2] => Ok((b1, b2)),
        _ => bail!("--betas must be two numbers in [0, 1), e.g. 0.9,0.999"),
    }
}

fn absolute(p: &Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    p.as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
}

/// The options a run resolved to: defaults filled in from `config`, paths absolute, without
/// `--resume` / `--overwrite` (a replay is a fresh run).
pub fn resolved(
    o: &TrainOptions,
    c: &RunConfig,
    batch_size: usize,
    max_len: usize,
) -> TrainOptions {
    let mut r = o.clone();
    r.model = absolute(&o.model);
    r.out = absolute(&o.out);
    r.device = Some(o.device.clone().unwrap_or_else(|| "cpu".into()));
    r.data.data = absolute(&o.data.data);
    r.data.eval_data = absolute(&o.data.eval_data);
    r.data.max_len = Some(max_len);
    r.adapter.adapter_config = absolute(&o.adapter.adapter_config);
    r.adapter.init_adapter = absolute(&o.adapter.init_adapter);
    r.batch_size = Some(batch_size);
    r.grad_accum = Some(c.grad_accum);
    r.lr = Some(c.lr);
    r.betas = None;
    r.adam_beta1 = Some(c.adamw.beta1);
    r.adam_beta2 = Some(c.adamw.beta2);
    r.eps = Some(c.adamw.eps);
    r.weight_decay = Some(c.adamw.weight_decay);
    r.lr_scheduler = Some(c.scheduler);
    r.warmup_steps = Some(c.warmup_steps);
    r.warmup_ratio = Some(c.warmup_ratio);
    r.max_grad_norm = Some(c.max_grad_norm.unwrap_or(0.0));
    r.epochs = Some(c.epochs);
    r.max_steps = c.max_steps;
    r.logging_steps = Some(c.logging_steps);
    r.save_steps = c.save_steps;
    r.eval_steps = c.eval_steps;
    r.save_total_limit = c.save_total_limit;
    r.seed = Some(c.seed);
    r.resume = None;
    r.overwrite = false;
    r
}

/// The resolved options as `(key, value)` for the model card, without the machine's paths.
pub fn card_settings(options: &TrainOptions) -> anyhow::Result<Vec<(String, String)>> {
    let Value::Object(m) = serde_json::to_value(options)? else {
        return Ok(Vec::new());
    };
    let skip = ["model", "out", "overwrite", "resume", "device"];
    Ok(m.into_iter()
        .filter(|(k, v)| !v.is_null() && !skip.contains(&k.as_str()))
        .map(|(k, v)| {
            let shown = match (&v, k.as_str()) {
                (Value::String(p), "data" | "eval-data" | "adapter-config" | "init-adapter") => {
                    Path::new(p)
                        .file_name()
                        .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
                }
                (Value::String(s), _) => s.clone(),
                _ => v.to_string(),
            };
            (k, shown)
        })
        .collect())
}

/// Writes `OUT/run.toml`: the resolved options, with a header saying how to replay them.
pub fn write_run_file(options: &TrainOptions, out: &Path) -> anyhow::Result<()> {
    let body = toml::to_string(options).context("writing run.toml")?;
    let text = format!(
        "# The options of this run, defaults filled in. Replay it with\n#   peft train --config {} --out OTHER_DIR\n{body}",
        out.join(RUN_FILE).display()
    );
    peft::io::write_atomic(&out.join(RUN_FILE), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_and_hf_names_map_to_our_keys() {
        assert_eq!(canonical("max_len"), "max-len");
        assert_eq!(canonical("learning_rate"), "lr");
        assert_eq!(canonical("lora_target"), "target-modules");
        assert_eq!(canonical("lr-scheduler"), "lr-scheduler");
    }

    #[test]
    fn an_unknown_key_suggests_the_nearest_accepted_one() {
        let table: toml::Table = toml::from_str("lerning_rate = 1e-3").unwrap();
        let e = normalize(table, Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `learning-rate`"), "{e}");
        assert!(e.contains("max-len"), "lists the accepted keys: {e}");
    }

    #[test]
    fn edit_distance_counts_insertions_and_substitutions() {
        assert_eq!(distance("lr", "lr"), 0);
        assert_eq!(distance("epoch", "epochs"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
