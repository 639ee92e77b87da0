//! Issue 15, class 1 (data loss): `--overwrite` / `--force` replace only what the command writes,
//! and an `--out` that is, contains, or lies inside an input of the same command is refused
//! before anything is read or written.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");

/// `peft train` on the tiny model for two steps.
pub fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--model",
        path_str(model),
        "--data",
        path_str(data),
        "--out",
        path_str(out),
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
        "--seed",
        "1",
    ];
    args.extend_from_slice(extra);
    run_peft(&args)
}

fn fails(o: &std::process::Output, want: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a refusal; stderr: {err}");
    assert_ne!(o.status.code(), Some(101), "peft panicked: {err}");
    assert!(err.contains(want), "expected `{want}` in: {err}");
}

/// A copy of a fixture folder at `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "reference.safetensors" {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// An `--out` that already holds a run (so `--overwrite` is what a user would pass).
fn previous_run(out: &Path) {
    fs::create_dir_all(out.join("checkpoint-999")).unwrap();
    fs::write(out.join("trainer_state.json"), "{}").unwrap();
    fs::write(out.join("checkpoint-999/trainer_state.json"), "{}").unwrap();
}

#[test]
fn train_overwrite_keeps_files_it_does_not_write_and_drops_the_old_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    previous_run(&out);
    fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &["--overwrite"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(
        !out.join("checkpoint-999").exists(),
        "the previous run's checkpoint would make --resume continue the old run"
    );
}

#[test]
fn train_overwrite_refuses_an_out_that_contains_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    previous_run(&out);
    let model = out.join("model");
    copy_dir(&fixture("llama-tiny"), &model);
    let o = train(&model, Path::new(DATA), &out, &["--overwrite"]);
    fails(&o, "contains the --model folder");
    assert!(
        model.join("model.safetensors").is_file(),
        "the model is gone"
    );
}

#[test]
fn train_refuses_an_out_inside_the_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&fixture("llama-tiny"), &model);
    let o = train(&model, Path::new(DATA), &model.join("lora"), &[]);
    fails(&o, "lies inside the --model folder");
    assert!(!model.join("lora").exists());
}

#[test]
fn train_overwrite_refuses_an_out_that_holds_the_training_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    previous_run(&out);
    let data = out.join("data.jsonl");
    fs::copy(DATA, &data).unwrap();
    let o = train(&fixture("llama-tiny"), &data, &out, &["--overwrite"]);
    fails(&o, "contains the --data file");
    assert!(data.is_file());
}

#[test]
fn train_overwrite_refuses_an_out_that_holds_the_init_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    previous_run(&out);
    let init = out.join("start");
    copy_dir(&fixture("adapters/lora"), &init);
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &["--overwrite", "--init-adapter", path_str(&init)],
    );
    fails(&o, "contains the --init-adapter folder");
    assert!(init.join("adapter_model.safetensors").is_file());
}

fn merge(adapter: &Path, out: &Path) -> std::process::Output {
    run_peft(&[
        "merge",
        "--base",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(adapter),
        "--out",
        path_str(out),
        "--force",
    ])
}

#[test]
fn merge_force_refuses_an_out_that_holds_its_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let adapter = out.join("lora");
    copy_dir(&fixture("adapters/lora"), &adapter);
    let o = merge(&adapter, &out);
    fails(&o, "contains the --adapter folder");
    assert!(adapter.join("adapter_model.safetensors").is_file());
}

#[test]
fn merge_force_refuses_an_out_that_is_its_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("lora");
    copy_dir(&fixture("adapters/lora"), &adapter);
    let o = merge(&adapter, &adapter);
    fails(&o, "is the --adapter folder");
    assert!(adapter.join("adapter_config.json").is_file());
}

#[test]
fn convert_gguf_force_refuses_an_out_that_holds_the_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    fs::create_dir(&out).unwrap();
    let gguf: PathBuf = out.join("tiny.gguf");
    fs::copy(fixture("gguf/tiny_llama.gguf"), &gguf).unwrap();
    let o = run_peft(&[
        "convert",
        "gguf",
        path_str(&gguf),
        "--out",
        path_str(&out),
        "--force",
    ]);
    fails(&o, "contains the GGUF file");
    assert!(gguf.is_file(), "the GGUF file is gone");
}

#[test]
fn compare_overwrite_refuses_an_out_that_holds_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("results.json"), "{}").unwrap();
    let data = out.join("train.jsonl");
    fs::copy(DATA, &data).unwrap();
    let o = run_peft(&[
        "compare",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--data",
        path_str(&data),
        "--eval-split",
        "0.1",
        "--methods",
        "lora",
        "--budget",
        "steps=1",
        "--out",
        path_str(&out),
        "--overwrite",
    ]);
    fails(&o, "contains the --data file");
    assert!(data.is_file(), "the data file is gone");
}
