//! `peft train --method adalora` from the command line: the allocator runs inside the loop
//! (ranks get pruned without the user calling anything), the saved adapter is PEFT's cut form,
//! resuming is exact, and bad AdaLoRA options stop the run before training starts.

use std::fs;
use std::path::Path;

use peft::io::Checkpoint;

use crate::common::*;

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--seed",
        "2",
        "--method",
        "adalora",
    ];
    args.extend_from_slice(extra);
    train_on_tiny_instruct(&fixture("llama-tiny"), out, &args)
}

const SCHEDULE: [&str; 10] = [
    "--init-r",
    "6",
    "--target-r",
    "2",
    "--tinit",
    "2",
    "--tfinal",
    "3",
    "--delta-t",
    "2",
];

fn rank_pattern(dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    config["rank_pattern"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn an_adalora_run_prunes_to_the_target_budget_and_saves_peft_cut_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = SCHEDULE.to_vec();
    args.extend_from_slice(&["--max-steps", "12"]);
    let o = train(&out, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let pattern = rank_pattern(&out);
    // Default targets here are all seven projections of both layers.
    assert_eq!(pattern.len(), 14);
    let kept: Vec<usize> = pattern
        .values()
        .map(|v| v.as_array().unwrap().iter().filter(|b| b == &&true).count())
        .collect();
    // The final budget is target_r per module on average.
    assert_eq!(kept.iter().sum::<usize>(), 2 * 14);
    let file = Checkpoint::open_files(&[out.join("adapter_model.safetensors")]).unwrap();
    for (key, bits) in &pattern {
        let module = key.trim_end_matches(".lora_E");
        let k = bits
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b == &&true)
            .count();
        let a = file
            .get(&format!("base_model.model.{module}.lora_A"))
            .unwrap();
        let e = file
            .get(&format!("base_model.model.{module}.lora_E"))
            .unwrap();
        assert_eq!((a.shape[0], e.shape.clone()), (k, vec![k, 1]), "{module}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["total_step"], 12,
        "total_step is derived from the run"
    );
    assert_eq!(config["peft_type"], "ADALORA");
}

#[test]
fn an_adalora_run_resumed_from_a_checkpoint_ends_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let mut args = SCHEDULE.to_vec();
    args.extend_from_slice(&["--max-steps", "12", "--save-steps", "5"]);
    assert!(train(&straight, &args).status.success());
    let resumed = tmp.path().join("resumed");
    fs::create_dir_all(&resumed).unwrap();
    let ckpt = straight.join("checkpoint-5");
    assert!(ckpt.join("adalora_state.safetensors").is_file());
    let copy = resumed.join("checkpoint-5");
    fs::create_dir_all(&copy).unwrap();
    for entry in fs::read_dir(&ckpt).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let mut args2 = args.clone();
    args2.extend_from_slice(&["--resume", path_str(&copy)]);
    let o = train(&resumed, &args2);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(straight.join("adapter_model.safetensors")).unwrap(),
        fs::read(resumed.join("adapter_model.safetensors")).unwrap()
    );
    assert_eq!(rank_pattern(&straight), rank_pattern(&resumed));
}

fn refused(extra: &[&str], expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&out, extra);
    assert!(!o.status.success(), "accepted {extra:?}");
    assert_ne!(o.status.code(), Some(101), "panicked: {}", stderr(&o));
    assert!(stderr(&o).contains(expect), "{extra:?}: {}", stderr(&o));
    assert!(!out.join("metrics.jsonl").exists(), "training started");
}

#[test]
fn tinit_reaching_into_the_final_phase_is_refused_before_training() {
    refused(
        &["--tinit", "8", "--tfinal", "4", "--max-steps", "12"],
        "tinit (8) must be < total_step",
    );
}

#[test]
fn a_target_rank_above_the_initial_rank_is_refused() {
    refused(
        &["--init-r", "4", "--target-r", "6", "--max-steps", "3"],
        "target_r (6) must not exceed init_r (4)",
    );
}

#[test]
fn dora_with_adalora_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("adalora_dora.json");
    fs::write(
        &config,
        r#"{"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "use_dora": true}"#,
    )
    .unwrap();
    refused(
        &["--adapter-config", path_str(&config), "--max-steps", "3"],
        "AdaLoRA does not support use_dora",
    );
}

#[test]
fn adalora_flags_with_another_method_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/tiny_instruct.jsonl");
    let o = run_peft(&[
        "train",
        "--model",
        path_str(&fixture("llama-tiny")),
        "--data",
        path_str(&data),
        "--out",
        path_str(&out),
        "--method",
        "lora",
        "--target-r",
        "2",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--target-r applies to --method adalora only"),
        "{}",
        stderr(&o)
    );
}
