//! Bad adapter input: a clear error naming the tensor, file or option; exit code ≠ 0.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

/// A writable copy of a fixture adapter folder.
fn copy_adapter(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        fs::copy(fixture(&format!("adapters/{name}/{file}")), dir.join(file)).unwrap();
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("adapter_config.json");
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config.insert(key.into(), value);
    fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

fn generate_with_adapter_fails(adapter: &Path) -> String {
    let out = run_peft(&[
        "generate",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(adapter),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "1",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert_ne!(out.status.code(), Some(101), "peft panicked: {err}");
    err
}

#[test]
fn adapter_for_another_shape_names_the_tensor_and_both_shapes() {
    let (_tmp, dir) = copy_adapter("lora");
    edit_config(&dir, "r", 8.into());
    let err = generate_with_adapter_fails(&dir);
    assert!(
        err.contains("lora_A.weight") && err.contains("[8, 64]") && err.contains("[4, 64]"),
        "{err}"
    );
}

#[test]
fn adapter_naming_modules_the_model_lacks_is_refused() {
    let (_tmp, dir) = copy_adapter("lora-regex");
    edit_config(
        &dir,
        "target_modules",
        serde_json::json!(r".*\.0\.self_attn\.q_proj"),
    );
    let err = generate_with_adapter_fails(&dir);
    assert!(err.contains("k_proj.lora_A.weight"), "{err}");
}

#[test]
fn target_modules_matching_nothing_lists_available_paths() {
    let (_tmp, dir) = copy_adapter("lora");
    edit_config(
        &dir,
        "target_modules",
        serde_json::json!(["query_key_value"]),
    );
    let err = generate_with_adapter_fails(&dir);
    assert!(
        err.contains("matched no module") && err.contains("model.layers.0.self_attn.q_proj"),
        "{err}"
    );
}

#[test]
fn unsupported_peft_type_is_named() {
    let (_tmp, dir) = copy_adapter("lora");
    edit_config(&dir, "peft_type", "LOHA".into());
    let err = generate_with_adapter_fails(&dir);
    assert!(err.contains("LOHA"), "{err}");
}

#[test]
fn unsupported_init_option_is_named() {
    let (_tmp, dir) = copy_adapter("lora");
    edit_config(&dir, "init_lora_weights", "pissa".into());
    let err = generate_with_adapter_fails(&dir);
    assert!(
        err.contains("init_lora_weights") && err.contains("pissa"),
        "{err}"
    );
}

#[test]
fn dora_on_an_embedding_target_is_refused() {
    let (_tmp, dir) = copy_adapter("dora");
    edit_config(
        &dir,
        "target_modules",
        serde_json::json!(["q_proj", "embed_tokens"]),
    );
    let err = generate_with_adapter_fails(&dir);
    assert!(
        err.contains("model.embed_tokens") && err.contains("embedding"),
        "{err}"
    );
}

#[test]
fn corrupt_adapter_weights_are_named() {
    let (_tmp, dir) = copy_adapter("lora");
    fs::write(
        dir.join("adapter_model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    let err = generate_with_adapter_fails(&dir);
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}

#[test]
fn unknown_config_keys_are_ignored_with_a_warning() {
    let (_tmp, dir) = copy_adapter("lora");
    edit_config(&dir, "some_future_option", 3.into());
    let out = run_peft(&[
        "generate",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&dir),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("some_future_option"),
        "{}",
        stderr(&out)
    );
}
