//! Prompt-learning methods against PEFT: the six adapter fixtures' logits, KV-cached generation
//! with virtual tokens and prefixes, and save/load round trips (PEFT's files + our encoder file).

use peft::generate::{generate, SamplingConfig};
use peft::io::Checkpoint;
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, Inputs};
use peft::peft::format::{load_adapter, save_adapter};
use rstest::rstest;

use crate::common::*;

fn with_adapter(name: &str) -> (CausalLm, peft::peft::AdapterConfig) {
    let mut model = load_model("llama-tiny");
    let (config, _) = load_adapter(&mut model, "llama", &fixture(name), &device())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (model, config)
}

#[rstest]
#[case::prompt_tuning("adapters/prompt")]
#[case::ptuning_mlp("adapters/ptuning-mlp")]
#[case::ptuning_lstm("adapters/ptuning-lstm")]
#[case::prefix("adapters/prefix")]
#[case::prefix_projection("adapters/prefix-projection")]
#[case::adaption_prompt("adapters/adaption-prompt")]
// Saved by `peft train` (tests/fixtures/ours), reloaded by PEFT for the reference logits.
#[case::ours_prompt_text_init("ours/prompt")]
#[case::ours_ptuning_mlp("ours/ptuning-mlp")]
#[case::ours_ptuning_lstm("ours/ptuning-lstm")]
#[case::ours_prefix_projection("ours/prefix")]
#[case::ours_ptuning_v2("ours/ptuning-v2")]
#[case::ours_llama_adapter("ours/llama-adapter")]
fn prompt_learning_adapters_reproduce_peft_logits(#[case] name: &str) {
    let (model, _) = with_adapter(name);
    let reference = reference(name);
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "{name}: compared only {compared} positions");
    assert!(
        diff <= LOGITS_TOL,
        "{name}: max abs diff {diff} > {LOGITS_TOL}"
    );
    let base = to_vec(load_model("llama-tiny").forward(&reference.inputs(), None));
    assert!(
        reference.compare(&base).0 > 10.0 * LOGITS_TOL,
        "{name}: the adapter changed nothing"
    );
}

#[rstest]
#[case::prompt_tuning("adapters/prompt")]
#[case::ptuning_lstm("adapters/ptuning-lstm")]
#[case::prefix("adapters/prefix")]
#[case::adaption_prompt("adapters/adaption-prompt")]
fn cached_decoding_with_a_prompt_adapter_matches_a_full_forward(#[case] name: &str) {
    let (model, _) = with_adapter(name);
    let ids: Vec<i64> = vec![1, 40, 41, 42, 43, 44, 45, 46];
    let full = to_vec(model.forward(&Inputs::new(ids.clone(), 1, ids.len()), None));
    let mut cache = model.new_cache();
    let _ = model.forward(&Inputs::new(ids[..5].to_vec(), 1, 5), Some(&mut cache));
    let rest = to_vec(model.forward(&Inputs::new(ids[5..].to_vec(), 1, 3), Some(&mut cache)));
    let vocab = model.vocab_size();
    let worst = full[5 * vocab..]
        .iter()
        .zip(&rest)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{name}: cached vs full: {worst}");
}

/// Greedy decoding without a cache: a full forward over everything so far at each step.
fn greedy_without_cache(model: &CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut out = Vec::new();
    let vocab = model.vocab_size();
    for _ in 0..n {
        let logits = to_vec(model.forward(&Inputs::new(ids.clone(), 1, ids.len()), None));
        let last = &logits[(ids.len() - 1) * vocab..];
        let next = last
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32;
        out.push(next);
        ids.push(next as i64);
    }
    out
}

#[rstest]
#[case::prompt_tuning("adapters/prompt")]
#[case::ptuning_mlp("adapters/ptuning-mlp")]
#[case::prefix("adapters/prefix")]
#[case::prefix_projection("adapters/prefix-projection")]
#[case::adaption_prompt("adapters/adaption-prompt")]
fn greedy_generation_with_the_kv_cache_equals_the_no_cache_result(#[case] name: &str) {
    let (model, _) = with_adapter(name);
    let prompt: Vec<u32> = vec![1, 60, 61, 62, 63];
    let cfg = SamplingConfig {
        max_new_tokens: 10,
        stop_at_eos: false,
        ..Default::default()
    };
    let cached = generate(&model, &prompt, &cfg, &mut |_| {}).unwrap();
    assert_eq!(cached, greedy_without_cache(&model, &prompt, 10), "{name}");
    let base = generate(&load_model("llama-tiny"), &prompt, &cfg, &mut |_| {}).unwrap();
    assert_ne!(cached, base, "{name}: the adapter changed no token");
}

#[rstest]
#[case::prompt_tuning("adapters/prompt")]
#[case::ptuning_lstm("adapters/ptuning-lstm")]
#[case::prefix_projection("adapters/prefix-projection")]
#[case::adaption_prompt("adapters/adaption-prompt")]
fn saving_a_loaded_prompt_adapter_writes_what_peft_wrote(#[case] name: &str) {
    let (mut model, config) = with_adapter(name);
    let out = tempfile::tempdir().unwrap();
    save_adapter(&mut model, &config, out.path()).unwrap();
    let ours = Checkpoint::open_files(&[out.path().join("adapter_model.safetensors")]).unwrap();
    let theirs =
        Checkpoint::open_files(&[fixture(name).join("adapter_model.safetensors")]).unwrap();
    let mut compared = 0;
    for entry in theirs.entries() {
        let mine = ours
            .get(&entry.name)
            .unwrap_or_else(|| panic!("missing {}", entry.name));
        assert_eq!(mine.shape, entry.shape, "{}", entry.name);
        assert_eq!(ours.bytes(mine), theirs.bytes(entry), "{}", entry.name);
        compared += 1;
    }
    assert!(compared > 0);
    assert_eq!(compared, ours.entries().count());
    let mine: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let fixture_config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    // Keys PEFT 0.13 does not know are left out when they hold the default (so older PEFT loads
    // the file); every other key has PEFT's value.
    let fields: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("adapters/peft-0.13/fields.json")).unwrap(),
    )
    .unwrap();
    let known = fields[fixture_config["peft_type"].as_str().unwrap()]
        .as_array()
        .unwrap();
    for (k, v) in fixture_config.as_object().unwrap() {
        match mine.get(k) {
            Some(m) => assert_eq!(m, v, "{name}: `{k}`"),
            None => assert!(
                !known.contains(&k.as_str().into()),
                "{name}: `{k}` left out, but PEFT 0.13 knows it"
            ),
        }
    }
}

#[rstest]
#[case::ptuning_mlp("prompt-encoders/ptuning-mlp")]
#[case::ptuning_lstm("prompt-encoders/ptuning-lstm")]
#[case::prefix_projection("prompt-encoders/prefix-projection")]
fn full_encoders_compute_peft_prompt_embeddings_from_their_weights(#[case] name: &str) {
    let (mut model, config) = with_adapter(name);
    let weights =
        Checkpoint::open_files(&[fixture(name).join("prompt_encoder.safetensors")]).unwrap();
    let encoder = model
        .prompt_encoder_mut()
        .as_ref()
        .expect("encoder attached");
    assert_eq!(
        encoder.encoder_tensors().map.len(),
        weights.entries().count(),
        "{name}: every encoder weight is loaded"
    );
    let out = tempfile::tempdir().unwrap();
    save_adapter(&mut model, &config, out.path()).unwrap();
    let (ours, shape) = Checkpoint::open_files(&[out.path().join("adapter_model.safetensors")])
        .unwrap()
        .read_f32("prompt_embeddings")
        .unwrap();
    let (theirs, their_shape) =
        Checkpoint::open_files(&[fixture(name).join("adapter_model.safetensors")])
            .unwrap()
            .read_f32("prompt_embeddings")
            .unwrap();
    assert_eq!(shape, their_shape);
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-5,
        "{name}: encoder output differs from PEFT's by {worst}"
    );
    // The encoder file round-trips bit for bit, so a resumed run continues from the same weights.
    let saved = Checkpoint::open_files(&[out.path().join("prompt_encoder.safetensors")]).unwrap();
    for entry in weights.entries() {
        let mine = saved
            .get(&entry.name)
            .unwrap_or_else(|| panic!("missing {}", entry.name));
        assert_eq!(saved.bytes(mine), weights.bytes(entry), "{}", entry.name);
    }
}

#[test]
fn a_chatglm_native_ptuning_v2_folder_is_an_adapter_for_generate() {
    let name = "chatglm-tiny-ptuning-v2-proj";
    let mut model = load_model("chatglm-tiny");
    let (config, report) = load_adapter(&mut model, "chatglm", &fixture(name), &device()).unwrap();
    assert_eq!(config.peft_type.as_str(), "PREFIX_TUNING");
    assert_eq!(report.matched, ["transformer.prefix_encoder"]);
    let reference = reference(name);
    let (diff, compared) = reference.compare(&to_vec(model.forward(&reference.inputs(), None)));
    assert!(compared > 40);
    assert!(diff <= LOGITS_TOL, "{diff}");
    let prompt: Vec<u32> = vec![5, 40, 41, 42];
    let cfg = SamplingConfig {
        max_new_tokens: 8,
        stop_at_eos: false,
        ..Default::default()
    };
    let cached = generate(&model, &prompt, &cfg, &mut |_| {}).unwrap();
    assert_eq!(cached, greedy_without_cache(&model, &prompt, 8));
}

#[test]
fn a_prompt_that_fits_only_without_the_virtual_tokens_is_refused() {
    let (model, _) = with_adapter("adapters/prompt");
    let max = model.max_positions();
    let cfg = SamplingConfig {
        max_new_tokens: 1,
        ..Default::default()
    };
    let fits: Vec<u32> = vec![7; max - 5];
    assert!(generate(&model, &fits, &cfg, &mut |_| {}).is_ok());
    let too_long: Vec<u32> = vec![7; max - 4];
    let err = generate(&model, &too_long, &cfg, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "max_position_embeddings = {max} less the adapter's 5 virtual positions"
        )),
        "{err}"
    );
}
