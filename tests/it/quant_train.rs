//! QLoRA training parity (issue 17): LoRA trained on an NF4 base here against PEFT trained on
//! transformers + bitsandbytes' NF4 base (`fixtures/quant/make_nf4_lora_train.py`): the f32
//! training fixture's init, batch and AdamW settings (`fixtures/train/lora`), 20 steps.

use burn::tensor::DType;
use peft::io::Checkpoint;
use peft::models::ModelDir;
use peft::peft::format::{adapter_tensors, load_adapter};
use peft::quant::BaseQuant;
use peft::train::{train_step, AdamW, AdamWConfig};

use crate::common::*;
use crate::train::{fixture_batch, fixture_losses, max_rel_diff};

/// The f32 training fixture's tolerances (fixtures README): the NF4 base values are
/// bitsandbytes' bit for bit, and both products are f32 (`dequantize_4bit` then `F.linear` there,
/// panels dequantized into gemm here), so only summation order differs.
const LOSS_TOL: f64 = 1e-4;
const FINAL_REL_TOL: f32 = 1e-3;

#[test]
fn lora_on_an_nf4_base_trains_as_peft_on_bitsandbytes_nf4() {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let mut model = dir
        .load_base(&device, DType::F32, Some(BaseQuant::Nf4))
        .unwrap();
    assert!(model.linears_mut().iter().all(|(_, l)| l.quant.is_some()));
    load_adapter(&mut model, "llama", &fixture("train/lora/init"), &device).unwrap();
    let batch = fixture_batch("train/lora");
    let (expected, lr) = fixture_losses("quant/nf4_lora_train");
    let (f32_losses, _) = fixture_losses("train/lora");
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let mut ours = Vec::new();
    for (step, want) in expected.iter().enumerate() {
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), lr, None);
        model = next;
        assert!(
            (stats.loss - want).abs() <= LOSS_TOL,
            "step {step}: loss {} vs PEFT on bitsandbytes NF4 {want}",
            stats.loss
        );
        ours.push(stats.loss);
    }
    // The fixture is not the f32 run again: NF4 moves the losses by far more than the tolerance.
    let moved = ours
        .iter()
        .zip(&f32_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 10.0 * LOSS_TOL, "nf4 vs f32 losses: {moved}");
    let worst = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("nf4 losses vs PEFT + bitsandbytes: max {worst:.2e}; vs f32 run: max {moved:.2e}");
    let final_file = Checkpoint::open_files(&[fixture(
        "quant/nf4_lora_train/final/adapter_model.safetensors",
    )])
    .unwrap();
    let tensors = adapter_tensors(&mut model);
    assert_eq!(tensors.len(), final_file.entries().count());
    let mut worst_rel = 0.0f32;
    for (name, tensor) in &tensors {
        let values = peft::io::dtype::to_f32(tensor.dtype, &tensor.bytes).unwrap();
        let (theirs, _) = final_file.read_f32(name).unwrap();
        let rel = max_rel_diff(&values, &theirs);
        assert!(rel <= FINAL_REL_TOL, "{name}: relative diff {rel}");
        worst_rel = worst_rel.max(rel);
    }
    println!("final adapter vs PEFT + bitsandbytes: max relative {worst_rel:.2e}");
}
