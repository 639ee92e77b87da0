//! Issue 15, class 3 (aborts and runaway memory): absurd sizes are refused before anything is
//! allocated, with an error naming the setting; a checkpoint that lacks tensors is refused before
//! the model is built (it used to be zero-filled layer by layer).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rstest::rstest;
use serde_json::Value;

use crate::common::*;
use crate::safe_out::{copy_dir, train};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");
/// Refusals are instant; an allocation of the absurd size would take far longer (or abort).
const QUICK: Duration = Duration::from_secs(20);

fn refused_quickly(args: &[&str], want: &str) {
    let start = Instant::now();
    let o = run_peft(args);
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(101), "peft panicked: {err}");
    assert!(o.status.code().is_some(), "peft was killed (abort?): {err}");
    assert!(!o.status.success(), "expected a refusal: {err}");
    assert!(err.contains(want), "expected `{want}` in: {err}");
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
}

fn model_with(dir: &Path, key: &str, value: u64) {
    copy_dir(&fixture("llama-tiny"), dir);
    let path = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    c[key] = value.into();
    fs::write(path, c.to_string()).unwrap();
}

#[test]
fn a_config_with_more_layers_than_the_checkpoint_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_with(&model, "num_hidden_layers", 50_000);
    refused_quickly(
        &["generate", "--model", path_str(&model), "--prompt", "hi"],
        "model.layers.2.self_attn.q_proj.weight",
    );
}

#[test]
fn a_model_larger_than_the_machine_is_refused_naming_the_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_with(&model, "vocab_size", 20_000_000_000);
    refused_quickly(
        &["generate", "--model", path_str(&model), "--prompt", "hi"],
        "vocab_size",
    );
}

#[rstest]
#[case(&["--r", "1000000000"], "`r`")]
#[case(&["--r", "18446744073709551615"], "`r`")]
#[case(&["--method", "adalora", "--init-r", "1000000000", "--target-r", "1"], "init_r")]
#[case(&["--method", "prompt", "--num-virtual-tokens", "1000000000"], "num_virtual_tokens")]
#[case(&["--method", "prefix", "--encoder-hidden-size", "100000000000"], "encoder_hidden_size")]
#[case(&["--pack", "100000000"], "--pack")]
fn absurd_adapter_and_batch_sizes_are_refused_naming_the_setting(
    #[case] flags: &[&str],
    #[case] want: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let o = train(
        &fixture("llama-tiny"),
        Path::new(DATA),
        &tmp.path().join("run"),
        flags,
    );
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(101), "peft panicked: {err}");
    assert!(o.status.code().is_some(), "peft was killed (abort?): {err}");
    assert!(
        !o.status.success() && err.contains(want),
        "expected `{want}` in: {err}"
    );
    assert!(start.elapsed() < QUICK);
}
