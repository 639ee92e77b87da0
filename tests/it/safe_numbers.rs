//! Issue 15, class 4 (silent bad numbers): every float option is finite and in range, every
//! written tensor is finite in the dtype it is written in, and merge refuses an incomplete base.

use std::fs;
use std::path::Path;

use peft::io::{write_safetensors_atomic, Checkpoint, OwnedTensor};
use rstest::rstest;

use crate::common::*;
use crate::safe_out::{copy_dir, train};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/tiny_instruct.jsonl");

fn refused(o: &std::process::Output, want: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a refusal; stderr: {err}");
    assert_ne!(o.status.code(), Some(101), "peft panicked: {err}");
    assert!(err.contains(want), "expected `{want}` in: {err}");
}

#[rstest]
#[case(&["--alpha", "nan"], "--alpha")]
#[case(&["--alpha", "inf"], "--alpha")]
#[case(&["--weight-decay", "nan"], "--weight-decay")]
#[case(&["--weight-decay=-1"], "--weight-decay")]
#[case(&["--eps", "nan"], "--eps")]
#[case(&["--eps", "0"], "--eps")]
#[case(&["--lr", "inf"], "--lr")]
#[case(&["--max-grad-norm", "nan"], "--max-grad-norm")]
#[case(&["--warmup-ratio", "nan"], "--warmup-ratio")]
#[case(&["--max-train-minutes", "nan"], "--max-train-minutes")]
#[case(&["--max-train-minutes", "0"], "--max-train-minutes")]
#[case(&["--eval-split", "nan"], "--eval-split")]
#[case(&["--dropout", "nan"], "--dropout")]
#[case(&["--method", "adalora", "--beta1", "nan"], "--beta1")]
#[case(&["--method", "adalora", "--orth-reg-weight", "inf"], "--orth-reg-weight")]
fn a_non_finite_or_out_of_range_float_option_is_refused(
    #[case] flags: &[&str],
    #[case] flag: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&fixture("llama-tiny"), Path::new(DATA), &out, flags);
    refused(&o, flag);
    assert!(!out.join("adapter_model.safetensors").exists());
}

#[test]
fn a_tensor_with_nan_or_inf_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.safetensors");
    for bad in [f32::NAN, f32::INFINITY] {
        let t = OwnedTensor::from_f32(vec![2], &[1.0, bad]);
        let err = write_safetensors_atomic(&path, &[("w".into(), t)], None).unwrap_err();
        assert!(err.to_string().contains("`w`"), "{err}");
        assert!(!path.exists());
    }
    let f16 = OwnedTensor {
        dtype: safetensors::Dtype::F16,
        shape: vec![1],
        bytes: vec![0x00, 0x7C], // +inf in f16
    };
    assert!(write_safetensors_atomic(&path, &[("h".into(), f16)], None).is_err());
}

#[test]
fn merge_to_f16_refuses_values_that_overflow_f16() {
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
        "--dtype",
        "f16",
        "--scale",
        "1e7",
    ]);
    refused(&o, "F16");
    assert!(!out.exists(), "nothing is written");
}

/// `dir/model.safetensors` rewritten without `drop`.
fn drop_tensor(dir: &Path, name: &str) {
    let file = Checkpoint::open_dir(dir).unwrap();
    let mut kept = Vec::new();
    for e in file.entries() {
        if e.name != name {
            let (v, shape) = file.read_f32(&e.name).unwrap();
            kept.push((e.name.clone(), OwnedTensor::from_f32(shape, &v)));
        }
    }
    drop(file);
    write_safetensors_atomic(&dir.join("model.safetensors"), &kept, None).unwrap();
}

fn merge_base(base: &Path, out: &Path) -> std::process::Output {
    run_peft(&[
        "merge",
        "--base",
        path_str(base),
        "--adapter",
        path_str(&fixture("adapters/lora")),
        "--out",
        path_str(out),
    ])
}

#[test]
fn merge_refuses_a_base_that_lacks_a_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    copy_dir(&fixture("llama-tiny"), &base);
    drop_tensor(&base, "model.layers.1.post_attention_layernorm.weight");
    let out = tmp.path().join("merged");
    let o = merge_base(&base, &out);
    refused(&o, "model.layers.1.post_attention_layernorm.weight");
    assert!(!out.exists());
}

#[test]
fn merge_refuses_an_index_that_omits_a_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    copy_dir(&fixture("llama-tiny-bf16-sharded"), &base);
    let index = base.join("model.safetensors.index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index).unwrap()).unwrap();
    // The index forgets the shard of `lm_head.weight` (no adapter touches it, so only the
    // completeness check can notice).
    let map = json["weight_map"].as_object_mut().unwrap();
    map.retain(|_, shard| shard != "model-00004-of-00005.safetensors");
    fs::write(&index, json.to_string()).unwrap();
    let out = tmp.path().join("merged");
    let o = merge_base(&base, &out);
    refused(&o, "lm_head.weight");
    assert!(!out.exists());
}

#[test]
fn a_zero_rope_scaling_factor_in_config_json_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&fixture("llama-tiny"), &model);
    let path = model.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    c["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 0.0});
    fs::write(&path, c.to_string()).unwrap();
    let o = run_peft(&["generate", "--model", path_str(&model), "--prompt", "hi"]);
    refused(&o, "factor");
}
