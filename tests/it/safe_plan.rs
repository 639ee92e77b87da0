//! Issue 15, class 5 (contradictions found after the work): every option is checked first, so a
//! contradiction is refused before any data is tokenized, any model loaded or any output written.

use std::fs;
use std::path::Path;

use crate::common::*;
use crate::safe_out::train;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");

/// Refused, and before the data was tokenized (`train` prints `data: ...` once it has).
fn refused_before_the_work(o: &std::process::Output, want: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a refusal; stderr: {err}");
    assert_ne!(o.status.code(), Some(101), "peft panicked: {err}");
    assert!(err.contains(want), "expected `{want}` in: {err}");
    assert!(
        !err.contains("data: "),
        "refused only after tokenizing: {err}"
    );
}

#[test]
fn merge_verify_with_a_scale_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let o = run_peft(&[
        "merge",
        "--base",
        path_str(&fixture("llama-tiny")),
        "--adapter",
        path_str(&fixture("adapters/lora")),
        "--out",
        path_str(&out),
        "--verify",
        "--scale",
        "0.5",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--scale"), "{}", stderr(&o));
    assert!(!out.exists(), "the output was written before the refusal");
}

#[test]
fn an_unknown_method_is_refused_before_the_data_is_tokenized() {
    let tmp = tempfile::tempdir().unwrap();
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &tmp.path().join("run"),
        &["--method", "bogus"],
    );
    refused_before_the_work(&o, "unknown --method bogus");
}

/// A finished two-step LoRA run with a checkpoint after step 1.
fn lora_run(out: &Path) {
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        out,
        &["--save-steps", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn resume_with_another_method_is_refused_before_the_data_is_tokenized() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    lora_run(&out);
    let ckpt = out.join("checkpoint-1");
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &["--resume", path_str(&ckpt), "--method", "ia3"],
    );
    refused_before_the_work(&o, "peft_type");
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &["--resume", path_str(&ckpt), "--r", "4"],
    );
    refused_before_the_work(&o, "r = 8");
}

#[test]
fn resume_with_the_same_command_line_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    lora_run(&out);
    let ckpt = out.join("checkpoint-1");
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &out,
        &[
            "--resume",
            path_str(&ckpt),
            "--method",
            "lora",
            "--r",
            "8",
            "--alpha",
            "16",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read_to_string(out.join("trainer_state.json")).is_ok());
}

#[test]
fn a_bad_target_modules_regex_is_refused_before_the_data_is_tokenized() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("adapter_config.json");
    std::fs::write(
        &config,
        r#"{"peft_type": "LORA", "r": 4, "target_modules": "("}"#,
    )
    .unwrap();
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &tmp.path().join("run"),
        &["--adapter-config", path_str(&config)],
    );
    refused_before_the_work(&o, "invalid regex");
}
