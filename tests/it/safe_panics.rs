//! Issue 15, class 2 (panics on user input): each of these gets a clear error and exit code 1,
//! never a Rust panic (exit code 101); a closed stdout pipe ends `peft` quietly.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use rstest::rstest;
use serde_json::{json, Value};

use crate::common::*;
use crate::safe_out::{copy_dir, train};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");

fn error_not_panic(o: &Output, want: &str) {
    let err = stderr(o);
    assert_ne!(o.status.code(), Some(101), "peft panicked: {err}");
    assert!(!o.status.success(), "expected an error; stderr: {err}");
    assert!(err.contains(want), "expected `{want}` in: {err}");
}

fn model_copy(tmp: &Path) -> PathBuf {
    let model = tmp.join("model");
    copy_dir(&fixture("llama-tiny"), &model);
    model
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, v.to_string()).unwrap();
}

#[test]
fn training_data_with_no_learned_token_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("empty.jsonl");
    fs::write(&data, "{\"text\": \"\"}\n{\"text\": \"\"}\n").unwrap();
    let o = train(&fixture("llama-tiny"), &data, &tmp.path().join("run"), &[]);
    error_not_panic(&o, "no training record has a token to learn");
}

#[test]
fn a_batch_of_empty_texts_among_real_ones_is_skipped_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mixed.jsonl");
    // Batches of 4 in file order: the first holds only empty texts.
    let empty = "{\"text\": \"\"}\n".repeat(5);
    fs::write(&data, empty + "{\"text\": \"hello world, how are you\"}\n").unwrap();
    let o = train(
        &fixture("llama-tiny"),
        &data,
        &tmp.path().join("run"),
        &["--no-shuffle"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_chat_template_that_renders_nothing_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    fs::write(
        model.join("chat_template.jinja"),
        "{% for m in messages %}{% endfor %}",
    )
    .unwrap();
    let o = train(&model, Path::new(DATA), &tmp.path().join("run"), &[]);
    error_not_panic(&o, "no training record has a token to learn");
    let o = run_peft(&["eval", "--model", path_str(&model), "--data", DATA]);
    error_not_panic(&o, "no target tokens");
}

/// A tokenizer with a token the model has no embedding row for.
fn oversized_tokenizer(tmp: &Path) -> (PathBuf, PathBuf) {
    let model = model_copy(tmp);
    edit_json(&model.join("tokenizer.json"), |t| {
        t["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": 512, "content": "<extra>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": false
        }));
    });
    let data = tmp.join("extra.jsonl");
    fs::write(&data, "{\"text\": \"hello <extra> world\"}\n").unwrap();
    (model, data)
}

#[test]
fn token_ids_beyond_the_embedding_rows_are_an_error_in_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = oversized_tokenizer(tmp.path());
    let want = "beyond the model's 512 embedding rows";
    let o = train(&model, &data, &tmp.path().join("run"), &[]);
    error_not_panic(&o, want);
    let o = run_peft(&[
        "eval",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
    ]);
    error_not_panic(&o, want);
    let o = run_peft(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompt",
        "hi <extra>",
        "--max-new-tokens",
        "1",
    ]);
    error_not_panic(&o, want);
}

#[rstest]
#[case("lora_dropout", json!(1.5), "lora_dropout")]
#[case("lora_dropout", json!(-0.1), "lora_dropout")]
#[case("r", json!(0), "`r`")]
#[case("r", json!(-3), "`r`")]
fn an_adapter_config_value_out_of_range_is_an_error(
    #[case] key: &str,
    #[case] value: Value,
    #[case] want: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("adapter_config.json");
    fs::copy(fixture("adapters/lora/adapter_config.json"), &config).unwrap();
    edit_json(&config, |c| c[key] = value.clone());
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &tmp.path().join("run"),
        &["--adapter-config", path_str(&config)],
    );
    error_not_panic(&o, want);
    // The same file as an adapter to load.
    let adapter = tmp.path().join("adapter");
    copy_dir(&fixture("adapters/lora"), &adapter);
    fs::copy(&config, adapter.join("adapter_config.json")).unwrap();
    let o = run_peft(&[
        "eval",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&adapter),
        "--data",
        DATA,
    ]);
    error_not_panic(&o, want);
}

#[rstest]
#[case("hidden_size", json!(u64::MAX))]
#[case("vocab_size", json!(u64::MAX / 2))]
#[case("head_dim", json!(1u64 << 62))]
#[case("num_attention_heads", json!(1u64 << 62))]
#[case("intermediate_size", json!(u64::MAX))]
#[case("num_hidden_layers", json!(1_000_000_000_000u64))]
#[case("max_position_embeddings", json!(u64::MAX))]
fn overflowing_sizes_in_config_json_are_an_error_naming_the_key(
    #[case] key: &str,
    #[case] value: Value,
) {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_json(&model.join("config.json"), |c| {
        c[key] = value.clone();
        if key == "num_attention_heads" {
            c["num_key_value_heads"] = value.clone();
        }
    });
    for args in [
        vec!["inspect", "--model", path_str(&model)],
        vec!["generate", "--model", path_str(&model), "--prompt", "hi"],
    ] {
        let o = run_peft(&args);
        error_not_panic(&o, key);
    }
}

#[test]
fn a_closed_stdout_pipe_ends_peft_quietly() {
    let mut child = peft_bin()
        .args(["inspect", "--model", path_str(&fixture("llama-tiny"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before peft writes
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "peft panicked: {err}");
    assert!(!err.contains("panicked"), "{err}");
}
