//! Bad model folders and prompts: a clear error naming the file and the problem, exit code ≠ 0,
//! never a panic.

use std::fs;
use std::path::{Path, PathBuf};

use peft::io::{write_safetensors_atomic, OwnedTensor};
use safetensors::Dtype;

use crate::common::*;

/// A writable copy of the tiny Llama folder.
fn copy_model(from: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    fs::create_dir(&dir).unwrap();
    for entry in fs::read_dir(fixture(from)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "reference.safetensors" {
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    (tmp, dir)
}

fn generate_fails(dir: &Path, prompt: &str) -> String {
    let out = run_peft(&[
        "generate",
        "--model",
        path_str(dir),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "2",
    ]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_ne!(out.status.code(), Some(101), "peft panicked: {err}");
    err
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

#[test]
fn missing_config_json_is_named() {
    let (_tmp, dir) = copy_model("llama-tiny");
    fs::remove_file(dir.join("config.json")).unwrap();
    let err = generate_fails(&dir, "Hello");
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn missing_tokenizer_json_is_named() {
    let (_tmp, dir) = copy_model("llama-tiny");
    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = generate_fails(&dir, "Hello");
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn missing_shard_named_in_the_index_is_named() {
    let (_tmp, dir) = copy_model("llama-tiny-bf16-sharded");
    fs::remove_file(dir.join("model-00003-of-00005.safetensors")).unwrap();
    let err = generate_fails(&dir, "Hello");
    assert!(err.contains("model-00003-of-00005.safetensors"), "{err}");
}

#[test]
fn tensor_with_an_unsupported_dtype_is_named() {
    let (_tmp, dir) = copy_model("llama-tiny");
    let file = peft::io::Checkpoint::open_dir(&dir).unwrap();
    let mut tensors: Vec<(String, OwnedTensor)> = file
        .entries()
        .map(|e| {
            (
                e.name.clone(),
                OwnedTensor {
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    bytes: file.bytes(e).to_vec(),
                },
            )
        })
        .collect();
    drop(file);
    let norm = tensors
        .iter_mut()
        .find(|(n, _)| n == "model.norm.weight")
        .unwrap();
    norm.1 = OwnedTensor {
        dtype: Dtype::I32,
        shape: norm.1.shape.clone(),
        bytes: vec![0; norm.1.bytes.len()],
    };
    write_safetensors_atomic(&dir.join("model.safetensors"), &tensors, None).unwrap();
    let err = generate_fails(&dir, "Hello");
    assert!(
        err.contains("model.norm.weight") && err.contains("I32"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_file_is_rejected() {
    let (_tmp, dir) = copy_model("llama-tiny");
    let path = dir.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = generate_fails(&dir, "Hello");
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn header_claiming_an_absurd_length_is_rejected() {
    let (_tmp, dir) = copy_model("llama-tiny");
    let path = dir.join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = generate_fails(&dir, "Hello");
    assert!(
        err.contains("model.safetensors") && err.contains("header"),
        "{err}"
    );
}

#[test]
fn wrong_tensor_shape_names_the_tensor_and_both_shapes() {
    let (_tmp, dir) = copy_model("llama-tiny");
    edit_config(&dir, |c| {
        c.insert("intermediate_size".into(), 96.into());
    });
    let err = generate_fails(&dir, "Hello");
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight")
            && err.contains("[96, 64]")
            && err.contains("[128, 64]"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_is_a_clear_error() {
    let (_tmp, dir) = copy_model("llama-tiny");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "gpt_neox".into());
    });
    let err = generate_fails(&dir, "Hello");
    assert!(
        err.contains("gpt_neox") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn missing_required_config_field_is_named() {
    let (_tmp, dir) = copy_model("llama-tiny");
    edit_config(&dir, |c| {
        c.remove("hidden_size");
    });
    let err = generate_fails(&dir, "Hello");
    assert!(err.contains("hidden_size"), "{err}");
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let (_tmp, dir) = copy_model("llama-tiny");
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let err = generate_fails(&dir, &long);
    assert!(err.contains("max_position_embeddings = 256"), "{err}");
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_device_without_the_feature_says_how_to_build_it() {
    let out = run_peft(&[
        "generate",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--prompt",
        "Hi",
        "--device",
        "wgpu",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--features wgpu"), "{}", stderr(&out));
}
