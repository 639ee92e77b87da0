//! PEFT's adapter files: `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.<module path>.lora_A.weight` ([r, in]), `.lora_B.weight` ([out, r]),
//! `.lora_magnitude_vector` ([out]) and `.ia3_l` ([out, 1], or [1, in] for feed-forward modules),
//! f32, metadata `{"format": "pt"}` (peft/utils/save_and_load.py).

use std::collections::BTreeSet;
use std::path::Path;

use burn::tensor::Device;
use rand::SeedableRng;

use crate::error::AdapterError;
use crate::io::{Checkpoint, OwnedTensor};
use crate::models::tensor_util::{to_vec, transpose};
use crate::models::{CausalLm, Linear};
use crate::peft::adapter::LinearAdapter;
use crate::peft::build::{build, init_values, AdapterValues};
use crate::peft::config::{AdapterConfig, Method, WEIGHTS_FILE};
use crate::peft::walker::{attach, plan, InjectionReport, Spec, Target};

pub const KEY_PREFIX: &str = "base_model.model.";

/// The file keys of one target's tensors, with their PEFT shapes.
pub fn tensor_keys(target: &Target) -> Vec<(String, Vec<usize>)> {
    let p = format!("{KEY_PREFIX}{}", target.path);
    let (i, o) = (target.d_in, target.d_out);
    match target.spec {
        Spec::Lora { r, dora, .. } => {
            let mut keys = vec![
                (format!("{p}.lora_A.weight"), vec![r, i]),
                (format!("{p}.lora_B.weight"), vec![o, r]),
            ];
            if dora {
                keys.push((format!("{p}.lora_magnitude_vector"), vec![o]));
            }
            keys
        }
        // AdaLoRA's tensors are bare parameters (no `.weight`), cut to the kept ranks.
        Spec::AdaLora { ref kept, .. } => {
            let k = kept.iter().filter(|&&x| x).count();
            vec![
                (format!("{p}.lora_A"), vec![k, i]),
                (format!("{p}.lora_E"), vec![k, 1]),
                (format!("{p}.lora_B"), vec![o, k]),
            ]
        }
        Spec::Ia3 { feedforward: true } => vec![(format!("{p}.ia3_l"), vec![1, i])],
        Spec::Ia3 { feedforward: false } => vec![(format!("{p}.ia3_l"), vec![o, 1])],
    }
}

/// Attaches freshly initialised adapters for training.
pub fn inject_new(
    model: &mut CausalLm,
    model_type: &str,
    config: &AdapterConfig,
    seed: u64,
    device: &Device,
) -> Result<InjectionReport, AdapterError> {
    if let Method::PromptLearning(opts) = &config.method {
        return crate::peft::prompt::files::inject(model, opts, seed, device);
    }
    let targets = plan(model, model_type, config)?;
    let init = match &config.method {
        Method::Lora(o) => o.init,
        _ => crate::peft::config::LoraInit::Default,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    attach(model, &targets, &mut |t, linear| {
        build(t, linear, init_values(t, init, &mut rng), device)
    })
}

fn read(file: &Checkpoint, key: &str, shape: &[usize]) -> Result<Vec<f32>, AdapterError> {
    let Some(entry) = file.get(key) else {
        return Err(AdapterError::MissingTensor {
            tensor: key.to_string(),
        });
    };
    if entry.shape != shape {
        return Err(AdapterError::ShapeMismatch {
            tensor: key.to_string(),
            expected: shape.to_vec(),
            actual: entry.shape.clone(),
        });
    }
    Ok(file.read_f32(key)?.0)
}

/// Loads a PEFT adapter folder into `model`: every tensor the config implies must be in the file
/// with PEFT's shape, and every tensor in the file must belong to a targeted module.
pub fn load_adapter(
    model: &mut CausalLm,
    model_type: &str,
    dir: &Path,
    device: &Device,
) -> Result<(AdapterConfig, InjectionReport), AdapterError> {
    if !dir.join(crate::peft::config::CONFIG_FILE).is_file()
        && dir.join(crate::peft::chatglm_prefix::CONFIG_FILE).is_file()
    {
        return crate::peft::prompt::files::load_chatglm_native(model, dir, device);
    }
    let config = AdapterConfig::load_dir(dir)?;
    if let Method::PromptLearning(opts) = &config.method {
        let report = crate::peft::prompt::files::load(model, &config, opts, dir, device)?;
        return Ok((config, report));
    }
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(AdapterError::Config {
            path,
            message: "missing adapter_model.safetensors".into(),
        });
    }
    let file = Checkpoint::open_files(&[path])?;
    let targets = plan(model, model_type, &config)?;
    let mut expected = BTreeSet::new();
    for t in &targets {
        expected.extend(tensor_keys(t).into_iter().map(|(k, _)| k));
    }
    if let Some(extra) = file.entries().find(|e| !expected.contains(&e.name)) {
        let module = extra
            .name
            .trim_start_matches(KEY_PREFIX)
            .split(".lora_")
            .next()
            .unwrap_or(&extra.name);
        let module = module.split(".ia3_l").next().unwrap_or(module).to_string();
        return Err(AdapterError::UnknownModule {
            tensor: extra.name.clone(),
            module,
        });
    }
    let report = attach(model, &targets, &mut |t, linear| {
        let keys = tensor_keys(t);
        let values = match t.spec {
            Spec::Lora { dora, .. } => AdapterValues::Lora {
                lora_a: read(&file, &keys[0].0, &keys[0].1)?,
                lora_b: read(&file, &keys[1].0, &keys[1].1)?,
                magnitude: if dora {
                    Some(read(&file, &keys[2].0, &keys[2].1)?)
                } else {
                    None
                },
            },
            Spec::Ia3 { .. } => AdapterValues::Ia3 {
                ia3_l: read(&file, &keys[0].0, &keys[0].1)?,
            },
            Spec::AdaLora { .. } => AdapterValues::AdaLora {
                lora_a: read(&file, &keys[0].0, &keys[0].1)?,
                lora_e: read(&file, &keys[1].0, &keys[1].1)?,
                lora_b: read(&file, &keys[2].0, &keys[2].1)?,
            },
        };
        build(t, linear, values, device)
    })?;
    Ok((config, report))
}

/// One linear's adapter tensors in PEFT's keys and orientation.
fn linear_tensors(path: &str, linear: &Linear) -> Vec<(String, OwnedTensor)> {
    let p = format!("{KEY_PREFIX}{path}");
    match &linear.adapter {
        None => Vec::new(),
        Some(LinearAdapter::Lora(l)) => {
            let [i, r] = l.lora_a.val().dims();
            let [_, o] = l.lora_b.val().dims();
            let mut out = vec![
                (
                    format!("{p}.lora_A.weight"),
                    OwnedTensor::from_f32(vec![r, i], &transpose(&to_vec(l.lora_a.val()), i, r)),
                ),
                (
                    format!("{p}.lora_B.weight"),
                    OwnedTensor::from_f32(vec![o, r], &transpose(&to_vec(l.lora_b.val()), r, o)),
                ),
            ];
            if let Some(m) = &l.magnitude {
                out.push((
                    format!("{p}.lora_magnitude_vector"),
                    OwnedTensor::from_f32(vec![o], &to_vec(m.val())),
                ));
            }
            out
        }
        Some(LinearAdapter::AdaLora(svd)) => {
            let [i, r] = svd.lora_a.val().dims();
            let [_, o] = svd.lora_b.val().dims();
            let kept: Vec<usize> = (0..r).filter(|&j| svd.kept[j]).collect();
            let k = kept.len();
            // Rows of Q and Λ, columns of P, at the kept ranks
            // (PEFT `resize_state_dict_by_rank_pattern`); zero-size for a module pruned to 0.
            let a = transpose(&to_vec(svd.lora_a.val()), i, r);
            let e = to_vec(svd.lora_e.val());
            let b = to_vec(svd.lora_b.val());
            let a_kept: Vec<f32> = kept
                .iter()
                .flat_map(|&j| a[j * i..(j + 1) * i].to_vec())
                .collect();
            let e_kept: Vec<f32> = kept.iter().map(|&j| e[j]).collect();
            let b_kept: Vec<f32> = kept
                .iter()
                .flat_map(|&j| b[j * o..(j + 1) * o].to_vec())
                .collect();
            vec![
                (
                    format!("{p}.lora_A"),
                    OwnedTensor::from_f32(vec![k, i], &a_kept),
                ),
                (
                    format!("{p}.lora_E"),
                    OwnedTensor::from_f32(vec![k, 1], &e_kept),
                ),
                (
                    format!("{p}.lora_B"),
                    OwnedTensor::from_f32(vec![o, k], &transpose(&b_kept, k, o)),
                ),
            ]
        }
        Some(LinearAdapter::Ia3(a)) => {
            let n = a.num_params();
            let shape = if a.feedforward {
                vec![1, n]
            } else {
                vec![n, 1]
            };
            vec![(
                format!("{p}.ia3_l"),
                OwnedTensor::from_f32(shape, &to_vec(a.ia3_l.val())),
            )]
        }
    }
}

/// The parameter id behind each adapter tensor name (for optimizer state that must survive a
/// reload, where ids change but names do not).
pub fn adapter_param_ids(model: &mut CausalLm) -> Vec<(String, burn::module::ParamId)> {
    let mut out = Vec::new();
    for (path, linear) in model.linears_mut() {
        let p = format!("{KEY_PREFIX}{path}");
        match &linear.adapter {
            None => {}
            Some(LinearAdapter::Lora(l)) => {
                out.push((format!("{p}.lora_A.weight"), l.lora_a.id));
                out.push((format!("{p}.lora_B.weight"), l.lora_b.id));
                if let Some(m) = &l.magnitude {
                    out.push((format!("{p}.lora_magnitude_vector"), m.id));
                }
            }
            Some(LinearAdapter::Ia3(a)) => out.push((format!("{p}.ia3_l"), a.ia3_l.id)),
            Some(LinearAdapter::AdaLora(svd)) => {
                out.push((format!("{p}.lora_A"), svd.lora_a.id));
                out.push((format!("{p}.lora_E"), svd.lora_e.id));
                out.push((format!("{p}.lora_B"), svd.lora_b.id));
            }
        }
    }
    if let Some(encoder) = model.prompt_encoder_mut() {
        let prefix = crate::peft::prompt::files::ENCODER_PREFIX;
        out.extend(
            encoder
                .param_ids()
                .into_iter()
                .map(|(name, id)| (format!("{prefix}{name}"), id)),
        );
    }
    out
}

/// Every adapter tensor of the model, keyed as PEFT saves them.
pub fn adapter_tensors(model: &mut CausalLm) -> Vec<(String, OwnedTensor)> {
    let mut out: Vec<(String, OwnedTensor)> = model
        .linears_mut()
        .into_iter()
        .flat_map(|(path, linear)| linear_tensors(&path, linear))
        .collect();
    if let Some(encoder) = model.prompt_encoder_mut() {
        out.extend(encoder.peft_tensors().to_owned_tensors(""));
    }
    out
}

/// The kept ranks of every AdaLoRA module, keyed as PEFT's `rank_pattern` (`<path>.lora_E`).
pub fn adalora_rank_pattern(model: &mut CausalLm) -> Vec<(String, Vec<bool>)> {
    model
        .linears_mut()
        .into_iter()
        .filter_map(|(path, linear)| match &linear.adapter {
            Some(LinearAdapter::AdaLora(svd)) => Some((format!("{path}.lora_E"), svd.kept.clone())),
            _ => None,
        })
        .collect()
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if needed).
pub fn save_adapter(
    model: &mut CausalLm,
    config: &AdapterConfig,
    dir: &Path,
) -> Result<(), AdapterError> {
    std::fs::create_dir_all(dir).map_err(|e| AdapterError::Config {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    if let Method::PromptLearning(opts) = &config.method {
        return crate::peft::prompt::files::save(model, config, opts, dir);
    }
    let tensors = adapter_tensors(model);
    crate::io::write_safetensors_atomic(&dir.join(WEIGHTS_FILE), &tensors, None)?;
    let pattern = adalora_rank_pattern(model);
    if pattern.iter().any(|(_, kept)| kept.contains(&false)) {
        // The saved tensors are cut to the kept ranks: the config must say which (PEFT resizes
        // the modules by it on load).
        let mut config = config.clone();
        config.set_adalora_rank_pattern(pattern);
        config.save_dir(dir)?;
    } else {
        config.save_dir(dir)?;
    }
    Ok(())
}
