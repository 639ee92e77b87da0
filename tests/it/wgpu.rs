//! The same parity checks on the `wgpu` device (a GPU, or Mesa's lavapipe software Vulkan on a
//! machine without one): built only with `--features wgpu`.

use burn::tensor::{Device, DeviceKind};
use peft::generate::{generate, SamplingConfig};
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
    let model = load_on_wgpu("llama-tiny");
    let reference = reference("llama-tiny");
    let (prompt, _) = reference.file.read_i64("greedy_prompt_ids").unwrap();
    let (expected, _) = reference.file.read_i64("greedy_new_ids").unwrap();
    let prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let cfg = SamplingConfig {
        max_new_tokens: expected.len(),
        stop_at_eos: false,
        ..Default::default()
    };
    let new = generate(&model, &prompt, &cfg, &mut |_| {}).unwrap();
    let expected: Vec<u32> = expected.iter().map(|&t| t as u32).collect();
    assert_eq!(new, expected);
}
