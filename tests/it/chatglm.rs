//! ChatGLM2/3 against THUDM's reference code: logits and greedy decoding, PEFT LoRA through the
//! walker, the native P-tuning v2 prefix (load, save, PEFT conversion), pickle-only folders, and
//! the CLI on a ChatGLM checkpoint.

use std::fs;

use peft::generate::{generate, SamplingConfig};
use peft::io::Checkpoint;
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, Inputs, ModelDir};
use peft::peft::chatglm_prefix::PrefixEncoder;
use peft::peft::format::load_adapter;
use rstest::rstest;

use crate::common::*;

const BASE: &str = "chatglm-tiny";

fn chatglm_config() -> peft::models::chatglm::ChatGlmConfig {
    match ModelDir::open(&fixture(BASE))
        .expect("fixture opens")
        .family
    {
        peft::models::loaded::Family::ChatGlm(c) => c,
        other => panic!("not a ChatGLM config: {other:?}"),
    }
}

fn prefix(name: &str) -> PrefixEncoder {
    PrefixEncoder::load_dir(&fixture(name), &chatglm_config(), &device()).expect("prefix loads")
}

/// Logits with the P-tuning v2 prefix `encoder` on the reference inputs of `name`.
fn prefixed_logits(model: &CausalLm, encoder: &PrefixEncoder, inputs: &Inputs) -> Vec<f32> {
    let state = encoder.prompt_state(inputs.batch);
    to_vec(
        model
            .forward_with_prompt(inputs, None, Some(&state))
            .expect("ChatGLM takes a prefix"),
    )
}

#[test]
fn logits_match_the_thudm_reference_at_every_unmasked_position() {
    let model = load_model(BASE);
    let reference = reference(BASE);
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(diff <= LOGITS_TOL, "max abs diff {diff} > {LOGITS_TOL}");
}

#[test]
fn greedy_continuation_matches_the_reference() {
    let (ours, theirs) = reference(BASE).greedy(&load_model(BASE));
    assert_eq!(ours, theirs);
}

#[test]
fn cached_decoding_gives_the_same_logits_as_a_full_forward() {
    let model = load_model(BASE);
    let ids: Vec<i64> = vec![5, 40, 41, 42, 43, 44, 45, 46];
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
    assert!(worst < 1e-4, "cached vs full: {worst}");
}

#[test]
fn peft_lora_on_query_key_value_and_dense_h_to_4h_reproduces_its_logits() {
    let mut model = load_model(BASE);
    let (_, report) = load_adapter(
        &mut model,
        "chatglm",
        &fixture("chatglm-tiny-lora"),
        &device(),
    )
    .expect("adapter loads");
    assert_eq!(report.matched.len(), 4, "{:?}", report.matched);
    assert!(report
        .matched
        .contains(&"transformer.encoder.layers.1.self_attention.query_key_value".to_string()));
    let reference = reference("chatglm-tiny-lora");
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(diff <= LOGITS_TOL, "max abs diff {diff} > {LOGITS_TOL}");
    let base = to_vec(load_model(BASE).forward(&reference.inputs(), None));
    assert!(
        reference.compare(&base).0 > 10.0 * LOGITS_TOL,
        "the adapter changed nothing"
    );
}

#[rstest]
#[case::embedding_only("chatglm-tiny-ptuning-v2")]
#[case::with_prefix_projection("chatglm-tiny-ptuning-v2-proj")]
fn native_ptuning_v2_prefix_reproduces_its_logits(#[case] name: &str) {
    let model = load_model(BASE);
    let reference = reference(name);
    let logits = prefixed_logits(&model, &prefix(name), &reference.inputs());
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(
        diff <= LOGITS_TOL,
        "{name}: max abs diff {diff} > {LOGITS_TOL}"
    );
    let base = to_vec(model.forward(&reference.inputs(), None));
    assert!(
        reference.compare(&base).0 > 10.0 * LOGITS_TOL,
        "{name}: the prefix changed nothing"
    );
}

#[rstest]
#[case::embedding_only("chatglm-tiny-ptuning-v2")]
#[case::with_prefix_projection("chatglm-tiny-ptuning-v2-proj")]
fn saving_the_prefix_encoder_keeps_every_tensor_bit_for_bit(#[case] name: &str) {
    let out = tempfile::tempdir().unwrap();
    prefix(name).save_dir(out.path()).unwrap();
    let ours = Checkpoint::open_files(&[out.path().join("prefix_encoder.safetensors")]).unwrap();
    let theirs =
        Checkpoint::open_files(&[fixture(name).join("prefix_encoder.safetensors")]).unwrap();
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
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.path().join("ptuning_config.json")).unwrap())
            .unwrap();
    let fixture_config: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(fixture(name).join("ptuning_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config, fixture_config);
    // The reloaded prefix still gives the reference logits.
    let reloaded = PrefixEncoder::load_dir(out.path(), &chatglm_config(), &device()).unwrap();
    let reference = reference(name);
    let (diff, _) = reference.compare(&prefixed_logits(
        &load_model(BASE),
        &reloaded,
        &reference.inputs(),
    ));
    assert!(diff <= LOGITS_TOL, "{name} reloaded: {diff}");
}

#[rstest]
#[case::embedding_only("chatglm-tiny-ptuning-v2")]
#[case::with_prefix_projection("chatglm-tiny-ptuning-v2-proj")]
fn converting_to_peft_prompt_embeddings_and_back_keeps_the_logits(#[case] name: &str) {
    let encoder = prefix(name);
    let out = tempfile::tempdir().unwrap();
    encoder.save_peft_dir(out.path()).unwrap();
    let file = Checkpoint::open_files(&[out.path().join("adapter_model.safetensors")]).unwrap();
    assert_eq!(file.get("prompt_embeddings").unwrap().shape, vec![4, 128]);
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "PREFIX_TUNING");
    assert_eq!(
        (
            config["num_layers"].as_u64(),
            config["token_dim"].as_u64(),
            config["num_attention_heads"].as_u64()
        ),
        (Some(2), Some(32), Some(2))
    );
    // Back in ChatGLM's layout: the flat per-token [K_0|V_0|K_1|V_1] vectors are unchanged.
    let back = PrefixEncoder::from_peft_dir(out.path(), &chatglm_config(), &device()).unwrap();
    assert!(back.trans.is_none());
    let model = load_model(BASE);
    let reference = reference(name);
    let (diff, compared) = reference.compare(&prefixed_logits(&model, &back, &reference.inputs()));
    assert!(compared > 40);
    assert!(diff <= LOGITS_TOL, "{name} via PEFT layout: {diff}");
}

#[test]
fn a_peft_prefix_with_hidden_size_token_dim_is_refused_with_the_reason() {
    let out = tempfile::tempdir().unwrap();
    prefix("chatglm-tiny-ptuning-v2")
        .save_peft_dir(out.path())
        .unwrap();
    let path = out.path().join("adapter_config.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"token_dim\": 32", "\"token_dim\": 64");
    fs::write(&path, text).unwrap();
    let err = PrefixEncoder::from_peft_dir(out.path(), &chatglm_config(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("multi_query_group_num") && err.contains("adapter_config.json"),
        "{err}"
    );
}

#[test]
fn a_pickle_only_chatglm_folder_points_to_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        fixture(BASE).join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    fs::write(
        dir.path().join("pytorch_model-00001-of-00007.bin"),
        b"not read",
    )
    .unwrap();
    let err = ModelDir::open(dir.path())
        .unwrap()
        .load(&device())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("pytorch_model") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn generate_cli_continues_a_prompt_on_chatglm_greedily() {
    let out = run_peft(&[
        "generate",
        "--model",
        path_str(&fixture(BASE)),
        "--prompt",
        "Hello",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--stop-at-eos",
        "false",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["new_ids"].as_array().map(Vec::len), Some(6), "{json}");
    // The same continuation as the library's greedy decoding of the same prompt ids.
    let prompt: Vec<u32> = json["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let cfg = SamplingConfig {
        max_new_tokens: 6,
        stop_at_eos: false,
        ..Default::default()
    };
    let expected = generate(&load_model(BASE), &prompt, &cfg, &mut |_| {}).unwrap();
    let got: Vec<u32> = json["new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn inspect_cli_lists_chatglm_modules_and_counts_every_stored_parameter() {
    let out = run_peft(&[
        "inspect",
        "--model",
        path_str(&fixture(BASE)),
        "--adapter",
        path_str(&fixture("chatglm-tiny-lora")),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["model_type"], "chatglm");
    let checkpoint = Checkpoint::open_files(&[fixture(BASE).join("model.safetensors")]).unwrap();
    let stored: usize = checkpoint
        .entries()
        .map(|e| e.shape.iter().product::<usize>())
        .sum();
    assert_eq!(json["parameters"].as_u64(), Some(stored as u64));
    let modules = json["modules"].as_array().unwrap();
    let qkv = modules
        .iter()
        .find(|m| m["path"] == "transformer.encoder.layers.0.self_attention.query_key_value")
        .expect("qkv listed");
    assert_eq!(
        (qkv["in"].as_u64(), qkv["out"].as_u64()),
        (Some(64), Some(128))
    );
    assert!(modules
        .iter()
        .any(|m| m["path"] == "transformer.output_layer"));
    assert_eq!(
        json["adapters"][0]["matched"].as_array().map(Vec::len),
        Some(4)
    );
}

#[test]
fn chatglm_lora_preset_targets_peft_default_query_key_value() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/lora-chatglm.json");
    let value: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let config = peft::peft::AdapterConfig::from_json(value, &path).expect("preset parses");
    let mut model = load_model(BASE);
    let report = peft::peft::format::inject_new(&mut model, "chatglm", &config, 0, &device())
        .expect("injects");
    assert_eq!(
        report.matched,
        [
            "transformer.encoder.layers.0.self_attention.query_key_value",
            "transformer.encoder.layers.1.self_attention.query_key_value"
        ]
    );
    assert_eq!(
        peft::peft::walker::default_targets("chatglm", &config.method),
        ["query_key_value"]
    );
}

#[test]
fn a_lora_trained_on_chatglm_with_the_cli_loads_and_evaluates() {
    let out = tempfile::tempdir().unwrap();
    let adapter = out.path().join("adapter");
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let (model, data) = (fixture(BASE), data);
    let common = [
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--template",
        "chatglm3",
        "--max-len",
        "48",
    ];
    let mut train = common.to_vec();
    train.extend([
        "--method",
        "lora",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--max-steps",
        "4",
        "--seed",
        "1",
        "--out",
        path_str(&adapter),
    ]);
    let trained = run_peft(&[&["train"], &train[..]].concat());
    assert!(trained.status.success(), "train: {}", stderr(&trained));
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    let targets = config["target_modules"]
        .as_array()
        .expect("target_modules list");
    assert!(
        targets.iter().any(|t| t == "query_key_value"),
        "{targets:?}"
    );
    let eval = |extra: &[&str]| -> f64 {
        let mut args = vec!["eval"];
        args.extend(common);
        args.extend(extra);
        args.push("--json");
        let o = run_peft(&args);
        assert!(o.status.success(), "eval: {}", stderr(&o));
        let json: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        json["loss"].as_f64().expect("loss")
    };
    let base = eval(&[]);
    let tuned = eval(&["--adapter", path_str(&adapter)]);
    assert!(base.is_finite() && tuned.is_finite());
    assert!(
        tuned < base,
        "training did not lower the loss: base {base}, tuned {tuned}"
    );
}
