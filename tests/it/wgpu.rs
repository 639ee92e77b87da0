//! The same parity checks on the `wgpu` device (a GPU, or Mesa's lavapipe software Vulkan on a
//! machine without one): built only with `--features wgpu`.

use burn::tensor::{Device, DeviceKind};
use peft::models::tensor_util::to_vec;
use peft::models::{CausalLm, ModelDir};
use peft::peft::format::load_adapter;

use crate::common::*;

fn wgpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

fn load_on_wgpu(rel: &str) -> CausalLm {
    ModelDir::open(&fixture(rel))
        .unwrap()
        .load(&wgpu())
        .expect("fixture model loads on wgpu")
}

#[test]
fn llama_tiny_on_wgpu_matches_transformers_logits() {
    let model = load_on_wgpu("llama-tiny");
    let reference = reference("llama-tiny");
    let logits = to_vec(model.forward(&reference.inputs(), None));
    let (diff, compared) = reference.compare(&logits);
    assert!(compared > 40, "compared only {compared} positions");
    assert!(
        diff <= LOGITS_TOL,
        "wgpu: max abs diff {diff} > {LOGITS_TOL}"
    );
}

#[test]
fn llama_tiny_with_a_lora_adapter_on_wgpu_matches_peft_logits() {
    let mut model = load_on_wgpu("llama-tiny");
    load_adapter(&mut model, "llama", &fixture("adapters/lora"), &wgpu()).unwrap();
    let reference = reference("adapters/lora");
    let (diff, _) = reference.compare(&to_vec(model.forward(&reference.inputs(), None)));
    assert!(diff <= LOGITS_TOL, "wgpu + LoRA: max abs diff {diff}");
}

#[test]
fn greedy_decoding_with_the_kv_cache_on_wgpu_matches_transformers() {
    let (ours, theirs) = reference("llama-tiny").greedy(&load_on_wgpu("llama-tiny"));
    assert_eq!(ours, theirs);
}
