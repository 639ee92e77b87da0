//! Prompt-learning training against PEFT + torch: the fixtures' deterministic AdamW runs for
//! prefix tuning and prompt tuning (20 steps on one batch).

use peft::io::Checkpoint;
use peft::models::ModelDir;
use peft::peft::format::{adapter_tensors, load_adapter};
use peft::train::{train_step, AdamW, AdamWConfig};
use rstest::rstest;

use crate::common::*;
use crate::train::{fixture_batch, fixture_losses, max_rel_diff};

const LOSS_TOL: f64 = 1e-4;
const FINAL_REL_TOL: f32 = 1e-3;

#[rstest]
#[case::prefix_tuning("train/prefix")]
#[case::prompt_tuning("train/prompt")]
fn prompt_training_reproduces_peft_losses_and_final_embeddings(#[case] run: &str) {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let mut model = dir.load(&device).unwrap();
    load_adapter(
        &mut model,
        "llama",
        &fixture(&format!("{run}/init")),
        &device,
    )
    .unwrap();
    let batch = fixture_batch(run);
    let (expected, lr) = fixture_losses(run);
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    assert_eq!(expected.len(), 20);
    for (step, want) in expected.iter().enumerate() {
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), lr, None);
        model = next;
        assert!(
            (stats.loss - want).abs() <= LOSS_TOL,
            "{run} step {step}: loss {} vs PEFT {want}",
            stats.loss
        );
    }
    let final_file =
        Checkpoint::open_files(&[fixture(&format!("{run}/final/adapter_model.safetensors"))])
            .unwrap();
    let ours = adapter_tensors(&mut model);
    assert_eq!(ours.len(), final_file.entries().count());
    for (name, tensor) in &ours {
        let values = peft::io::dtype::to_f32(tensor.dtype, &tensor.bytes).unwrap();
        let (theirs, _) = final_file.read_f32(name).unwrap();
        let rel = max_rel_diff(&values, &theirs);
        assert!(rel <= FINAL_REL_TOL, "{run} {name}: relative diff {rel}");
        let (init, _) =
            Checkpoint::open_files(&[fixture(&format!("{run}/init/adapter_model.safetensors"))])
                .unwrap()
                .read_f32(name)
                .unwrap();
        assert!(
            max_rel_diff(&init, &theirs) > 10.0 * FINAL_REL_TOL,
            "{run}: nothing moved"
        );
    }
}

/// Losses of `tests/fixtures/prompt-train/<name>` (10 steps) and the run's final tensors.
#[rstest]
#[case::ptuning_mlp("prompt-train/ptuning-mlp")]
#[case::ptuning_lstm("prompt-train/ptuning-lstm")]
#[case::prefix_projection("prompt-train/prefix-projection")]
#[case::adaption_prompt("prompt-train/adaption-prompt")]
fn training_through_full_encoders_reproduces_peft(#[case] run: &str) {
    let device = device().autodiff();
    let dir = ModelDir::open(&fixture("llama-tiny")).unwrap();
    let mut model = dir.load(&device).unwrap();
    load_adapter(
        &mut model,
        "llama",
        &fixture(&format!("{run}/init")),
        &device,
    )
    .unwrap();
    let batch = fixture_batch("train/prompt");
    let (expected, lr) = fixture_losses(run);
    let mut optim = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    assert_eq!(expected.len(), 10);
    for (step, want) in expected.iter().enumerate() {
        let (next, stats) = train_step(model, &mut optim, std::slice::from_ref(&batch), lr, None);
        model = next;
        assert!(
            (stats.loss - want).abs() <= LOSS_TOL,
            "{run} step {step}: loss {} vs PEFT {want}",
            stats.loss
        );
    }
    let encoder_file = fixture(&format!("{run}/final/prompt_encoder.safetensors"));
    let (file, ours) = if encoder_file.is_file() {
        let encoder = model
            .prompt_encoder_mut()
            .as_ref()
            .expect("encoder attached");
        (
            encoder_file,
            encoder
                .encoder_tensors()
                .to_owned_tensors("prompt_encoder."),
        )
    } else {
        (
            fixture(&format!("{run}/final/adapter_model.safetensors")),
            adapter_tensors(&mut model),
        )
    };
    let theirs = Checkpoint::open_files(&[file]).unwrap();
    assert_eq!(ours.len(), theirs.entries().count(), "{run}");
    for (name, tensor) in &ours {
        let values = peft::io::dtype::to_f32(tensor.dtype, &tensor.bytes).unwrap();
        let (want, _) = theirs.read_f32(name).unwrap();
        let rel = max_rel_diff(&values, &want);
        assert!(rel <= FINAL_REL_TOL, "{run} {name}: relative diff {rel}");
    }
}
