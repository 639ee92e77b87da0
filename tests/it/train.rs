//! Training parity with PEFT + torch: the fixture's deterministic AdamW run.

use peft::io::Checkpoint;
use peft::models::ModelDir;
use peft::peft::format::{adapter_tensors, load_adapter};
use peft::train::{train_step, AdamW, AdamWConfig, Batch};

use crate::common::*;

/// Per-step loss tolerance and final-tensor relative tolerance (fixtures README).
const LOSS_TOL: f64 = 1e-4;
const FINAL_REL_TOL: f32 = 1e-3;

pub fn fixture_batch(rel: &str) -> Batch {
    let file = Checkpoint::open_files(&[fixture(rel).join("batch.safetensors")]).unwrap();
    let (ids, shape) = file.read_i64("input_ids").unwrap();
    let (mask, _) = file.read_i64("attention_mask").unwrap();
    let (labels, _) = file.read_i64("labels").unwrap();
    Batch { ids, mask, labels, batch: shape[0], seq: shape[1] }
}

pub fn fixture_losses(rel: &str) -> (Vec<f64>, f64) {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(rel).join("losses.json")).unwrap()).unwrap();
    let losses = json["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    (losses, json["optimizer"]["lr"].as_f64().unwrap())
}

/// Max relative difference `|a − b| / max(|b|, 1e-6)`... measured against the tensor's scale.
pub fn max_rel_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f32::max)
}

#[test]
fn lora_training_reproduces_peft_losses_and_final_adapter() {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let mut model = dir.load(&device).unwrap();
    load_adapter(&mut model, "llama", &fixture("train/lora/init"), &device).unwrap();
    let batch = fixture_batch("train/lora");
    let (expected, lr) = fixture_losses("train/lora");
    let mut optim = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
    for (step, want) in expected.iter().enumerate() {
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), lr, None);
        model = next;
        assert!((stats.loss - want).abs() <= LOSS_TOL, "step {step}: loss {} vs PEFT {want}", stats.loss);
    }
    let final_file = Checkpoint::open_files(&[fixture("train/lora/final/adapter_model.safetensors")]).unwrap();
    let ours = adapter_tensors(&mut model);
    assert_eq!(ours.len(), final_file.entries().count());
    for (name, tensor) in &ours {
        let values = peft::io::dtype::to_f32(tensor.dtype, &tensor.bytes).unwrap();
        let (theirs, _) = final_file.read_f32(name).unwrap();
        let rel = max_rel_diff(&values, &theirs);
        assert!(rel <= FINAL_REL_TOL, "{name}: relative diff {rel}");
    }
}
