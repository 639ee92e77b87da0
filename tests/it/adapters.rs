//! PEFT adapters on the tiny Llama: logits parity with PEFT, file round trips, folding, the
//! frozen base, and bad adapter input.

use std::fs;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use peft::io::Checkpoint;
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, Inputs, ModelDir};
use peft::peft::config::AdapterConfig;
use peft::peft::format::{adapter_tensors, inject_new, load_adapter, save_adapter};
use rstest::rstest;

use crate::common::*;

fn with_adapter(name: &str) -> CausalLm {
    let mut model = load_model("llama-tiny");
    load_adapter(
        &mut model,
        "llama",
        &fixture(&format!("adapters/{name}")),
        &device(),
    )
    .expect("adapter loads");
    model
}

#[rstest]
#[case::lora("lora")]
#[case::rslora_with_rank_and_alpha_patterns("lora-rslora-patterns")]
#[case::regex_targets("lora-regex")]
#[case::dora("dora")]
#[case::ia3("ia3")]
#[case::adalora("adalora")]
fn adapter_reproduces_peft_logits(#[case] name: &str) {
    let model = with_adapter(name);
    let reference = reference(&format!("adapters/{name}"));
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(
        diff <= LOGITS_TOL,
        "{name}: max abs diff {diff} > {LOGITS_TOL}"
    );
    // The adapter must matter: the base model's logits are far from the adapted ones.
    let base = to_vec(load_model("llama-tiny").forward(&reference.inputs(), None));
    assert!(
        reference.compare(&base).0 > 10.0 * LOGITS_TOL,
        "{name}: adapter changed nothing"
    );
}

#[rstest]
#[case::lora("lora")]
#[case::rslora_with_rank_and_alpha_patterns("lora-rslora-patterns")]
#[case::dora("dora")]
#[case::ia3("ia3")]
#[case::adalora("adalora")]
#[case::adalora_pruned_by_training("../train/adalora/final")]
fn loading_and_saving_an_adapter_keeps_every_tensor_bit_for_bit(#[case] name: &str) {
    let mut model = with_adapter(name);
    let config = AdapterConfig::load_dir(&fixture(&format!("adapters/{name}"))).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&mut model, &config, out.path()).unwrap();
    let ours = Checkpoint::open_files(&[out.path().join("adapter_model.safetensors")]).unwrap();
    let theirs = Checkpoint::open_files(&[fixture(&format!(
        "adapters/{name}/adapter_model.safetensors"
    ))])
    .unwrap();
    let mut compared = 0;
    for entry in theirs.entries() {
        let mine = ours
            .get(&entry.name)
            .unwrap_or_else(|| panic!("missing {}", entry.name));
        assert_eq!(mine.shape, entry.shape, "{}", entry.name);
        assert_eq!(ours.bytes(mine), theirs.bytes(entry), "{}", entry.name);
        compared += 1;
    }
    assert_eq!(compared, ours.entries().count());
    assert!(compared > 0);
    assert_eq!(
        ours.metadata()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    let original: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(fixture(&format!("adapters/{name}/adapter_config.json"))).unwrap(),
    )
    .unwrap();
    // Keys PEFT 0.13 does not know are left out when they hold the default (so older PEFT loads
    // the file); every other key is PEFT's, value for value.
    let fields: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(fixture("adapters/peft-0.13/fields.json")).unwrap(),
    )
    .unwrap();
    let known = &fields[original["peft_type"].as_str().unwrap()];
    let (saved, original) = (saved.as_object().unwrap(), original.as_object().unwrap());
    for (key, value) in original {
        match saved.get(key) {
            Some(v) => assert_eq!(v, value, "`{key}` differs from PEFT's"),
            None => assert!(
                !known.as_array().unwrap().contains(&key.as_str().into()),
                "`{key}` is left out, but PEFT 0.13 knows it"
            ),
        }
    }
    assert!(
        saved.keys().all(|k| original.contains_key(k)),
        "keys PEFT does not write: {saved:?}"
    );
}

#[rstest]
#[case::lora("lora")]
#[case::dora("dora")]
#[case::ia3("ia3")]
#[case::adalora("adalora")]
fn folding_an_adapter_into_the_weights_gives_the_unfolded_logits(#[case] name: &str) {
    let mut model = with_adapter(name);
    let reference = reference(&format!("adapters/{name}"));
    let unfolded = to_vec(model.forward(&reference.inputs(), None));
    for (_, linear) in model.linears_mut() {
        peft::peft::fold::fold(linear);
    }
    let folded = to_vec(model.forward(&reference.inputs(), None));
    let worst = unfolded
        .iter()
        .zip(&folded)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{name}: folded vs unfolded {worst}");
}

#[test]
fn backward_reaches_only_adapter_parameters_and_the_optimizer_holds_only_them() {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let mut model = dir.load(&device).unwrap();
    let base_ids: Vec<_> = burn::module::list_param_ids(&model);
    let config = AdapterConfig::load_dir(&fixture("adapters/lora")).unwrap();
    let report = inject_new(&mut model, "llama", &config, 0, &device).unwrap();
    assert_eq!(report.matched.len(), 14);
    let inputs = Inputs::new(vec![1, 5, 6, 7, 8, 9], 1, 6);
    let loss = model.forward(&inputs, None).powi_scalar(2).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    // 14 adapted linears × (A, B) and nothing else.
    assert_eq!(grads.len(), 28);
    for id in &base_ids {
        assert!(
            grads.get::<2>(*id).is_none() && grads.get::<1>(*id).is_none(),
            "base parameter {id} got a gradient"
        );
    }
    let mut optim = AdamWConfig::new().init();
    let model = optim.step(1e-3, model, grads);
    let record = optim.to_record();
    // AdamW keeps a few tensors (moments) per trainable parameter: only the 28 adapter tensors.
    assert!(
        record.len() % 28 == 0 && record.len() <= 3 * 28,
        "optimizer state holds {} tensors",
        record.len()
    );
    assert!(model.num_params() > 0);
}

#[test]
fn walker_report_matches_peft_trainable_parameter_counts() {
    let mut model = load_model("llama-tiny");
    let config = AdapterConfig::load_dir(&fixture("adapters/lora")).unwrap();
    let report = inject_new(&mut model, "llama", &config, 0, &device()).unwrap();
    let from_file: usize =
        Checkpoint::open_files(&[fixture("adapters/lora/adapter_model.safetensors")])
            .unwrap()
            .entries()
            .map(|e| e.shape.iter().product::<usize>())
            .sum();
    assert_eq!(report.trainable, from_file);
    assert!(report
        .to_string()
        .starts_with(&format!("trainable params: {from_file} || all params: ")));
}

#[test]
fn saved_new_adapter_reloads_to_the_same_logits() {
    let mut model = load_model("llama-tiny");
    let mut config = AdapterConfig::load_dir(&fixture("adapters/lora")).unwrap();
    config.raw.insert("init_lora_weights".into(), false.into());
    let config = AdapterConfig::from_json(
        serde_json::Value::Object(config.raw),
        std::path::Path::new("x"),
    )
    .unwrap();
    inject_new(&mut model, "llama", &config, 7, &device()).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&mut model, &config, out.path()).unwrap();
    let mut reloaded = load_model("llama-tiny");
    load_adapter(&mut reloaded, "llama", out.path(), &device()).unwrap();
    let inputs = Inputs::new(vec![1, 30, 31, 32], 1, 4);
    let a = to_vec(model.forward(&inputs, None));
    let b = to_vec(reloaded.forward(&inputs, None));
    assert_eq!(a, b);
    assert_eq!(adapter_tensors(&mut model).len(), 28);
}
